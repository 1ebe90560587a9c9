"""REST identities of the ark.heptio.com/v1 kinds (api/ knows the models, kube/ knows URLs)."""

from __future__ import annotations

from arkd.api import constants as c
from arkd.kube.resource import Resource


def _ark(plural: str, kind: str) -> Resource:
    return Resource(c.GROUP, c.VERSION, plural, kind)


BACKUPS = _ark("backups", "Backup")
RESTORES = _ark("restores", "Restore")
SCHEDULES = _ark("schedules", "Schedule")
CONFIGS = _ark("configs", "Config")
PODVOLUMEBACKUPS = _ark("podvolumebackups", "PodVolumeBackup")
PODVOLUMERESTORES = _ark("podvolumerestores", "PodVolumeRestore")
RESTICREPOSITORIES = _ark("resticrepositories", "ResticRepository")
DELETEBACKUPREQUESTS = _ark("deletebackuprequests", "DeleteBackupRequest")
DOWNLOADREQUESTS = _ark("downloadrequests", "DownloadRequest")

ALL = (
    BACKUPS,
    RESTORES,
    SCHEDULES,
    CONFIGS,
    PODVOLUMEBACKUPS,
    PODVOLUMERESTORES,
    RESTICREPOSITORIES,
    DELETEBACKUPREQUESTS,
    DOWNLOADREQUESTS,
)
