"""Names that make up the ark.heptio.com/v1 contract: group, kinds, labels, annotations, tags, phases.

Values are Ark v0.9's (see ark-reference §1, §2) unless marked as an arkd addition.
"""

from __future__ import annotations

from enum import StrEnum

GROUP = "ark.heptio.com"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_NAMESPACE = "heptio-ark"

# The singleton Config the server reads.
CONFIG_NAME = "default"
SERVICE_ACCOUNT_NAME = "ark"

# -- kinds and their plural resource names -------------------------------------------------------
BACKUP_KIND = "Backup"
RESTORE_KIND = "Restore"
SCHEDULE_KIND = "Schedule"
CONFIG_KIND = "Config"
POD_VOLUME_BACKUP_KIND = "PodVolumeBackup"
POD_VOLUME_RESTORE_KIND = "PodVolumeRestore"
RESTIC_REPOSITORY_KIND = "ResticRepository"
DELETE_BACKUP_REQUEST_KIND = "DeleteBackupRequest"
DOWNLOAD_REQUEST_KIND = "DownloadRequest"

BACKUPS = "backups"
RESTORES = "restores"
SCHEDULES = "schedules"
CONFIGS = "configs"
POD_VOLUME_BACKUPS = "podvolumebackups"
POD_VOLUME_RESTORES = "podvolumerestores"
RESTIC_REPOSITORIES = "resticrepositories"
DELETE_BACKUP_REQUESTS = "deletebackuprequests"
DOWNLOAD_REQUESTS = "downloadrequests"

# -- labels --------------------------------------------------------------------------------------
COMPONENT_LABEL = "component"
COMPONENT_VALUE = "ark"
BACKUP_NAME_LABEL = "ark.heptio.com/backup-name"
BACKUP_UID_LABEL = "ark.heptio.com/backup-uid"
RESTORE_NAME_LABEL = "ark.heptio.com/restore-name"
RESTORE_UID_LABEL = "ark.heptio.com/restore-uid"
POD_UID_LABEL = "ark.heptio.com/pod-uid"
# arkd: on PodVolumeBackups of PVC volumes, so the parent snapshot follows the claim, not the pod.
PVC_UID_LABEL = "ark.heptio.com/pvc-uid"
# arkd: on restic key Secrets; the value is the volume namespace the key encrypts.
RESTIC_KEY_LABEL = "ark.heptio.com/restic-key"
# On Backups created by a Schedule; the value is the schedule name.
SCHEDULE_LABEL = "ark-schedule"
# On every restored object; the value is the restore name.
RESTORE_LABEL = "ark-restore"

# -- annotations ---------------------------------------------------------------------------------
# Pod (or pod template) annotation: comma-separated volume names, split without trimming.
VOLUMES_TO_BACKUP_ANNOTATION = "backup.ark.heptio.com/backup-volumes"
# On pods inside the backup tarball: snapshot.ark.heptio.com/<volume> = restic short snapshot id.
SNAPSHOT_ANNOTATION_PREFIX = "snapshot.ark.heptio.com/"
# On a Backup or Restore: Go duration overriding Config.podVolumeOperationTimeout for that operation.
POD_VOLUME_TIMEOUT_ANNOTATION = "ark.heptio.com/pod-volume-timeout"
# Pod exec-hook annotations; the unprefixed form is the legacy alias of the "pre." form.
HOOK_ANNOTATION_SUFFIXES = ("container", "command", "on-error", "timeout")
HOOK_ANNOTATION_PREFIX = "hook.backup.ark.heptio.com/"
PRE_HOOK_ANNOTATION_PREFIX = "pre.hook.backup.ark.heptio.com/"
POST_HOOK_ANNOTATION_PREFIX = "post.hook.backup.ark.heptio.com/"

# -- finalizers ----------------------------------------------------------------------------------
# Set on Backups by Ark <= 0.8; Ark 0.9 strips it at start-up and on synced backups, so must arkd.
LEGACY_GC_FINALIZER = "gc.ark.heptio.com"
# arkd: on Backups that backup sync creates from object storage. Such a Backup is briefly New between
# its create and its status write; the backup controller must not run it over its own files.
SYNCED_FROM_ANNOTATION = "ark.heptio.com/synced-from"

# -- tags ----------------------------------------------------------------------------------------
# Tags on cloud-provider disk snapshots (not restic).
SNAPSHOT_BACKUP_TAG = "ark.heptio.com/backup"
SNAPSHOT_PV_TAG = "ark.heptio.com/pv"
# restic snapshot tag keys (`--tag key=value`), one of each on every pod volume snapshot.
RESTIC_TAG_BACKUP = "backup"
RESTIC_TAG_BACKUP_UID = "backup-uid"
RESTIC_TAG_POD = "pod"
RESTIC_TAG_POD_UID = "pod-uid"
RESTIC_TAG_NAMESPACE = "ns"
RESTIC_TAG_VOLUME = "volume"
RESTIC_TAG_KEYS = (
    RESTIC_TAG_BACKUP,
    RESTIC_TAG_BACKUP_UID,
    RESTIC_TAG_POD,
    RESTIC_TAG_POD_UID,
    RESTIC_TAG_NAMESPACE,
    RESTIC_TAG_VOLUME,
)

# -- restic repository keys (arkd) ---------------------------------------------------------------
# One Secret per volume namespace, kept in the Ark namespace so losing the application namespace
# never loses the key of its backups.
RESTIC_KEY_SECRET_PREFIX = "ark-restic-credentials-"
RESTIC_KEY_DATA_KEY = "repository-password"


def restic_key_secret_name(volume_namespace: str) -> str:
    """Name of the Secret (in the Ark namespace) holding the restic key of `volume_namespace`."""
    if not volume_namespace:
        raise ValueError("a restic key Secret name needs the volume namespace, got an empty string")
    return f"{RESTIC_KEY_SECRET_PREFIX}{volume_namespace}"


# -- phases --------------------------------------------------------------------------------------
# Go serialises an unset phase as "", which every controller treats as New; the models accept ""
# and expose the effective phase through a `phase` property on each kind.


class BackupPhase(StrEnum):
    NEW = "New"
    FAILED_VALIDATION = "FailedValidation"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    PARTIALLY_FAILED = "PartiallyFailed"  # arkd
    FAILED = "Failed"
    DELETING = "Deleting"


class RestorePhase(StrEnum):
    NEW = "New"
    FAILED_VALIDATION = "FailedValidation"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    PARTIALLY_FAILED = "PartiallyFailed"  # arkd
    FAILED = "Failed"  # arkd


class SchedulePhase(StrEnum):
    NEW = "New"
    ENABLED = "Enabled"
    FAILED_VALIDATION = "FailedValidation"


class PodVolumeBackupPhase(StrEnum):
    NEW = "New"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"


class PodVolumeRestorePhase(StrEnum):
    NEW = "New"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"


class ResticRepositoryPhase(StrEnum):
    NEW = "New"
    READY = "Ready"
    NOT_READY = "NotReady"


class DeleteBackupRequestPhase(StrEnum):
    NEW = "New"
    IN_PROGRESS = "InProgress"
    PROCESSED = "Processed"


class DownloadRequestPhase(StrEnum):
    NEW = "New"
    PROCESSED = "Processed"


class DownloadTargetKind(StrEnum):
    BACKUP_LOG = "BackupLog"
    BACKUP_CONTENTS = "BackupContents"
    RESTORE_LOG = "RestoreLog"
    RESTORE_RESULTS = "RestoreResults"


class HookErrorMode(StrEnum):
    CONTINUE = "Continue"
    FAIL = "Fail"
