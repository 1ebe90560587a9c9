"""DeleteBackupRequest: asks the server to delete a backup and everything that belongs to it."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import DELETE_BACKUP_REQUEST_KIND, DELETE_BACKUP_REQUESTS, DeleteBackupRequestPhase
from arkd.api.meta import ArkModel, ArkObject, phase_schema

DeleteBackupRequestPhaseValue = Annotated[
    DeleteBackupRequestPhase | Literal[""], phase_schema(DeleteBackupRequestPhase)
]


class DeleteBackupRequestSpec(ArkModel):
    backup_name: str | None = None


class DeleteBackupRequestStatus(ArkModel):
    phase: DeleteBackupRequestPhaseValue = ""
    errors: list[str] | None = None


class DeleteBackupRequest(ArkObject):
    """Asks the server to delete a backup: its data, snapshots, restores and the Backup object."""

    KIND: ClassVar[str] = DELETE_BACKUP_REQUEST_KIND
    PLURAL: ClassVar[str] = DELETE_BACKUP_REQUESTS

    spec: DeleteBackupRequestSpec = Field(default_factory=DeleteBackupRequestSpec)
    status: DeleteBackupRequestStatus = Field(default_factory=DeleteBackupRequestStatus)

    @property
    def phase(self) -> DeleteBackupRequestPhase:
        return DeleteBackupRequestPhase(self.status.phase or DeleteBackupRequestPhase.NEW)
