"""Backup: a point-in-time copy of cluster resources (and, via restic, pod volumes)."""

from __future__ import annotations

import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import BACKUP_KIND, BACKUPS, BackupPhase, HookErrorMode
from arkd.api.meta import ArkModel, ArkObject, GoDuration, LabelSelector, Time, duration_or_none, phase_schema

BackupPhaseValue = Annotated[BackupPhase | Literal[""], phase_schema(BackupPhase)]


class ExecHook(ArkModel):
    """A command run in a container of a selected pod."""

    container: str | None = Field(None, description="Container to run in; default the first one.")
    command: list[str] | None = None
    on_error: HookErrorMode | None = Field(None, description="Continue or Fail (default Fail).")
    timeout: GoDuration | None = Field(None, description="Go duration; default 30s.")

    @property
    def timeout_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.timeout)


class BackupResourceHook(ArkModel):
    exec: ExecHook | None = None


class BackupResourceHookSpec(ArkModel):
    """Hooks run on the pods a backup selects, filtered like the backup itself."""

    name: str | None = None
    included_namespaces: list[str] | None = None
    excluded_namespaces: list[str] | None = None
    included_resources: list[str] | None = None
    excluded_resources: list[str] | None = None
    label_selector: LabelSelector | None = None
    hooks: list[BackupResourceHook] | None = Field(None, description="Deprecated alias of pre.")
    pre: list[BackupResourceHook] | None = None
    post: list[BackupResourceHook] | None = None


class BackupHooks(ArkModel):
    resources: list[BackupResourceHookSpec] | None = None


class BackupSpec(ArkModel):
    included_namespaces: list[str] | None = Field(None, description='Namespaces to back up; empty means all ("*").')
    excluded_namespaces: list[str] | None = None
    included_resources: list[str] | None = Field(None, description="Resources to back up; empty means all.")
    excluded_resources: list[str] | None = None
    label_selector: LabelSelector | None = None
    snapshot_volumes: bool | None = Field(None, description="Take cloud snapshots of persistent volumes.")
    ttl: GoDuration | None = Field(None, description='How long to keep the backup, a Go duration such as "720h0m0s".')
    include_cluster_resources: bool | None = None
    hooks: BackupHooks | None = None

    @property
    def ttl_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.ttl)


class VolumeBackupInfo(ArkModel):
    """A cloud-provider snapshot of a persistent volume (restic results are PodVolumeBackups)."""

    snapshot_id: str | None = Field(None, alias="snapshotID")
    type: str | None = None
    availability_zone: str | None = None
    iops: int | None = None


class BackupStatus(ArkModel):
    version: int | None = Field(None, description="Backup format version; always 1.")
    expiration: Time | None = Field(None, description="When garbage collection deletes the backup.")
    phase: BackupPhaseValue = ""
    volume_backups: dict[str, VolumeBackupInfo] | None = Field(None, description="Cloud snapshots by PV name.")
    validation_errors: list[str] | None = None
    start_timestamp: Time | None = None
    completion_timestamp: Time | None = None
    warnings: int | None = Field(None, description="arkd: number of warnings logged while backing up.")
    errors: int | None = Field(None, description="arkd: number of errors (failed items or pod volumes).")
    failure_reason: str | None = Field(
        None, description="arkd: why the backup is Failed or PartiallyFailed, in one sentence."
    )
    warning_messages: list[str] | None = Field(
        None, description="arkd: the first warnings in full (all of them are in the backup log)."
    )
    error_messages: list[str] | None = Field(
        None, description="arkd: the first errors in full (all of them are in the backup log)."
    )


class Backup(ArkObject):
    """A backup of cluster resources to object storage, with restic copies of annotated pod volumes."""

    KIND: ClassVar[str] = BACKUP_KIND
    PLURAL: ClassVar[str] = BACKUPS

    spec: BackupSpec = Field(default_factory=BackupSpec)
    status: BackupStatus = Field(default_factory=BackupStatus)

    @property
    def phase(self) -> BackupPhase:
        """The phase, with Go's unset "" read as New."""
        return BackupPhase(self.status.phase or BackupPhase.NEW)
