"""Object keys of Ark 0.9's backup bucket, so buckets written by Ark and arkd are interchangeable.

Every backup is a top-level "directory" with no global prefix:

    <backup>/ark-backup.json                  Backup object (written once the backup is final)
    <backup>/<backup>.tar.gz                  resources tarball
    <backup>/<backup>-logs.gz                 backup log
    <backup>/<backup>-podvolumebackups.json.gz  PodVolumeBackups (Velero 1.1's addition, kept by arkd)
    <backup>/restore-<restore>-logs.gz        restore log, under the backup's directory
    <backup>/restore-<restore>-results.gz     restore warnings and errors
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

METADATA_FILE = "ark-backup.json"


class ObjectKind(StrEnum):
    METADATA = "metadata"
    CONTENTS = "contents"
    LOG = "log"
    POD_VOLUME_BACKUPS = "podvolumebackups"
    RESTORE_LOG = "restore-log"
    RESTORE_RESULTS = "restore-results"


def _name(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"invalid {what} name {value!r}: it must be a non-empty Kubernetes name without '/'")
    return value


def backup_prefix(backup: str) -> str:
    return f"{_name(backup, 'backup')}/"


def backup_metadata_key(backup: str) -> str:
    return f"{_name(backup, 'backup')}/{METADATA_FILE}"


def backup_tarball_key(backup: str) -> str:
    b = _name(backup, "backup")
    return f"{b}/{b}.tar.gz"


def backup_log_key(backup: str) -> str:
    b = _name(backup, "backup")
    return f"{b}/{b}-logs.gz"


def podvolumebackups_key(backup: str) -> str:
    b = _name(backup, "backup")
    return f"{b}/{b}-podvolumebackups.json.gz"


def restore_log_key(backup: str, restore: str) -> str:
    return f"{_name(backup, 'backup')}/restore-{_name(restore, 'restore')}-logs.gz"


def restore_results_key(backup: str, restore: str) -> str:
    return f"{_name(backup, 'backup')}/restore-{_name(restore, 'restore')}-results.gz"


def backup_names_from_prefixes(prefixes: list[str]) -> list[str]:
    """Backup names from top-level common prefixes (`list_common_prefixes("", "/")`).

    Anything that is not a single top-level `name/` is skipped. Whether a name really is a
    backup is decided by its `ark-backup.json`, as Ark's backup sync does.
    """
    names = []
    for prefix in prefixes:
        name = prefix[:-1]
        if prefix.endswith("/") and name and "/" not in name and name not in (".", ".."):
            names.append(name)
    return names


@dataclass(frozen=True)
class ParsedKey:
    backup: str
    kind: ObjectKind
    restore: str | None = None


def parse_key(key: str) -> ParsedKey | None:
    """Say which backup object `key` is, or None for keys outside the Ark 0.9 layout."""
    backup, sep, name = key.partition("/")
    if not sep or not backup or "/" in name:
        return None
    fixed = {
        METADATA_FILE: ObjectKind.METADATA,
        f"{backup}.tar.gz": ObjectKind.CONTENTS,
        f"{backup}-logs.gz": ObjectKind.LOG,
        f"{backup}-podvolumebackups.json.gz": ObjectKind.POD_VOLUME_BACKUPS,
    }
    if name in fixed:
        return ParsedKey(backup, fixed[name])
    for suffix, kind in (("-logs.gz", ObjectKind.RESTORE_LOG), ("-results.gz", ObjectKind.RESTORE_RESULTS)):
        if name.startswith("restore-") and name.endswith(suffix):
            restore = name[len("restore-") : -len(suffix)]
            if restore:
                return ParsedKey(backup, kind, restore)
    return None
