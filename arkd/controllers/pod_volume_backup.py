"""Node agent: run the restic backups (PodVolumeBackups) of pods on this node.

The shared machinery of the backup and restore controllers lives here too
(`PodVolumeOperationController`):

- Level-triggered reconcile of keys; the queue worker returns at once. The restic run is a task
  supervised by object UID (starting twice is a no-op), bounded by a node-wide semaphore.
- Claim: New -> InProgress is a status merge patch carrying the resourceVersion, made only once a
  semaphore slot is held, so "InProgress" really means "restic is running" and a 409 means
  someone else moved the object first (the claim is dropped).
- Every later status write is guarded the same way. A Conflict is re-read from the API server: if
  the object became terminal meanwhile (the server failed it for a stall, say) or was deleted, the
  run is abandoned; otherwise the write is retried on the fresh version.
- An object left InProgress on this node by an earlier agent (crash, SIGTERM, upgrade) is run
  again: restic reuses its cache and deduplicates what was already uploaded.
- Cancellation (SIGTERM) interrupts restic (SIGINT, then SIGKILL) and writes nothing: the object
  stays InProgress for the next agent.
- The terminal status is written by the task; if that write fails it is kept and retried by the
  queue with backoff, without running restic again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import ValidationError

from arkd.api.constants import (
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    PVC_UID_LABEL,
    PodVolumeBackupPhase,
)
from arkd.api.duration import format_duration
from arkd.api.meta import format_time
from arkd.api.podvolume import PodVolumeBackup
from arkd.controllers.resources import PODVOLUMEBACKUPS
from arkd.kube.cache import Cache, resource_version, rv_at_least
from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock
from arkd.kube.controller import Controller, ControllerMetrics, Done, Result
from arkd.kube.errors import Conflict, NotFound
from arkd.kube.events import EventRecorder
from arkd.kube.informer import Informer
from arkd.kube.patch import guarded_merge_patch, status_merge_patch
from arkd.kube.resource import PODS, PVCS, Resource
from arkd.kube.tasks import TaskSupervisor
from arkd.kube.workqueue import WorkQueue
from arkd.log import bind
from arkd.metrics import PodVolumeMetrics
from arkd.podvolume.hostpath import VolumePathError, find_volume_path, volume_directory_name
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError
from arkd.podvolume.selection import restic_tags
from arkd.podvolume.tracker import TERMINAL_PHASES, phase_of
from arkd.restic.errors import Reason, ResticError
from arkd.restic.messages import BackupSummary, Progress
from arkd.restic.repository import Repository
from arkd.restic.runner import ResticRunner

log = logging.getLogger("arkd.controllers.pod_volume_backup")

Obj = dict[str, Any]
ProgressCallback = Callable[[Progress], None]

# Every snapshot gets the same host, so a recreated node-agent pod does not change restic's
# notion of "the same source" (Ark GA's `--hostname=ark`).
RESTIC_HOST = "ark"
IN_PROGRESS = "InProgress"
# Waiting for a locked repository: first retry after 2 s, doubling up to 30 s between tries.
_LOCK_RETRY_FIRST = 2.0
_LOCK_RETRY_MAX = 30.0
T = TypeVar("T")
COMPLETED = "Completed"
FAILED = "Failed"
# arkd: on PodVolumeBackups of non-PVC volumes, "<kind>/<name>" of the pod's controller (or
# "Pod/<name>"), written by the node agent so a later backup of the same workload finds its parent.
POD_OWNER_ANNOTATION = "ark.heptio.com/pod-owner"
# Index of the PodVolumeBackup cache by "<pod namespace>/<volume>", for parent lookups.
POD_VOLUME_INDEX = "pod_volume"
# Unreadable paths listed in a message before "... and N more".
MAX_LISTED_PATHS = 10


def now_rfc3339(clock: Clock) -> str:
    """metav1.Time precision: whole seconds."""
    return format_time(clock.wall().replace(microsecond=0))


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def uid_of(obj: Obj) -> str:
    return str(_meta(obj).get("uid") or "")


def pod_owner(pod: Obj) -> str:
    """"<kind>/<name>" of the pod's controller, or "Pod/<name>" for a bare pod."""
    for ref in _meta(pod).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return f"{ref.get('kind', '')}/{ref.get('name', '')}"
    return f"Pod/{_meta(pod).get('name', '')}"


def _completion_time(obj: Obj) -> datetime.datetime:
    raw = (obj.get("status") or {}).get("completionTimestamp")
    if isinstance(raw, str):
        try:
            return datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.datetime.min.replace(tzinfo=datetime.UTC)


class OperationFailed(Exception):
    """The operation cannot succeed; `str(exc)` is the user-facing message for status.message."""


class ClaimFailed(Exception):
    """Claiming an object failed for a reason other than a lost race; retried with backoff."""


class Abandoned(Exception):
    """The object was deleted or ended by someone else while restic ran; stop without writing."""


@dataclass
class NodeContext:
    """What both node controllers share."""

    client: KubeClient
    namespace: str
    node_name: str
    host_pods_dir: str
    pods: Cache
    pvcs: Cache
    keys: RepositoryKeys
    runner: ResticRunner
    recorder: EventRecorder
    clock: Clock
    metrics: PodVolumeMetrics
    semaphore: asyncio.Semaphore
    progress_interval: float = 5.0
    controller_metrics: ControllerMetrics | None = None
    workers: int = 2
    lock_wait: float = 300.0  # seconds a run waits for a repository an exclusive operation locked


@dataclass
class Outcome:
    """The end of one run: the terminal status to write, and how to report it."""

    status: Obj
    result: Literal["completed", "partially_failed", "failed"]
    event_type: Literal["Normal", "Warning"]
    reason: str
    message: str
    bytes_processed: int = 0


@dataclass
class _ProgressState:
    latest: Progress | None = None
    written: tuple[int, int] | None = None

    def update(self, progress: Progress) -> None:
        self.latest = progress

    def pending(self) -> tuple[int, int] | None:
        if self.latest is None:
            return None
        value = (self.latest.total_bytes, self.latest.bytes_done)
        return None if value == self.written else value


def progress_status(total_bytes: int, bytes_done: int) -> Obj:
    return {"totalBytes": total_bytes, "bytesDone": bytes_done}


@dataclass
class _Bookkeeping:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    # UIDs whose terminal status we wrote and the cache may not show yet.
    finished: set[str] = field(default_factory=set)
    # UID -> resourceVersion our claim lost against; retry only once the cache moved on.
    conflicted: dict[str, str] = field(default_factory=dict)
    # UID -> latest version we got back from our own writes (fresher than the cache).
    latest: dict[str, Obj] = field(default_factory=dict)
    # key -> UID of objects we acted on, to clean up when the key disappears.
    uids: dict[str, str] = field(default_factory=dict)
    # UID -> why the last claim failed (API server trouble); the reconcile raises it for backoff.
    errors: dict[str, str] = field(default_factory=dict)

    def forget(self, uid: str) -> None:
        self.errors.pop(uid, None)
        self.outcomes.pop(uid, None)
        self.finished.discard(uid)
        self.conflicted.pop(uid, None)
        self.latest.pop(uid, None)


class PodVolumeOperationController:
    """The claim/run/report cycle shared by the PodVolumeBackup and PodVolumeRestore controllers."""

    name: ClassVar[str]
    operation: ClassVar[Literal["backup", "restore"]]
    resource: ClassVar[Resource]

    def __init__(self, ctx: NodeContext, informer: Informer) -> None:
        self.ctx = ctx
        self.informer = informer
        self.cache = informer.cache
        self.queue = WorkQueue(clock=ctx.clock)
        self.tasks = TaskSupervisor(self.name)
        self.controller = Controller(
            self.name,
            self.queue,
            self.reconcile,
            workers=ctx.workers,
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self._book = _Bookkeeping()
        informer.add_handler(self._enqueue, lambda _old, new: self._enqueue(new), self._enqueue)

    # -- subclass hooks ----------------------------------------------------------------------
    def is_mine(self, obj: Obj) -> bool:
        """Whether this node's agent is responsible for the object."""
        raise NotImplementedError

    async def ready(self, obj: Obj) -> bool:
        """Whether the object can be started now (checked for New and left-over InProgress objects)."""
        return True

    async def perform(self, obj: Obj, resumed: bool, progress: ProgressCallback) -> Outcome:
        """Run restic; return the outcome or raise OperationFailed / ResticError."""
        raise NotImplementedError

    async def claimed(self, obj: Obj) -> Obj:
        """Called right after the claim with the claimed object; may write more and return the newest."""
        return obj

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the workers until cancelled; running restic processes are interrupted on the way out."""
        try:
            await self.controller.run()
        finally:
            await self.tasks.shutdown()

    def _enqueue(self, obj: Obj) -> None:
        meta = _meta(obj)
        if meta.get("name"):
            self.queue.add(f"{meta.get('namespace')}/{meta['name']}")

    # -- reconcile ----------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Result:
        book = self._book
        obj = self.cache.get(key)
        known_uid = book.uids.get(key)
        if known_uid is not None and (obj is None or uid_of(obj) != known_uid):
            # Deleted (or deleted and re-created): stop restic, nobody is waiting for it any more.
            await self.tasks.cancel(known_uid)
            book.forget(known_uid)
            del book.uids[key]
        if obj is None or not self.is_mine(obj):
            return Done()
        uid = uid_of(obj)
        phase = phase_of(obj)
        if phase in TERMINAL_PHASES:
            if self.tasks.running(uid):
                if uid in book.finished or uid in book.outcomes:
                    # Our task wrote (or is writing) this status; its exit requeues the key.
                    return Done()
                log.info("ended elsewhere, stopping restic", extra={"key": key, "phase": phase})
                await self.tasks.cancel(uid)
            book.forget(uid)
            book.uids.pop(key, None)
            return Done()
        if self.tasks.running(uid) or uid in book.finished:
            return Done()
        if uid in book.outcomes:
            # The run ended but its final status write failed: retry the write, not restic.
            await self._write_outcome(key, uid)
            return Done()
        error = book.errors.pop(uid, None)
        if error is not None:
            # Raising hands the retry to the queue's per-key backoff.
            raise ClaimFailed(error)
        if book.conflicted.get(uid) == resource_version(obj):
            return Done()
        if not await self.ready(obj):
            return Done()
        book.uids[key] = uid
        self.tasks.start(uid, lambda: self._execute(key, uid), on_exit=lambda _uid: self.queue.add(key))
        return Done()

    # -- the supervised run -------------------------------------------------------------------
    async def _execute(self, key: str, uid: str) -> None:
        with bind(key=key, node=self.ctx.node_name):
            async with self.ctx.semaphore:
                obj = self.cache.get(key)
                if obj is None or uid_of(obj) != uid or phase_of(obj) in TERMINAL_PHASES:
                    return
                resumed = phase_of(obj) == IN_PROGRESS
                if resumed:
                    log.info("resuming an operation left in progress", extra={"operation": self.operation})
                    message = f"node agent on {self.ctx.node_name} is running restic again"
                    self.ctx.recorder.record(obj, "Normal", "Resumed", message)
                else:
                    try:
                        obj = await self._write_status(
                            obj, {"phase": IN_PROGRESS, "startTimestamp": now_rfc3339(self.ctx.clock)}
                        )
                    except Conflict:
                        self._book.conflicted[uid] = resource_version(obj)
                        log.info("claim lost to a newer version", extra={"operation": self.operation})
                        return
                    except NotFound:
                        return
                    except Exception as exc:
                        self._book.errors[uid] = f"could not claim {key}: {type(exc).__name__}: {exc}"
                        return
                    message = f"restic {self.operation} started on node {self.ctx.node_name}"
                    self.ctx.recorder.record(obj, "Normal", "Started", message)
                obj = await self.claimed(obj)
                outcome = await self._operate(key, uid, obj, resumed)
                if outcome is None:
                    return
                self._book.outcomes[uid] = outcome
                self._report(obj, outcome)
                # Still holding the slot: the next claim must not overlap with this InProgress.
                try:
                    await self._write_outcome(key, uid)
                except Exception as exc:
                    # Kept in outcomes: the requeue on exit retries the write with backoff.
                    log.warning("could not write the final status, will retry", extra={"error": str(exc)})

    async def _operate(self, key: str, uid: str, obj: Obj, resumed: bool) -> Outcome | None:
        labels = (self.ctx.node_name, self.operation)
        metrics = self.ctx.metrics
        state = _ProgressState()
        start = self.ctx.clock.now()
        abandoned: Abandoned | None = None
        outcome: Outcome | None = None
        metrics.in_flight.labels(*labels).inc()
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    reporter = group.create_task(self._progress_loop(key, uid, state))
                    outcome = await self._perform_safely(obj, resumed, state.update)
                    reporter.cancel()
            except* Abandoned as eg:
                abandoned = next(e for e in eg.exceptions if isinstance(e, Abandoned))
        finally:
            metrics.in_flight.labels(*labels).dec()
        if abandoned is not None or outcome is None:
            log.info("operation abandoned", extra={"operation": self.operation, "reason": str(abandoned)})
            return None
        metrics.duration.labels(*labels).observe(self.ctx.clock.now() - start)
        metrics.operations.labels(self.ctx.node_name, self.operation, outcome.result).inc()
        if outcome.bytes_processed:
            metrics.bytes_processed.labels(*labels).inc(outcome.bytes_processed)
        return outcome

    async def _perform_safely(self, obj: Obj, resumed: bool, progress: ProgressCallback) -> Outcome:
        try:
            return await self.perform(obj, resumed, progress)
        except Abandoned:
            raise
        except OperationFailed as exc:
            return self.failure(str(exc))
        except ResticError as exc:
            return self.failure(f"{exc.message} (reason: {exc.reason.value})")
        except ValidationError as exc:
            return self.failure(f"invalid {self.resource.kind}: {exc}")
        except Exception as exc:
            log.exception("operation failed unexpectedly", extra={"operation": self.operation})
            return self.failure(f"internal error in the node agent: {type(exc).__name__}: {exc}")

    def failure(self, message: str) -> Outcome:
        return Outcome(
            status={"phase": FAILED, "message": message, "completionTimestamp": now_rfc3339(self.ctx.clock)},
            result="failed",
            event_type="Warning",
            reason="Failed",
            message=message,
        )

    def _report(self, obj: Obj, outcome: Outcome) -> None:
        self.ctx.recorder.record(obj, outcome.event_type, outcome.reason, outcome.message)
        level = logging.INFO if outcome.result != "failed" else logging.WARNING
        log.log(
            level,
            "operation ended",
            extra={"operation": self.operation, "result": outcome.result, "detail": outcome.message},
        )

    # -- status writes ------------------------------------------------------------------------
    def _current(self, key: str, uid: str) -> Obj | None:
        """The newest version we know: the cache's or the one our last write returned."""
        cached = self.cache.get(key)
        if cached is not None and uid_of(cached) != uid:
            cached = None
        own = self._book.latest.get(uid)
        if cached is None:
            return own
        if own is None or rv_at_least(resource_version(cached), resource_version(own)):
            return cached
        return own

    async def _write_status(self, obj: Obj, status: Obj) -> Obj:
        meta = _meta(obj)
        updated = await self.ctx.client.patch(
            self.resource,
            str(meta["name"]),
            status_merge_patch(obj, status),
            str(meta["namespace"]),
            subresource="status",
        )
        self._book.latest[uid_of(updated)] = updated
        return updated

    async def _refetch(self, obj: Obj) -> Obj:
        """The object from the API server; Abandoned if it is gone, re-created or already terminal."""
        meta = _meta(obj)
        try:
            fresh = await self.ctx.client.get(self.resource, str(meta["name"]), str(meta["namespace"]))
        except NotFound:
            raise Abandoned("the object was deleted") from None
        if uid_of(fresh) != uid_of(obj):
            raise Abandoned("the object was deleted and re-created")
        if phase_of(fresh) in TERMINAL_PHASES:
            message = (fresh.get("status") or {}).get("message") or ""
            raise Abandoned(f"the object became {phase_of(fresh)} elsewhere: {message}".rstrip(": "))
        self._book.latest[uid_of(fresh)] = fresh
        return fresh

    async def _write_guarded(self, key: str, uid: str, status: Obj) -> Obj:
        """Write status on the newest known version; on Conflict re-read once and write again."""
        obj = self._current(key, uid)
        if obj is None:
            raise Abandoned("the object was deleted")
        try:
            return await self._write_status(obj, status)
        except NotFound:
            raise Abandoned("the object was deleted") from None
        except Conflict:
            fresh = await self._refetch(obj)
            return await self._write_status(fresh, status)

    async def _write_outcome(self, key: str, uid: str) -> None:
        outcome = self._book.outcomes.get(uid)
        if outcome is None:
            return
        try:
            await self._write_guarded(key, uid, outcome.status)
        except Abandoned as exc:
            log.info("final status not written", extra={"key": key, "reason": str(exc)})
            self._book.outcomes.pop(uid, None)
            return
        self._book.outcomes.pop(uid, None)
        self._book.finished.add(uid)

    async def _progress_loop(self, key: str, uid: str, state: _ProgressState) -> None:
        interval = max(self.ctx.progress_interval, 0.05)
        while True:
            await self.ctx.clock.sleep(interval)
            value = state.pending()
            if value is None:
                continue
            try:
                await self._write_guarded(key, uid, {"progress": progress_status(*value)})
            except (Abandoned, asyncio.CancelledError):
                raise
            except Exception as exc:
                # Progress is best effort; the next tick tries again with what is newest then.
                log.warning("could not write progress", extra={"key": key, "error": str(exc)})
                continue
            state.written = value

    # -- helpers for subclasses ---------------------------------------------------------------
    async def live_pod(self, namespace: str, name: str, uid: str) -> Obj:
        """The pod the object is about, checked to be the same pod (UID) and on this node."""
        ref = f"{namespace}/{name}"
        pod = self.ctx.pods.get(ref)
        if pod is None or uid_of(pod) != uid:
            # The node's pod cache may lag behind; ask the API server before giving up.
            try:
                pod = await self.ctx.client.get(PODS, name, namespace)
            except NotFound:
                raise OperationFailed(f"pod {ref} (uid {uid}) does not exist") from None
        if uid_of(pod) != uid:
            raise OperationFailed(
                f"pod {ref} was re-created (its uid is now {uid_of(pod)}); this {self.resource.kind} is for "
                f"uid {uid}"
            )
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if node != self.ctx.node_name:
            raise OperationFailed(
                f"pod {ref} (uid {uid}) runs on node {node or '(none: not scheduled)'}, not on "
                f"{self.ctx.node_name}"
            )
        return pod

    async def volume_path(self, pod: Obj, pod_uid: str, volume: str) -> Path:
        """The directory of `volume` of `pod` under the host pods directory."""
        meta = _meta(pod)
        namespace = str(meta.get("namespace") or "")
        claims: dict[tuple[str, str], Obj] = {}
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            claim = vol.get("persistentVolumeClaim") if isinstance(vol, dict) else None
            if vol.get("name") != volume or not isinstance(claim, dict) or not claim.get("claimName"):
                continue
            claim_name = str(claim["claimName"])
            pvc = self.ctx.pvcs.get(f"{namespace}/{claim_name}")
            if pvc is None:
                try:
                    pvc = await self.ctx.client.get(PVCS, claim_name, namespace)
                except NotFound:
                    pvc = None
            if pvc is not None:
                claims[(namespace, claim_name)] = pvc
        try:
            dir_name = volume_directory_name(pod, volume, lambda ns, n: claims.get((ns, n)))
            return await asyncio.to_thread(
                find_volume_path,
                self.ctx.host_pods_dir,
                pod_uid,
                dir_name,
                volume=volume,
                pod=f"{namespace}/{meta.get('name', '')}",
            )
        except VolumePathError as exc:
            raise OperationFailed(str(exc)) from None

    async def repository_key(self, volume_namespace: str, *, fresh: bool = False) -> bytes:
        try:
            return await self.ctx.keys.get(volume_namespace, fresh=fresh)
        except ResticKeyError as exc:
            raise OperationFailed(str(exc)) from None

    async def with_repository(
        self, obj: Obj, identifier: str, volume_namespace: str, action: Callable[[Repository], Awaitable[T]]
    ) -> T:
        """Run `action` on the repository of `volume_namespace`, riding out two passing conditions:

        * the repository is locked by an exclusive operation (the weekly prune, a forget, a key
          rotation): wait and retry, with the reason in `status.message`, for up to `lock_wait`;
        * the key was refused right after a rotation, when the Secret cache still held the old key:
          read the key from the API server and retry once if it changed.
        """
        key = await self.repository_key(volume_namespace)
        deadline = self.ctx.clock.now() + self.ctx.lock_wait
        delay = _LOCK_RETRY_FIRST
        key_refreshed = waited = False
        while True:
            try:
                return await action(Repository(identifier, key, self.ctx.runner))
            except ResticError as exc:
                if exc.reason is Reason.WRONG_PASSWORD and not key_refreshed:
                    key_refreshed = True
                    fresh = await self.repository_key(volume_namespace, fresh=True)
                    if fresh != key:
                        log.info("the cached restic key was out of date; retrying with the current one")
                        key = fresh
                        continue
                if exc.reason is not Reason.LOCKED or self.ctx.clock.now() + delay > deadline:
                    if exc.reason is Reason.LOCKED and waited:
                        waited_for = format_duration(datetime.timedelta(seconds=self.ctx.lock_wait))
                        raise OperationFailed(
                            f"the restic repository {identifier} stayed locked by another operation for "
                            f"{waited_for} (ark restic server --lock-wait): {exc.message}"
                        ) from None
                    raise
                locked_by = exc.message
            waited = True
            log.info("restic repository locked; waiting", extra={"retry_in": delay, "error": locked_by})
            await self._note(obj, f"waiting for the restic repository, locked by another operation: {locked_by}")
            await self.ctx.clock.sleep(delay)
            delay = min(delay * 2, _LOCK_RETRY_MAX)
            await self._note(obj, None)

    async def _note(self, obj: Obj, message: str | None) -> None:
        """Best-effort `status.message` while the object is InProgress."""
        meta = _meta(obj)
        try:
            await self._write_guarded(f"{meta.get('namespace')}/{meta.get('name')}", uid_of(obj), {"message": message})
        except Abandoned:
            raise
        except Exception as exc:
            log.warning("could not write the status message", extra={"error": str(exc)})


def _label(obj: Obj, key: str) -> str:
    return str((_meta(obj).get("labels") or {}).get(key) or "")


def _pod_volume_index(obj: Obj) -> list[str]:
    pod = (obj.get("spec") or {}).get("pod") or {}
    volume = (obj.get("spec") or {}).get("volume")
    if not isinstance(pod, dict) or not pod.get("namespace") or not volume:
        return []
    return [f"{pod['namespace']}/{volume}"]


def incomplete_message(paths: tuple[str, ...], error_count: int) -> str:
    listed = ", ".join(paths[:MAX_LISTED_PATHS])
    more = max(len(paths), error_count) - min(len(paths), MAX_LISTED_PATHS)
    suffix = f" and {more} more" if more > 0 else ""
    return (
        f"restic exited with code 3: the snapshot was saved but some files could not be read: "
        f"{listed or 'restic did not name them'}{suffix}"
    )


class PodVolumeBackupController(PodVolumeOperationController):
    """Backs up the volumes of PodVolumeBackups whose `spec.node` is this node."""

    name = "pod-volume-backup"
    operation = "backup"
    resource = PODVOLUMEBACKUPS

    def __init__(self, ctx: NodeContext, informer: Informer) -> None:
        self.pvc_index = informer.cache.add_label_index(PVC_UID_LABEL)
        informer.cache.add_index(POD_VOLUME_INDEX, _pod_volume_index)
        super().__init__(ctx, informer)

    def is_mine(self, obj: Obj) -> bool:
        return bool((obj.get("spec") or {}).get("node") == self.ctx.node_name)

    async def claimed(self, obj: Obj) -> Obj:
        """Record the pod's owner on PVBs of non-PVC volumes, so later backups can find their parent."""
        if _label(obj, PVC_UID_LABEL) or (_meta(obj).get("annotations") or {}).get(POD_OWNER_ANNOTATION):
            return obj
        pod_ref = (obj.get("spec") or {}).get("pod") or {}
        pod = self.ctx.pods.get(f"{pod_ref.get('namespace')}/{pod_ref.get('name')}")
        if pod is None or uid_of(pod) != pod_ref.get("uid"):
            return obj
        annotations = {POD_OWNER_ANNOTATION: pod_owner(pod)}
        patch = guarded_merge_patch(obj, {"metadata": {"annotations": annotations}})
        meta = _meta(obj)
        try:
            updated = await self.ctx.client.patch(
                self.resource, str(meta["name"]), patch, str(meta["namespace"])
            )
        except Exception as exc:
            # Only parent selection of later backups depends on it.
            log.warning("could not record the pod owner", extra={"error": str(exc)})
            return obj
        self._book.latest[uid_of(updated)] = updated
        return updated

    def parent_snapshot(self, obj: Obj, pod: Obj) -> str | None:
        """Snapshot ID of the latest Completed PodVolumeBackup of the same volume, if any.

        PVC volumes: the same `ark.heptio.com/pvc-uid` label, wherever the pod ran. Other volumes:
        the same pod namespace, volume name and pod owner (controller, or the pod name). Only
        snapshots in the same repository qualify.
        """
        spec = obj.get("spec") or {}
        repo = spec.get("repoIdentifier")
        pvc_uid = _label(obj, PVC_UID_LABEL)
        if pvc_uid:
            candidates = self.cache.by_index(self.pvc_index, pvc_uid)
        else:
            owner = pod_owner(pod)
            key = f"{(spec.get('pod') or {}).get('namespace')}/{spec.get('volume')}"
            candidates = [
                c
                for c in self.cache.by_index(POD_VOLUME_INDEX, key)
                if not _label(c, PVC_UID_LABEL)
                and (_meta(c).get("annotations") or {}).get(POD_OWNER_ANNOTATION) == owner
            ]
        usable = [
            c
            for c in candidates
            if uid_of(c) != uid_of(obj)
            and phase_of(c) == COMPLETED
            and (c.get("status") or {}).get("snapshotID")
            and (c.get("spec") or {}).get("repoIdentifier") == repo
        ]
        if not usable:
            return None
        latest = max(usable, key=_completion_time)
        return str(latest["status"]["snapshotID"])

    async def perform(self, obj: Obj, resumed: bool, progress: ProgressCallback) -> Outcome:
        pvb = PodVolumeBackup.from_obj(obj)
        spec = pvb.spec
        ref = spec.pod
        if ref is None or not ref.namespace or not ref.name or not ref.uid:
            raise OperationFailed("spec.pod must name the pod: namespace, name and uid")
        if not spec.volume:
            raise OperationFailed("spec.volume is empty: name the pod volume to back up")
        if not spec.repo_identifier:
            raise OperationFailed("spec.repoIdentifier is empty: the restic repository is unknown")
        pod = await self.live_pod(ref.namespace, ref.name, ref.uid)
        path = await self.volume_path(pod, ref.uid, spec.volume)
        tags = {
            **restic_tags(
                backup_name=_label(obj, BACKUP_NAME_LABEL),
                backup_uid=_label(obj, BACKUP_UID_LABEL),
                pod_name=ref.name,
                pod_uid=ref.uid,
                pod_namespace=ref.namespace,
                volume=spec.volume,
            ),
            **(spec.tags or {}),
        }
        parent = self.parent_snapshot(obj, pod)
        log.info(
            "running restic backup",
            extra={"path": str(path), "parent": parent or "", "repository": spec.repo_identifier},
        )

        async def backup(repo: Repository) -> BackupSummary:
            try:
                return await repo.backup(path, tags=tags, host=RESTIC_HOST, parent=parent, progress=progress)
            except ResticError as exc:
                if parent is None or exc.reason is not Reason.ID_NOT_FOUND:
                    raise
                # The parent was forgotten (its backup deleted); a backup without one is still correct.
                log.info("parent snapshot not found, backing up without it", extra={"parent": parent})
                return await repo.backup(path, tags=tags, host=RESTIC_HOST, parent=None, progress=progress)

        summary = await self.with_repository(obj, spec.repo_identifier, ref.namespace, backup)
        status: Obj = {
            "phase": PodVolumeBackupPhase.COMPLETED.value,
            "path": str(path),
            "snapshotID": summary.snapshot_id,
            "completionTimestamp": now_rfc3339(self.ctx.clock),
            "progress": progress_status(summary.total_bytes_processed, summary.total_bytes_processed),
            "message": None,
        }
        if summary.incomplete:
            message = incomplete_message(summary.unreadable_paths, summary.error_count)
            status["message"] = message
            return Outcome(status, "partially_failed", "Warning", "Incomplete", message,
                           summary.total_bytes_processed)
        message = (
            f"snapshot {summary.snapshot_id} of {path}: {summary.total_bytes_processed} bytes in "
            f"{summary.total_files_processed} files, {summary.data_added} bytes added"
            + (f", parent {parent}" if parent else "")
        )
        return Outcome(status, "completed", "Normal", "Completed", message, summary.total_bytes_processed)
