"""Restore: recreates the resources (and pod volume data) of a Backup."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import RESTORE_KIND, RESTORES, RestorePhase
from arkd.api.meta import ArkModel, ArkObject, LabelSelector, Time, phase_schema

RestorePhaseValue = Annotated[RestorePhase | Literal[""], phase_schema(RestorePhase)]


class RestoreSpec(ArkModel):
    backup_name: str | None = Field(None, description="The Backup to restore from.")
    included_namespaces: list[str] | None = None
    excluded_namespaces: list[str] | None = None
    included_resources: list[str] | None = None
    excluded_resources: list[str] | None = None
    namespace_mapping: dict[str, str] | None = Field(None, description="Source namespace -> target namespace.")
    label_selector: LabelSelector | None = None
    restore_pvs: bool | None = Field(None, alias="restorePVs")
    include_cluster_resources: bool | None = Field(None, description="Unset means true.")


class RestoreStatus(ArkModel):
    phase: RestorePhaseValue = ""
    validation_errors: list[str] | None = None
    warnings: int | None = None
    errors: int | None = None
    failure_reason: str | None = Field(
        None, description="arkd: why the restore is Failed or PartiallyFailed, in one sentence."
    )
    start_timestamp: Time | None = Field(None, description="arkd (as Velero): when the server started the restore.")
    completion_timestamp: Time | None = Field(
        None, description="arkd (as Velero): when the restore ended, whatever its phase."
    )


class Restore(ArkObject):
    """A restore of a Backup's resources into the cluster."""

    KIND: ClassVar[str] = RESTORE_KIND
    PLURAL: ClassVar[str] = RESTORES

    spec: RestoreSpec = Field(default_factory=RestoreSpec)
    status: RestoreStatus = Field(default_factory=RestoreStatus)

    @property
    def phase(self) -> RestorePhase:
        return RestorePhase(self.status.phase or RestorePhase.NEW)
