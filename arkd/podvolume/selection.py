"""Which pod volumes a backup sends to restic, and the names and tags of their PodVolumeBackups.

Ark v0.9 is opt-in: a pod lists its volumes in the `backup.ark.heptio.com/backup-volumes`
annotation, split on "," exactly as written (no whitespace trimming, like Ark). Names that are not
volumes of the pod and hostPath volumes are skipped with a warning, never an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from arkd.api.constants import (
    RESTIC_TAG_BACKUP,
    RESTIC_TAG_BACKUP_UID,
    RESTIC_TAG_NAMESPACE,
    RESTIC_TAG_POD,
    RESTIC_TAG_POD_UID,
    RESTIC_TAG_VOLUME,
    VOLUMES_TO_BACKUP_ANNOTATION,
)

Obj = dict[str, Any]

# Kubernetes object names (DNS subdomains) are at most 253 characters.
MAX_NAME_LENGTH = 253
_HASH_LENGTH = 10


@dataclass(frozen=True)
class SelectedVolume:
    """A pod volume to back up with restic.

    `claim_name` is the PersistentVolumeClaim name for PVC volumes (the server labels their
    PodVolumeBackups with the claim's UID), None for every other volume type.
    """

    name: str
    claim_name: str | None = None


@dataclass
class VolumeSelection:
    volumes: list[SelectedVolume] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _meta(pod: Obj) -> Obj:
    meta = pod.get("metadata")
    return meta if isinstance(meta, dict) else {}


def pod_ref(pod: Obj) -> str:
    """"namespace/name" of a pod, for messages."""
    meta = _meta(pod)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def requested_volumes(pod: Obj) -> list[str]:
    """The volume names in the pod's backup-volumes annotation, in order, without duplicates.

    Entries are not trimmed (Ark compatibility: " data" is not "data"); empty entries, as left by
    "a,,b" or a trailing comma, are ignored.
    """
    annotations = _meta(pod).get("annotations") or {}
    raw = annotations.get(VOLUMES_TO_BACKUP_ANNOTATION)
    if not raw:
        return []
    names: list[str] = []
    for entry in str(raw).split(","):
        if entry and entry not in names:
            names.append(entry)
    return names


def pod_volumes(pod: Obj) -> dict[str, Obj]:
    """The pod's `spec.volumes` by name."""
    spec = pod.get("spec") or {}
    volumes = spec.get("volumes") or []
    return {v["name"]: v for v in volumes if isinstance(v, dict) and v.get("name")}


def select_volumes(pod: Obj) -> VolumeSelection:
    """The volumes of `pod` to back up with restic, and a warning per requested volume that is skipped."""
    selection = VolumeSelection()
    volumes = pod_volumes(pod)
    ref = pod_ref(pod)
    for name in requested_volumes(pod):
        volume = volumes.get(name)
        if volume is None:
            selection.warnings.append(
                f"volume {name} named in {VOLUMES_TO_BACKUP_ANNOTATION} is not in pod {ref}; "
                "not backing it up"
            )
            continue
        if "hostPath" in volume:
            selection.warnings.append(
                f"hostPath volumes are not supported: volume {name} of pod {ref} is a hostPath volume "
                "(its data is not under the kubelet's pods directory); not backing it up"
            )
            continue
        claim = volume.get("persistentVolumeClaim")
        claim_name = claim.get("claimName") if isinstance(claim, dict) else None
        selection.volumes.append(SelectedVolume(name=name, claim_name=claim_name or None))
    return selection


def pod_volume_backup_name(backup_name: str, pod_namespace: str, pod_name: str, volume: str) -> str:
    """A deterministic PodVolumeBackup name: `<backup>-<hash of backup, pod namespace, pod, volume>`.

    Creating it twice (a restarted server) hits AlreadyExists instead of duplicating the work.
    Long backup names are shortened so the result stays a valid name of at most 253 characters.
    """
    if not backup_name:
        raise ValueError("a PodVolumeBackup name needs the backup name, got an empty string")
    identity = "\x00".join((backup_name, pod_namespace, pod_name, volume))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = backup_name[: MAX_NAME_LENGTH - _HASH_LENGTH - 1].rstrip(".-")
    return f"{prefix}-{digest}" if prefix else digest


def restic_tags(
    *,
    backup_name: str,
    backup_uid: str,
    pod_name: str,
    pod_uid: str,
    pod_namespace: str,
    volume: str,
) -> dict[str, str]:
    """The six tags Ark puts on every pod volume snapshot (`--tag key=value`)."""
    return {
        RESTIC_TAG_BACKUP: backup_name,
        RESTIC_TAG_BACKUP_UID: backup_uid,
        RESTIC_TAG_POD: pod_name,
        RESTIC_TAG_POD_UID: pod_uid,
        RESTIC_TAG_NAMESPACE: pod_namespace,
        RESTIC_TAG_VOLUME: volume,
    }
