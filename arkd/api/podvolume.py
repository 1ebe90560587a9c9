"""PodVolumeBackup and PodVolumeRestore: one restic operation on one pod volume, run by the node agent."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import (
    POD_VOLUME_BACKUP_KIND,
    POD_VOLUME_BACKUPS,
    POD_VOLUME_RESTORE_KIND,
    POD_VOLUME_RESTORES,
    PodVolumeBackupPhase,
    PodVolumeRestorePhase,
)
from arkd.api.meta import ArkModel, ArkObject, ObjectReference, Time, phase_schema

PodVolumeBackupPhaseValue = Annotated[PodVolumeBackupPhase | Literal[""], phase_schema(PodVolumeBackupPhase)]
PodVolumeRestorePhaseValue = Annotated[PodVolumeRestorePhase | Literal[""], phase_schema(PodVolumeRestorePhase)]


class PodVolumeOperationProgress(ArkModel):
    """arkd: restic's progress, updated while the operation runs."""

    total_bytes: int | None = None
    bytes_done: int | None = None


class PodVolumeBackupSpec(ArkModel):
    node: str | None = Field(None, description="Node the pod runs on; only that node's agent acts.")
    pod: ObjectReference | None = Field(None, description="The pod: kind, namespace, name, uid.")
    volume: str | None = Field(None, description="Name of the pod volume.")
    repo_identifier: str | None = Field(None, description="Full restic --repo value.")
    tags: dict[str, str] | None = Field(None, description="Tags given to `restic backup`.")


class PodVolumeBackupStatus(ArkModel):
    phase: PodVolumeBackupPhaseValue = ""
    path: str | None = Field(None, description="Volume path inside the node agent container.")
    snapshot_id: str | None = Field(None, alias="snapshotID", description="restic short snapshot id.")
    message: str | None = Field(None, description="Why the backup failed.")
    start_timestamp: Time | None = Field(None, description="arkd: when the node agent started restic.")
    completion_timestamp: Time | None = Field(None, description="arkd: when the operation ended.")
    progress: PodVolumeOperationProgress | None = None


class PodVolumeBackup(ArkObject):
    """A restic backup of one pod volume."""

    KIND: ClassVar[str] = POD_VOLUME_BACKUP_KIND
    PLURAL: ClassVar[str] = POD_VOLUME_BACKUPS

    spec: PodVolumeBackupSpec = Field(default_factory=PodVolumeBackupSpec)
    status: PodVolumeBackupStatus = Field(default_factory=PodVolumeBackupStatus)

    @property
    def phase(self) -> PodVolumeBackupPhase:
        return PodVolumeBackupPhase(self.status.phase or PodVolumeBackupPhase.NEW)


class PodVolumeRestoreSpec(ArkModel):
    pod: ObjectReference | None = Field(None, description="The restored pod, with its new uid.")
    volume: str | None = Field(None, description="Name of the pod volume.")
    repo_identifier: str | None = Field(None, description="Full restic --repo value.")
    snapshot_id: str | None = Field(None, alias="snapshotID", description="restic snapshot id to restore.")


class PodVolumeRestoreStatus(ArkModel):
    phase: PodVolumeRestorePhaseValue = ""
    message: str | None = Field(None, description="Why the restore failed.")
    start_timestamp: Time | None = Field(None, description="arkd: when the node agent started restic.")
    completion_timestamp: Time | None = Field(None, description="arkd: when the operation ended.")
    progress: PodVolumeOperationProgress | None = None


class PodVolumeRestore(ArkObject):
    """A restic restore of one pod volume into a restored pod."""

    KIND: ClassVar[str] = POD_VOLUME_RESTORE_KIND
    PLURAL: ClassVar[str] = POD_VOLUME_RESTORES

    spec: PodVolumeRestoreSpec = Field(default_factory=PodVolumeRestoreSpec)
    status: PodVolumeRestoreStatus = Field(default_factory=PodVolumeRestoreStatus)

    @property
    def phase(self) -> PodVolumeRestorePhase:
        return PodVolumeRestorePhase(self.status.phase or PodVolumeRestorePhase.NEW)
