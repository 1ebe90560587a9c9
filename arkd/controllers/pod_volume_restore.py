"""Node agent: restore pod volumes (PodVolumeRestores) into restored pods on this node.

A PodVolumeRestore starts once its pod (`spec.pod`, the newly created pod) is on this node and its
first init container, `restic-wait`, is Running: the kubelet has then mounted every volume (Ark
GA's rule; alpha.1 had it inverted). Pod events enqueue the PodVolumeRestores labelled with the
pod's UID, so a restore starts as soon as the helper runs.

restic restores the snapshot into the volume directory (`--target .`), from the repository and
with the key of the SOURCE namespace: the last path segment of `spec.repoIdentifier` (every
repository identifier ends in `/<namespace>`), so a restore into a mapped namespace still opens the
right repository. Then `<volume>/.ark` (done files of earlier restores carried in the snapshot) is
replaced by a fresh `.ark/` holding an empty file named after the Restore's UID, which releases
`restic-wait`, and the PodVolumeRestore is marked Completed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from arkd.api.constants import POD_UID_LABEL, RESTORE_KIND, RESTORE_UID_LABEL, PodVolumeRestorePhase
from arkd.api.podvolume import PodVolumeRestore
from arkd.controllers.pod_volume_backup import (
    IN_PROGRESS,
    NodeContext,
    OperationFailed,
    Outcome,
    PodVolumeOperationController,
    ProgressCallback,
    now_rfc3339,
    progress_status,
    uid_of,
)
from arkd.controllers.resources import PODVOLUMERESTORES
from arkd.kube.informer import Informer
from arkd.podvolume.hostpath import VolumePathError, find_volume_path, volume_directory_name
from arkd.podvolume.tracker import phase_of

log = logging.getLogger("arkd.controllers.pod_volume_restore")

Obj = dict[str, Any]

RESTORE_HELPER_CONTAINER = "restic-wait"
POD_UID_INDEX = "pod_uid"
DONE_DIR = ".ark"


def _pod_uid_index(obj: Obj) -> list[str]:
    """The restored pod's UID: the `ark.heptio.com/pod-uid` label Ark sets, and spec.pod.uid."""
    label = ((obj.get("metadata") or {}).get("labels") or {}).get(POD_UID_LABEL)
    pod = (obj.get("spec") or {}).get("pod")
    spec_uid = pod.get("uid") if isinstance(pod, dict) else None
    return sorted({str(v) for v in (label, spec_uid) if v})


def restic_wait_running(pod: Obj) -> bool:
    """The pod's first init container is `restic-wait` and it is Running."""
    init_containers = (pod.get("spec") or {}).get("initContainers") or []
    if not init_containers or init_containers[0].get("name") != RESTORE_HELPER_CONTAINER:
        return False
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    if not statuses or not isinstance(statuses[0], dict):
        return False
    return bool((statuses[0].get("state") or {}).get("running"))


def source_namespace(repo_identifier: str) -> str:
    """The namespace a repository belongs to: the last path segment of its identifier."""
    namespace = repo_identifier.rstrip("/").rsplit("/", 1)[-1]
    if not namespace or ":" in namespace:
        raise OperationFailed(
            f"spec.repoIdentifier {repo_identifier!r} does not end in /<namespace>; cannot tell whose "
            "restic key opens it"
        )
    return namespace


def restore_uid(obj: Obj) -> str:
    """UID of the Restore: its controller ownerReference, else the restore-uid label."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if not isinstance(ref, dict) or not ref.get("controller"):
            continue
        if ref.get("kind") == RESTORE_KIND and ref.get("uid"):
            return str(ref["uid"])
    return str((meta.get("labels") or {}).get(RESTORE_UID_LABEL) or "")


def write_done_file(volume_dir: Path, restore_uid_: str) -> Path:
    """Replace `<volume>/.ark` by a fresh directory (0755) holding an empty file `<restore uid>` (0644)."""
    done_dir = volume_dir / DONE_DIR
    if done_dir.is_symlink() or (done_dir.exists() and not done_dir.is_dir()):
        done_dir.unlink()
    elif done_dir.exists():
        shutil.rmtree(done_dir)
    done_dir.mkdir()
    done_dir.chmod(0o755)  # not subject to the umask
    marker = done_dir / restore_uid_
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    return marker


class PodVolumeRestoreController(PodVolumeOperationController):
    """Restores the volumes of PodVolumeRestores whose pod runs on this node."""

    name = "pod-volume-restore"
    operation = "restore"
    resource = PODVOLUMERESTORES

    def __init__(self, ctx: NodeContext, informer: Informer, pods: Informer, backups: Informer | None = None) -> None:
        informer.cache.add_index(POD_UID_INDEX, _pod_uid_index)
        super().__init__(ctx, informer)
        self.backups = backups
        pods.add_handler(self._pod_changed, lambda _old, new: self._pod_changed(new), None)

    def _backed_up_bytes(self, snapshot_id: str, repo_identifier: str) -> int | None:
        """The size the PodVolumeBackup that made this snapshot recorded, if it is still in the cluster."""
        if self.backups is None:
            return None
        for pvb in self.backups.cache.list():
            spec, status = pvb.get("spec") or {}, pvb.get("status") or {}
            if status.get("snapshotID") == snapshot_id and spec.get("repoIdentifier") == repo_identifier:
                total = (status.get("progress") or {}).get("totalBytes")
                if isinstance(total, int) and total > 0 and status.get("phase") == "Completed":
                    return total
        return None

    def _pod_changed(self, pod: Obj) -> None:
        uid = uid_of(pod)
        if not uid:
            return
        for key in self.cache.index_keys(POD_UID_INDEX, uid):
            self.queue.add(key)

    def _pod_of(self, obj: Obj) -> Obj | None:
        """The PVR's pod from this node's pod cache (same UID), or None."""
        ref = (obj.get("spec") or {}).get("pod") or {}
        if not isinstance(ref, dict):
            return None
        pod = self.ctx.pods.get(f"{ref.get('namespace')}/{ref.get('name')}")
        if pod is None or uid_of(pod) != ref.get("uid"):
            return None
        return pod

    def is_mine(self, obj: Obj) -> bool:
        # No spec.node on a PodVolumeRestore: the node-filtered pod cache tells.
        return self._pod_of(obj) is not None

    async def ready(self, obj: Obj) -> bool:
        pod = self._pod_of(obj)
        if pod is None:
            return False
        if restic_wait_running(pod):
            return True
        # A run that wrote the done file but not the status: restic-wait has moved on, finish it.
        return phase_of(obj) == IN_PROGRESS and await self._done_file_exists(obj, pod)

    async def _done_file_exists(self, obj: Obj, pod: Obj) -> bool:
        spec = obj.get("spec") or {}
        uid = restore_uid(obj)
        volume = spec.get("volume")
        if not uid or not volume:
            return False
        try:
            dir_name = volume_directory_name(pod, str(volume), lambda ns, n: self.ctx.pvcs.get(f"{ns}/{n}"))
            path = await asyncio.to_thread(
                find_volume_path, self.ctx.host_pods_dir, uid_of(pod), dir_name, volume=str(volume), pod=""
            )
        except VolumePathError:
            return False
        return await asyncio.to_thread((path / DONE_DIR / uid).is_file)

    async def perform(self, obj: Obj, resumed: bool, progress: ProgressCallback) -> Outcome:
        pvr = PodVolumeRestore.from_obj(obj)
        spec = pvr.spec
        ref = spec.pod
        if ref is None or not ref.namespace or not ref.name or not ref.uid:
            raise OperationFailed("spec.pod must name the restored pod: namespace, name and uid")
        if not spec.volume:
            raise OperationFailed("spec.volume is empty: name the pod volume to restore")
        if not spec.snapshot_id:
            raise OperationFailed("spec.snapshotID is empty: the restic snapshot to restore is unknown")
        if not spec.repo_identifier:
            raise OperationFailed("spec.repoIdentifier is empty: the restic repository is unknown")
        owner_uid = restore_uid(obj)
        if not owner_uid:
            raise OperationFailed(
                f"no Restore UID: neither a controller ownerReference of kind Restore nor the label "
                f"{RESTORE_UID_LABEL}; restic-wait could never be released"
            )
        namespace = source_namespace(spec.repo_identifier)
        pod = await self.live_pod(ref.namespace, ref.name, ref.uid)
        path = await self.volume_path(pod, ref.uid, spec.volume)
        if resumed and await asyncio.to_thread((path / DONE_DIR / owner_uid).is_file):
            # An earlier run restored everything and released restic-wait; only the status is missing.
            return self._completed(0, "restore had finished before the node agent restarted")
        log.info(
            "running restic restore",
            extra={"path": str(path), "snapshot": spec.snapshot_id, "repository": spec.repo_identifier},
        )
        snapshot_id = spec.snapshot_id
        total_bytes = self._backed_up_bytes(snapshot_id, spec.repo_identifier)
        summary = await self.with_repository(
            obj,
            spec.repo_identifier,
            namespace,
            lambda repo: repo.restore(snapshot_id, path, progress=progress, total_bytes=total_bytes),
        )
        try:
            await asyncio.to_thread(write_done_file, path, owner_uid)
        except OSError as exc:
            raise OperationFailed(
                f"restored snapshot {spec.snapshot_id} into {path} but could not write the done file "
                f"{DONE_DIR}/{owner_uid}: {exc}"
            ) from None
        return self._completed(
            summary.total_bytes,
            f"restored snapshot {spec.snapshot_id} into {path}: {summary.total_bytes} bytes in "
            f"{summary.total_files} files",
        )

    def _completed(self, total_bytes: int, message: str) -> Outcome:
        status: Obj = {
            "phase": PodVolumeRestorePhase.COMPLETED.value,
            "completionTimestamp": now_rfc3339(self.ctx.clock),
            "message": None,
        }
        if total_bytes:
            status["progress"] = progress_status(total_bytes, total_bytes)
        return Outcome(status, "completed", "Normal", "Completed", message, total_bytes)
