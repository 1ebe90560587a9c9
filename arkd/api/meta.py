"""Shared building blocks of the ark.heptio.com/v1 models: base classes, metadata, wire scalar types.

Every model keeps fields it does not know (`extra="allow"`), so parsing an object and serialising it
again never loses data written by a newer arkd, Ark, or a user. `to_obj()` emits only fields that
were present in the input or set since (`exclude_unset`), so a round trip is faithful, including
explicit nulls, which Go writes for unset pointers, slices and times.
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from arkd.api.constants import API_VERSION
from arkd.api.duration import DURATION_PATTERN, parse_duration, validate_duration


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    # Naive datetimes come only from Python code; Kubernetes times are always UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value


def format_time(value: datetime.datetime) -> str:
    """RFC 3339 in UTC with a "Z", like metav1.Time; sub-second digits only when present."""
    value = _as_utc(value).astimezone(datetime.UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# metav1.Time: RFC 3339 on the wire, an aware datetime in Python.
Time = Annotated[
    datetime.datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_time, return_type=str),
]

# metav1.Duration: kept as the Go string on the wire ("720h0m0s") so a round trip is exact; models
# offer `*_timedelta` accessors. Invalid strings are rejected when parsing and by the CRD pattern.
GoDuration = Annotated[
    str,
    AfterValidator(validate_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]


def duration_or_none(value: str | None) -> datetime.timedelta | None:
    return None if value is None else parse_duration(value)


def validation_messages(exc: ValidationError, kind: str) -> list[str]:
    """One "field.path: problem" line per pydantic error; `kind` stands for the object itself."""
    return [f"{'.'.join(str(p) for p in err['loc']) or kind}: {err['msg']}" for err in exc.errors()]


def phase_schema(enum: type[StrEnum]) -> WithJsonSchema:
    """Schema of a `status.phase` field: the kind's phases plus "" (Go's unset value, meaning New)."""
    values = ["", *(member.value for member in enum)]
    return WithJsonSchema(
        {
            "type": "string",
            "enum": values,
            "description": "One of " + ", ".join(values[1:]) + '; "" (unset) means New.',
        }
    )


class ArkModel(BaseModel):
    """Base of every model: camelCase JSON names, unknown fields kept."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        alias_generator=to_camel,
    )


def _mark_nested_set(model: BaseModel) -> bool:
    """Marks fields holding models that have set fields as set, so `exclude_unset` keeps them.

    Without this, `backup.status.phase = X` on a default (unset) `status` would be dropped by
    `to_obj()`. Returns whether `model` has anything to serialise.
    """
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if _holds_set_fields(value):
            model.__pydantic_fields_set__.add(name)
    return bool(model.model_fields_set)


def _holds_set_fields(value: object) -> bool:
    if isinstance(value, BaseModel):
        return _mark_nested_set(value)
    if isinstance(value, list):
        return any([_holds_set_fields(v) for v in value])
    if isinstance(value, dict):
        return any([_holds_set_fields(v) for v in value.values()])
    return False


class OwnerReference(ArkModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ArkModel):
    """metav1.ObjectMeta. Fields not listed here (managedFields, selfLink, ...) are kept as extras."""

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None
    finalizers: list[str] | None = None

    @property
    def key(self) -> str:
        """The cache/queue key: "namespace/name", or "name" for cluster-scoped objects."""
        name = self.name or ""
        return f"{self.namespace}/{name}" if self.namespace else name

    def label(self, key: str) -> str | None:
        return (self.labels or {}).get(key)

    def annotation(self, key: str) -> str | None:
        return (self.annotations or {}).get(key)

    def controller_owner(self) -> OwnerReference | None:
        for ref in self.owner_references or []:
            if ref.controller:
                return ref
        return None


class ObjectReference(ArkModel):
    """core/v1 ObjectReference; Ark fills kind, namespace, name and uid."""

    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    api_version: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class LabelSelectorRequirement(ArkModel):
    key: str
    operator: str = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = None


class LabelSelector(ArkModel):
    """A label query over resources (metav1.LabelSelector)."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class ArkObject(ArkModel):
    """An ark.heptio.com/v1 object. Subclasses set KIND and PLURAL."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = ""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @model_validator(mode="after")
    def _check_type(self) -> Self:
        if self.api_version != API_VERSION:
            raise ValueError(
                f"apiVersion {self.api_version!r} is not {API_VERSION!r}: this is not an Ark v0.9 "
                f"{self.KIND} (Velero objects use velero.io/v1)"
            )
        if not self.kind:
            # Not marked as set: to_obj() always writes apiVersion and kind itself.
            self.__dict__["kind"] = self.KIND
        elif self.kind != self.KIND:
            raise ValueError(f"kind {self.kind!r} cannot be read as a {self.KIND}")
        return self

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Self:
        """Parses a Kubernetes object (as returned by the apiserver) into this model."""
        return cls.model_validate(obj)

    def to_obj(self) -> dict[str, Any]:
        """The object as a JSON-ready dict with wire names: what was read or set, nothing more."""
        _mark_nested_set(self)
        body = self.model_dump(by_alias=True, exclude_unset=True, mode="json")
        body.pop("apiVersion", None)
        body.pop("kind", None)
        return {"apiVersion": self.api_version, "kind": self.KIND, **body}

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""
