"""The Backup controller of `ark server`: validate, claim, run, resume.

Reconcile reads the Backup from the shared informer cache:
- New (or ""): validate the spec against the Config and the cluster's resources -> FailedValidation
  with `validationErrors`, or claim it with a resourceVersion-guarded status patch to InProgress
  (`startTimestamp`, `expiration` when ttl > 0, `version: 1`) and start the run as a supervised
  task keyed by the Backup's UID; the worker returns at once.
- InProgress without a running task (a restarted server, or a run that crashed): run it again; the
  run reuses the PodVolumeBackups it made before (deterministic names), reading their outcome from
  the cluster.
- Completed, PartiallyFailed, Failed, FailedValidation, Deleting: nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from arkd.api.constants import BACKUP_UID_LABEL, SYNCED_FROM_ANNOTATION, BackupPhase
from arkd.api.duration import parse_duration
from arkd.api.meta import format_time
from arkd.backup.filters import FilterValidationError
from arkd.controllers.backup_run import BackupRun, Discover, RunDeps, plan_backup, schedule_of
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import BACKUPS, PODVOLUMEBACKUPS, RESTICREPOSITORIES
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key, resource_version, rv_at_least
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.discovery import discover
from arkd.kube.patch import status_merge_patch
from arkd.kube.resource import Resource
from arkd.kube.tasks import TaskSupervisor
from arkd.kube.workqueue import WorkQueue
from arkd.podvolume.tracker import PodVolumeTracker
from arkd.storage import StorageError
from arkd.storage.layout import backup_metadata_key

log = logging.getLogger("arkd.controllers.backup")

Obj = dict[str, Any]

BACKUP_FORMAT_VERSION = 1
CONFIG_POLL_SECONDS = 5.0
# Discovery results are reused this long for validation; an unknown name triggers a fresh look.
DISCOVERY_TTL_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 30.0
UNKNOWN_RESOURCE = "unknown resource"


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def phase_of(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or BackupPhase.NEW.value)


def _now(ctx: ServerContext) -> datetime.datetime:
    return ctx.clock.wall().replace(microsecond=0)


class BackupController:
    def __init__(self, ctx: ServerContext, *, discover_fn: Discover = discover) -> None:
        self.ctx = ctx
        self.backups = ctx.informers.get(BACKUPS, ctx.namespace)
        self.pvbs = ctx.informers.get(PODVOLUMEBACKUPS, ctx.namespace)
        self.repositories = ctx.informers.get(RESTICREPOSITORIES, ctx.namespace)
        self.tracker = PodVolumeTracker(self.pvbs, BACKUP_UID_LABEL, ctx.clock)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "backup",
            self.queue,
            self.reconcile,
            workers=max(1, ctx.settings.backup_workers),
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self.tasks = TaskSupervisor("backup")
        self._discover = discover_fn
        self._deps = RunDeps(ctx, self.backups, self.repositories, self.tracker, discover_fn)
        self._resources: list[Resource] | None = None
        self._resources_at = 0.0
        # Backup UID -> resourceVersion of the final status a run wrote; older cached copies are stale.
        self._finished: dict[str, str] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        self.backups.add_handler(
            on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new), on_delete=self._on_delete
        )
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    async def run(self) -> None:
        """Run the workers until cancelled; runs in flight are cancelled then (a new server resumes them)."""
        await asyncio.gather(
            self.backups.wait_synced(), self.pvbs.wait_synced(), self.repositories.wait_synced()
        )
        try:
            await self.controller.run()
        finally:
            await self.tasks.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)

    # -- event handlers --------------------------------------------------------------------------------
    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.backups.cache.list():
            self._enqueue(obj)

    def _on_delete(self, obj: Obj) -> None:
        uid = str(_meta(obj).get("uid") or "")
        self._finished.pop(uid, None)
        if self.tasks.running(uid):
            # Nobody wants the result any more; its PodVolumeBackups go with it (owner references).
            log.info("backup deleted while running; stopping it", extra={"key": object_key(obj)})
            task = asyncio.create_task(self.tasks.cancel(uid))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    # -- reconcile -------------------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Result:
        obj = self.backups.cache.get(key)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return Done()
        uid = str(_meta(obj).get("uid") or "")
        phase = phase_of(obj)
        if phase == BackupPhase.NEW:
            return await self._new(obj)
        if phase == BackupPhase.IN_PROGRESS:
            if self.tasks.running(uid):
                return Done()
            final = self._finished.get(uid)
            if final is not None and not rv_at_least(resource_version(obj), final):
                return Done()  # the cache has not caught up with the run's final write yet
            self._start(obj, resumed=True)
            return Done()
        self._finished.pop(uid, None)
        return Done()

    async def _new(self, obj: Obj) -> Result:
        if SYNCED_FROM_ANNOTATION in (_meta(obj).get("annotations") or {}):
            return Done()  # backup sync writes its stored status next; it is not ours to run
        config = self.ctx.config.current
        if config is None:
            log.info("waiting for a valid Config before validating backups")
            return RequeueAfter(CONFIG_POLL_SECONDS)
        errors = await self._validate(obj, config)
        if errors:
            return await self._fail_validation(obj, errors)
        plan_ttl = _ttl(obj)
        now = _now(self.ctx)
        status: Obj = {
            "phase": BackupPhase.IN_PROGRESS.value,
            "startTimestamp": format_time(now),
            "version": BACKUP_FORMAT_VERSION,
        }
        if plan_ttl > datetime.timedelta(0):
            status["expiration"] = format_time(now + plan_ttl)
        # The claim: a stale cache copy gets 409 (requeued by the harness), so no backup runs twice.
        claimed = await self.ctx.client.patch(
            BACKUPS, str(_meta(obj)["name"]), status_merge_patch(obj, status), self.ctx.namespace,
            subresource="status",
        )
        log.info("backup claimed", extra={"expiration": status.get("expiration")})
        self.ctx.recorder.record(claimed, "Normal", "BackupStarted", "backup started")
        self._start(claimed, resumed=False)
        return Done()

    async def _validate(self, obj: Obj, config: ArkConfig) -> list[str]:
        errors: list[str] = []
        if config.config.restore_only_mode:
            errors.append(
                "the server is in restore-only mode (Config restoreOnlyMode: true), so it takes no backups; "
                "set restoreOnlyMode to false in Config default to back up"
            )
        fresh = self._resources is None or self.ctx.clock.now() - self._resources_at > DISCOVERY_TTL_SECONDS
        try:
            plan_backup(obj, await self._discovered(refresh=fresh))
        except FilterValidationError as exc:
            spec_errors = exc.errors
            if not fresh and any(e.startswith(UNKNOWN_RESOURCE) for e in spec_errors):
                # Perhaps a CRD installed since the last discovery: look again before refusing.
                try:
                    plan_backup(obj, await self._discovered(refresh=True))
                    spec_errors = []
                except FilterValidationError as again:
                    spec_errors = again.errors
            errors.extend(spec_errors)
        name = str(_meta(obj).get("name"))
        try:
            if await config.store.exists(backup_metadata_key(name)):
                errors.append(
                    f"a backup named {name!r} already exists in object storage ({config.store.location}); "
                    "choose another name, or delete the old one with `ark backup delete`"
                )
        except StorageError as exc:
            log.warning("cannot check object storage for an existing backup", extra={"error": str(exc)})
        return errors

    async def _discovered(self, *, refresh: bool) -> list[Resource]:
        if refresh or self._resources is None:
            self._resources = await self._discover(self.ctx.client)
            self._resources_at = self.ctx.clock.now()
        return self._resources

    async def _fail_validation(self, obj: Obj, errors: list[str]) -> Result:
        status = {"phase": BackupPhase.FAILED_VALIDATION.value, "validationErrors": errors}
        updated = await self.ctx.client.patch(
            BACKUPS, str(_meta(obj)["name"]), status_merge_patch(obj, status), self.ctx.namespace,
            subresource="status",
        )
        log.warning("backup failed validation", extra={"errors": errors})
        self.ctx.metrics.backup_validation_failure.labels(schedule=schedule_of(obj)).inc()
        self.ctx.recorder.record(updated, "Warning", "FailedValidation", "; ".join(errors))
        return Done()

    # -- runs ------------------------------------------------------------------------------------------
    def _start(self, obj: Obj, *, resumed: bool) -> None:
        key = object_key(obj)
        uid = str(_meta(obj).get("uid") or "")
        run = BackupRun(self._deps, obj, resumed=resumed)

        def exited(_uid: str) -> None:
            if run.final_resource_version is not None:
                self._finished[uid] = run.final_resource_version
                self.queue.add(key)
            else:
                # Crashed, cancelled, or its Backup went away: look again, with backoff.
                self.queue.add_rate_limited(key)

        if self.tasks.start(uid, run.execute, on_exit=exited):
            self.ctx.metrics.backup_attempt.labels(schedule=schedule_of(obj)).inc()
            if resumed:
                log.info("resuming backup", extra={"key": key})
                self.ctx.recorder.record(obj, "Normal", "BackupResumed", "backup resumed after a restart")


def _ttl(obj: Obj) -> datetime.timedelta:
    ttl = (obj.get("spec") or {}).get("ttl")
    return parse_duration(ttl) if isinstance(ttl, str) and ttl else datetime.timedelta(0)
