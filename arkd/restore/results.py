"""Restore warnings and errors in Ark's RestoreResult shape.

Stored in object storage as `<backup>/restore-<restore>-results.gz`, gzip of
``{"warnings": RestoreResult, "errors": RestoreResult}`` where RestoreResult is
``{"ark": [...], "cluster": [...], "namespaces": {ns: [...]}}`` (`restore_controller.go@v0.9.0`).
Lists and maps are always present (Ark wrote `null` for empty ones; readers accept both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RestoreResult:
    ark: list[str] = field(default_factory=list)
    cluster: list[str] = field(default_factory=list)
    namespaces: dict[str, list[str]] = field(default_factory=dict)

    def add_ark(self, message: str) -> None:
        """Messages about arkd itself (object storage, reading the tarball, restic waits)."""
        self.ark.append(message)

    def add(self, namespace: str | None, message: str) -> None:
        """A message about one item: cluster-scoped when `namespace` is empty."""
        if namespace:
            self.namespaces.setdefault(namespace, []).append(message)
        else:
            self.cluster.append(message)

    def merge(self, other: RestoreResult) -> None:
        self.ark.extend(other.ark)
        self.cluster.extend(other.cluster)
        for ns, messages in other.namespaces.items():
            self.namespaces.setdefault(ns, []).extend(messages)

    def count(self) -> int:
        """What goes into Restore `status.warnings` / `status.errors`."""
        return len(self.ark) + len(self.cluster) + sum(len(m) for m in self.namespaces.values())

    def __bool__(self) -> bool:
        return self.count() > 0

    def to_obj(self) -> dict[str, Any]:
        return {
            "ark": list(self.ark),
            "cluster": list(self.cluster),
            "namespaces": {ns: list(m) for ns, m in sorted(self.namespaces.items())},
        }

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any] | None) -> RestoreResult:
        obj = obj or {}
        namespaces = obj.get("namespaces") or {}
        return cls(
            ark=[str(m) for m in obj.get("ark") or []],
            cluster=[str(m) for m in obj.get("cluster") or []],
            namespaces={str(ns): [str(m) for m in msgs or []] for ns, msgs in namespaces.items()},
        )


@dataclass
class RestoreResults:
    warnings: RestoreResult = field(default_factory=RestoreResult)
    errors: RestoreResult = field(default_factory=RestoreResult)

    def merge(self, other: RestoreResults) -> None:
        self.warnings.merge(other.warnings)
        self.errors.merge(other.errors)

    def to_obj(self) -> dict[str, Any]:
        return {"warnings": self.warnings.to_obj(), "errors": self.errors.to_obj()}

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any] | None) -> RestoreResults:
        obj = obj or {}
        return cls(RestoreResult.from_obj(obj.get("warnings")), RestoreResult.from_obj(obj.get("errors")))
