"""The restic part of a backup run: PodVolumeBackups for annotated pods, and their outcome.

Pods are handled concurrently (at most `pod_concurrency` at a time), each in its own task: pick the
volumes, make sure the namespace has a restic key and a Ready ResticRepository, create one
PodVolumeBackup per volume under a deterministic name (a restarted server finds the ones it made
before), then wait on the tracker's completion future. The whole wait is bounded by the backup's
pod volume timeout, and a PodVolumeBackup without any progress for `pod_volume_stall_timeout`
seconds is marked Failed with a message pointing at its node agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from arkd.api.constants import (
    API_VERSION,
    BACKUP_KIND,
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    POD_VOLUME_BACKUP_KIND,
    PVC_UID_LABEL,
    RESTIC_REPOSITORY_KIND,
    SNAPSHOT_ANNOTATION_PREFIX,
    PodVolumeBackupPhase,
    ResticRepositoryPhase,
)
from arkd.api.duration import format_duration
from arkd.api.meta import format_time
from arkd.api.repository import DEFAULT_MAINTENANCE_FREQUENCY
from arkd.config import ServerSettings
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import PODVOLUMEBACKUPS, RESTICREPOSITORIES
from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock
from arkd.kube.errors import AlreadyExists, ApiError, NotFound
from arkd.kube.informer import Informer
from arkd.kube.resource import PVCS
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError
from arkd.podvolume.selection import (
    SelectedVolume,
    pod_ref,
    pod_volume_backup_name,
    restic_tags,
    select_volumes,
)
from arkd.podvolume.tracker import PodVolumeTracker, is_terminal, phase_of

log = logging.getLogger("arkd.controllers.backup")

Obj = dict[str, Any]
T = TypeVar("T")

MAX_LABEL_VALUE = 63
_STALL_CHECK_MAX_PERIOD = 10.0
_STALL_CHECK_MIN_PERIOD = 0.1


class Reporter(Protocol):
    """Where a run's warnings and notes go (the backup's own log, counted in its status)."""

    def info(self, msg: str, **fields: Any) -> None: ...

    def warn(self, msg: str, **fields: Any) -> None: ...


class VolumeSetupError(Exception):
    """A namespace's volumes cannot be backed up (no key, repository not Ready); says why."""


@dataclass
class PodResult:
    """What happened to the restic volumes of one pod."""

    pod: Obj
    snapshots: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    pvbs: list[Obj] = field(default_factory=list)

    def annotated_pod(self) -> Obj:
        """The pod JSON for the tarball: `snapshot.ark.heptio.com/<volume>` for each completed volume."""
        pod = dict(self.pod)
        meta = dict(pod.get("metadata") or {})
        annotations = dict(meta.get("annotations") or {})
        for volume, snapshot_id in self.snapshots.items():
            annotations[SNAPSHOT_ANNOTATION_PREFIX + volume] = snapshot_id
        meta["annotations"] = annotations
        pod["metadata"] = meta
        return pod


def label_value(value: str) -> str:
    """`value` when it is a valid label value length, else a shortened form with a hash suffix."""
    if len(value) <= MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return f"{value[: MAX_LABEL_VALUE - 7].rstrip('.-_')}-{digest}"


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


class PodVolumeBackupper:
    """Backs up the annotated volumes of the pods of one Backup run."""

    def __init__(
        self,
        *,
        client: KubeClient,
        ark_namespace: str,
        backup: Obj,
        config: ArkConfig,
        settings: ServerSettings,
        tracker: PodVolumeTracker,
        repositories: Informer,
        clock: Clock,
        deadline: float,
        timeout_text: str,
        reporter: Reporter,
    ) -> None:
        self.client = client
        self.ark_namespace = ark_namespace
        self.backup = backup
        self.backup_name = str(_meta(backup).get("name") or "")
        self.backup_uid = str(_meta(backup).get("uid") or "")
        self.config = config
        self.settings = settings
        self.tracker = tracker
        self.repositories = repositories
        self.clock = clock
        self.deadline = deadline
        self.timeout_text = timeout_text
        self.reporter = reporter
        self.keys = RepositoryKeys(client, ark_namespace)
        self._gate = asyncio.Semaphore(max(1, settings.pod_concurrency))
        self._pods: list[asyncio.Task[PodResult]] = []
        self._namespaces: dict[str, asyncio.Task[str]] = {}
        self._outstanding: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None

    # -- the run's side ----------------------------------------------------------------------------
    def add_pod(self, pod: Obj) -> None:
        """Start backing up the pod's volumes; the pod JSON is held until `finish()`."""
        self._pods.append(asyncio.create_task(self._pod(pod), name=f"backup-pod:{pod_ref(pod)}"))
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._watch_stalls(), name=f"backup-stalls:{self.backup_name}")

    @property
    def pods(self) -> int:
        return len(self._pods)

    async def finish(self) -> list[PodResult]:
        """Every pod's result, once all its PodVolumeBackups are terminal (or timed out)."""
        try:
            return list(await asyncio.gather(*self._pods))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop everything still running (the run failed or was cancelled)."""
        tasks: list[asyncio.Task[Any]] = [*self._pods, *self._namespaces.values()]
        if self._monitor is not None:
            tasks.append(self._monitor)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock.now())

    # -- one pod -----------------------------------------------------------------------------------
    async def _pod(self, pod: Obj) -> PodResult:
        result = PodResult(pod)
        ref = pod_ref(pod)
        selection = select_volumes(pod)
        for warning in selection.warnings:
            self.reporter.warn(warning, pod=ref)
        if not selection.volumes:
            return result
        node = str(_spec(pod).get("nodeName") or "")
        if not node:
            result.errors.extend(
                f"volume {v.name} of pod {ref} not backed up: the pod is not scheduled on a node "
                "(spec.nodeName is empty), so no node agent can read it"
                for v in selection.volumes
            )
            return result
        async with self._gate:
            namespace = str(_meta(pod).get("namespace") or "")
            try:
                identifier = await self._namespace_ready(namespace)
            except VolumeSetupError as exc:
                result.errors.extend(f"volume {v.name} of pod {ref} not backed up: {exc}" for v in selection.volumes)
                return result
            created: dict[str, SelectedVolume] = {}
            for volume in selection.volumes:
                try:
                    pvb = await self._create(pod, node, volume, identifier)
                except ApiError as exc:
                    result.errors.append(
                        f"volume {volume.name} of pod {ref} not backed up: cannot create its PodVolumeBackup: {exc}"
                    )
                    continue
                created[str(_meta(pvb)["name"])] = volume
            if not created:
                return result
            self.reporter.info("waiting for pod volume backups", pod=ref, podvolumebackups=sorted(created), node=node)
            outcome = await self._wait(set(created))
        for name, volume in created.items():
            self._record(result, ref, name, volume, outcome.get(name))
        return result

    async def _wait(self, names: set[str]) -> dict[str, Obj | None]:
        self._outstanding |= names
        try:
            future = self.tracker.wait(self.backup_uid, names)
            done = await self._until_deadline(future)
            if done is not None:
                return dict(done)
            return await self._time_out(names)
        finally:
            self._outstanding -= names

    async def _until_deadline(self, future: Awaitable[T]) -> T | None:
        waiter = asyncio.ensure_future(future)
        timer = asyncio.ensure_future(self.clock.sleep(self.remaining()))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        return None

    async def _time_out(self, names: set[str]) -> dict[str, Obj | None]:
        out: dict[str, Obj | None] = {}
        for name in sorted(names):
            obj = self.tracker.get(name)
            if obj is not None and is_terminal(obj):
                out[name] = obj
                continue
            message = (
                f"timed out after {self.timeout_text} waiting for the pod volume backup to finish "
                "(Config podVolumeOperationTimeout or the Backup's ark.heptio.com/pod-volume-timeout)"
            )
            out[name] = await self._fail(name, obj, message)
        return out

    def _record(self, result: PodResult, ref: str, name: str, volume: SelectedVolume, obj: Obj | None) -> None:
        if obj is None:
            result.errors.append(
                f"pod volume backup failed: volume {volume.name} of pod {ref}: PodVolumeBackup {name} "
                "was deleted before it finished"
            )
            return
        result.pvbs.append(obj)
        status = _status(obj)
        message = str(status.get("message") or "")
        if phase_of(obj) == PodVolumeBackupPhase.COMPLETED:
            snapshot_id = str(status.get("snapshotID") or "")
            if not snapshot_id:
                result.errors.append(
                    f"pod volume backup failed: volume {volume.name} of pod {ref}: PodVolumeBackup "
                    f"{name} is Completed but has no snapshotID"
                )
                return
            result.snapshots[volume.name] = snapshot_id
            if message:
                # The node agent completes a snapshot that skipped unreadable files with a message.
                result.errors.append(f"volume {volume.name} of pod {ref} was backed up with errors: {message}")
            return
        if not is_terminal(obj):
            result.errors.append(
                f"pod volume backup failed: volume {volume.name} of pod {ref}: PodVolumeBackup {name} "
                f"still {phase_of(obj)} after {self.timeout_text}"
            )
            return
        result.errors.append(
            f"pod volume backup failed: volume {volume.name} of pod {ref}: {message or 'no message given'}"
        )

    # -- namespace prerequisites ---------------------------------------------------------------------
    async def _namespace_ready(self, namespace: str) -> str:
        task = self._namespaces.get(namespace)
        if task is None:
            task = asyncio.create_task(self._prepare_namespace(namespace), name=f"backup-repo:{namespace}")
            self._namespaces[namespace] = task
        # Shielded: the task is shared by every pod of the namespace.
        return await asyncio.shield(task)

    async def _prepare_namespace(self, namespace: str) -> str:
        try:
            await self.keys.ensure(namespace, require=self.settings.require_restic_keys)
        except ResticKeyError as exc:
            raise VolumeSetupError(str(exc)) from None
        except ApiError as exc:
            raise VolumeSetupError(f"cannot read or create the restic key of namespace {namespace}: {exc}") from None
        return await self._ensure_repository(namespace)

    async def _ensure_repository(self, namespace: str) -> str:
        key = f"{self.ark_namespace}/{namespace}"
        try:
            identifier = self.config.restic_identifier(namespace)
        except ValueError as exc:
            raise VolumeSetupError(str(exc)) from None
        if self.repositories.cache.get(key) is None:
            body: Obj = {
                "apiVersion": API_VERSION,
                "kind": RESTIC_REPOSITORY_KIND,
                "metadata": {"name": namespace, "namespace": self.ark_namespace},
                "spec": {
                    "maintenanceFrequency": format_duration(DEFAULT_MAINTENANCE_FREQUENCY),
                    "resticIdentifier": identifier,
                },
            }
            try:
                await self.client.create(RESTICREPOSITORIES, body, self.ark_namespace)
                self.reporter.info("created restic repository", repository=key)
            except AlreadyExists:
                pass
            except ApiError as exc:
                raise VolumeSetupError(f"cannot create ResticRepository {key}: {exc}") from None
        settled = {ResticRepositoryPhase.READY.value, ResticRepositoryPhase.NOT_READY.value}
        repo = await self.repositories.cache.wait_for(key, lambda obj: phase_of(obj) in settled, self.remaining())
        if repo is None:
            current = self.repositories.cache.get(key)
            phase = phase_of(current) if current is not None else "not seen yet"
            raise VolumeSetupError(
                f"timed out after {self.timeout_text} waiting for ResticRepository {key} to become Ready "
                f"(phase {phase})"
            )
        if phase_of(repo) != ResticRepositoryPhase.READY:
            reason = str(_status(repo).get("message") or "no message given")
            raise VolumeSetupError(f"restic repository {key} is NotReady: {reason}")
        return str(_spec(repo).get("resticIdentifier") or identifier)

    # -- PodVolumeBackup objects -------------------------------------------------------------------
    async def _create(self, pod: Obj, node: str, volume: SelectedVolume, identifier: str) -> Obj:
        meta = _meta(pod)
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid") or "")
        pvb_name = pod_volume_backup_name(self.backup_name, namespace, name, volume.name)
        labels = {
            BACKUP_NAME_LABEL: label_value(self.backup_name),
            BACKUP_UID_LABEL: self.backup_uid,
        }
        if volume.claim_name:
            pvc_uid = await self._claim_uid(namespace, volume)
            if pvc_uid:
                labels[PVC_UID_LABEL] = pvc_uid
        body: Obj = {
            "apiVersion": API_VERSION,
            "kind": POD_VOLUME_BACKUP_KIND,
            "metadata": {
                "name": pvb_name,
                "namespace": self.ark_namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": BACKUP_KIND,
                        "name": self.backup_name,
                        "uid": self.backup_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "node": node,
                "pod": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid},
                "volume": volume.name,
                "repoIdentifier": identifier,
                "tags": restic_tags(
                    backup_name=self.backup_name,
                    backup_uid=self.backup_uid,
                    pod_name=name,
                    pod_uid=uid,
                    pod_namespace=namespace,
                    volume=volume.name,
                ),
            },
        }
        try:
            return await self.client.create(PODVOLUMEBACKUPS, body, self.ark_namespace)
        except AlreadyExists:
            existing = await self.client.get(PODVOLUMEBACKUPS, pvb_name, self.ark_namespace)
        if (_meta(existing).get("labels") or {}).get(BACKUP_UID_LABEL) == self.backup_uid:
            return existing  # made by an earlier run of this backup (server restart)
        # Left over from a deleted Backup of the same name whose garbage was not collected yet.
        await self.client.delete(
            PODVOLUMEBACKUPS, pvb_name, self.ark_namespace, preconditions_uid=str(_meta(existing)["uid"])
        )
        return await self.client.create(PODVOLUMEBACKUPS, body, self.ark_namespace)

    async def _claim_uid(self, namespace: str, volume: SelectedVolume) -> str | None:
        try:
            claim = await self.client.get(PVCS, str(volume.claim_name), namespace)
        except NotFound:
            self.reporter.warn(
                f"PersistentVolumeClaim {namespace}/{volume.claim_name} of volume {volume.name} not found; "
                "its PodVolumeBackup gets no pvc-uid label, so the next backup cannot use it as a parent",
                namespace=namespace,
            )
            return None
        return str(_meta(claim).get("uid") or "") or None

    async def _fail(self, name: str, obj: Obj | None, message: str) -> Obj | None:
        """Mark a PodVolumeBackup Failed unless it reached a terminal phase meanwhile; its latest version."""
        completion = format_time(self.clock.wall().replace(microsecond=0))
        try:
            return await self.tracker.fail(
                self.client, PODVOLUMEBACKUPS, name, self.ark_namespace, message, completion, obj
            )
        except ApiError as exc:
            log.warning("cannot mark pod volume backup failed", extra={"podvolumebackup": name, "error": str(exc)})
            return obj

    # -- stall detection ---------------------------------------------------------------------------
    async def _watch_stalls(self) -> None:
        stall = self.settings.pod_volume_stall_timeout
        if stall <= 0:
            return
        period = min(max(stall / 4, _STALL_CHECK_MIN_PERIOD), _STALL_CHECK_MAX_PERIOD)
        while True:
            await self.clock.sleep(period)
            names = set(self._outstanding)
            if not names:
                continue
            for name in self.tracker.stalled(self.backup_uid, names, stall):
                obj = self.tracker.get(name)
                if obj is None or is_terminal(obj):
                    continue
                node = str(_spec(obj).get("node") or "")
                if phase_of(obj) == PodVolumeBackupPhase.NEW and self._node_busy(node, name, stall):
                    continue  # queued behind a running volume on a busy node agent
                message = (
                    f"no progress for {seconds_text(stall)}: is the node agent (ark restic server) "
                    f"running on node {node}?"
                )
                self.reporter.info("pod volume backup stalled", podvolumebackup=name, node=node)
                await self._fail(name, obj, message)

    def _node_busy(self, node: str, name: str, stall: float) -> bool:
        """Another volume on `node` started or moved within the stall window."""
        now = self.clock.now()
        for other in self.tracker.objects(self.backup_uid):
            other_name = str(_meta(other).get("name") or "")
            if other_name == name or str(_spec(other).get("node") or "") != node:
                continue
            if phase_of(other) == PodVolumeBackupPhase.NEW:
                continue
            last = self.tracker.last_progress(other_name)
            if last is not None and now - last < stall:
                return True
        return False


def without_managed_fields(obj: Obj) -> Obj:
    out = dict(obj)
    meta = dict(_meta(obj))
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out
