"""The Restore controller of `ark server`: validate, claim, run, resume.

Reconcile reads the Restore from the shared informer cache:
- New (or ""): validate (backupName names a Completed or PartiallyFailed Backup; namespace and
  resource includes/excludes valid and resolvable; no explicitly included non-restorable resource;
  a valid labelSelector and namespaceMapping) -> FailedValidation with `validationErrors`, or claim
  it with a resourceVersion-guarded status patch to InProgress and start the run as a supervised
  task keyed by the Restore's UID; the worker returns at once.
- InProgress without a running task (a restarted server, or a run that crashed): run it again.
  Objects that exist are left alone and PodVolumeRestores are reused, so a second run is safe.
- Completed, PartiallyFailed, Failed, FailedValidation: nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arkd.api.constants import RESTORE_UID_LABEL, BackupPhase, RestorePhase
from arkd.api.meta import format_time
from arkd.backup.filters import FilterValidationError
from arkd.controllers.resources import BACKUPS, PODVOLUMERESTORES, RESTORES
from arkd.controllers.restore_run import RestoreRun, RunDeps, plan_restore, restore_phase
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key, resource_version, rv_at_least
from arkd.kube.client import KubeClient
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.discovery import discover
from arkd.kube.errors import NotFound
from arkd.kube.patch import status_merge_patch
from arkd.kube.resource import Resource
from arkd.kube.tasks import TaskSupervisor
from arkd.kube.workqueue import WorkQueue
from arkd.podvolume.tracker import PodVolumeTracker

log = logging.getLogger("arkd.controllers.restore")

Obj = dict[str, Any]

CONFIG_POLL_SECONDS = 5.0
# Discovery results are reused this long for validation; an unknown name triggers a fresh look.
DISCOVERY_TTL_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 30.0
UNKNOWN_RESOURCE = "unknown resource"
RESTORABLE_BACKUP_PHASES = (BackupPhase.COMPLETED.value, BackupPhase.PARTIALLY_FAILED.value)


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class RestoreController:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.restores = ctx.informers.get(RESTORES, ctx.namespace)
        self.backups = ctx.informers.get(BACKUPS, ctx.namespace)
        self.pvrs = ctx.informers.get(PODVOLUMERESTORES, ctx.namespace)
        self.tracker = PodVolumeTracker(self.pvrs, RESTORE_UID_LABEL, ctx.clock)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "restore",
            self.queue,
            self.reconcile,
            workers=max(1, ctx.settings.restore_workers),
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self.tasks = TaskSupervisor("restore")
        self._deps = RunDeps(ctx, self.restores, self.backups, self.tracker)
        self._resources: list[Resource] | None = None
        self._resources_at = 0.0
        # Restore UID -> resourceVersion of the final status a run wrote; older cached copies are stale.
        self._finished: dict[str, str] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        self.restores.add_handler(
            on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new), on_delete=self._on_delete
        )
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    async def run(self) -> None:
        """Run the workers until cancelled; runs in flight are cancelled then (a new server resumes them)."""
        await asyncio.gather(self.restores.wait_synced(), self.backups.wait_synced(), self.pvrs.wait_synced())
        try:
            await self.controller.run()
        finally:
            await self.tasks.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)

    # -- event handlers --------------------------------------------------------------------------------
    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.restores.cache.list():
            self._enqueue(obj)

    def _on_delete(self, obj: Obj) -> None:
        uid = str(_meta(obj).get("uid") or "")
        self._finished.pop(uid, None)
        if self.tasks.running(uid):
            # Nobody wants the result any more; its PodVolumeRestores go with it (owner references).
            log.info("restore deleted while running; stopping it", extra={"key": object_key(obj)})
            task = asyncio.create_task(self.tasks.cancel(uid))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    # -- reconcile -------------------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Result:
        obj = self.restores.cache.get(key)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return Done()
        uid = str(_meta(obj).get("uid") or "")
        phase = restore_phase(obj)
        if phase == RestorePhase.NEW:
            return await self._new(obj)
        if phase == RestorePhase.IN_PROGRESS:
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
        if self.ctx.config.current is None:
            log.info("waiting for a valid Config before validating restores")
            return RequeueAfter(CONFIG_POLL_SECONDS)
        errors = await self.validate(obj)
        if errors:
            return await self._fail_validation(obj, errors)
        # The claim: a stale cache copy gets 409 (requeued by the harness), so no restore runs twice.
        claimed = await self.ctx.client.patch(
            RESTORES,
            str(_meta(obj)["name"]),
            status_merge_patch(
                obj,
                {
                    "phase": RestorePhase.IN_PROGRESS.value,
                    "startTimestamp": format_time(self.ctx.clock.wall().replace(microsecond=0)),
                },
            ),
            self.ctx.namespace,
            subresource="status",
        )
        backup = (obj.get("spec") or {}).get("backupName")
        log.info("restore claimed", extra={"backup": backup})
        self.ctx.recorder.record(claimed, "Normal", "RestoreStarted", f"restoring from backup {backup}")
        self._start(claimed, resumed=False)
        return Done()

    async def validate(self, obj: Obj) -> list[str]:
        """Every reason `obj` cannot run, as messages that say what to do; empty when it can."""
        errors: list[str] = []
        backup_name = (obj.get("spec") or {}).get("backupName")
        if backup_name:
            errors.extend(await self._backup_errors(str(backup_name)))
        fresh = self._resources is None or self.ctx.clock.now() - self._resources_at > DISCOVERY_TTL_SECONDS
        try:
            plan_restore(obj, await self._discovered(refresh=fresh))
        except FilterValidationError as exc:
            spec_errors = exc.errors
            if not fresh and any(e.startswith(UNKNOWN_RESOURCE) for e in spec_errors):
                # Perhaps a CRD installed since the last discovery: look again before refusing.
                try:
                    plan_restore(obj, await self._discovered(refresh=True))
                    spec_errors = []
                except FilterValidationError as again:
                    spec_errors = again.errors
            errors.extend(spec_errors)
        return errors

    async def _backup_errors(self, name: str) -> list[str]:
        namespace = self.ctx.namespace
        backup = self.backups.cache.get(f"{namespace}/{name}")
        if backup is None:
            try:  # the cache may not have caught up with a Backup created a moment ago
                backup = await self.ctx.client.get(BACKUPS, name, namespace)
            except NotFound:
                return [
                    f"backup {name} not found in namespace {namespace}: `ark backup get` lists the backups "
                    "(backups in object storage appear after the next backup sync)"
                ]
        phase = str((backup.get("status") or {}).get("phase") or BackupPhase.NEW.value)
        if phase not in RESTORABLE_BACKUP_PHASES:
            return [
                f"backup {name} is {phase}: only a Completed or PartiallyFailed backup can be restored"
                + ("; wait for it to finish and create the restore again" if phase in ("New", "InProgress") else "")
            ]
        return []

    async def _discovered(self, *, refresh: bool) -> list[Resource]:
        if refresh or self._resources is None:
            client: KubeClient = self.ctx.client
            self._resources = await discover(client)
            self._resources_at = self.ctx.clock.now()
        return self._resources

    async def _fail_validation(self, obj: Obj, errors: list[str]) -> Result:
        status = {"phase": RestorePhase.FAILED_VALIDATION.value, "validationErrors": errors}
        updated = await self.ctx.client.patch(
            RESTORES, str(_meta(obj)["name"]), status_merge_patch(obj, status), self.ctx.namespace,
            subresource="status",
        )
        log.warning("restore failed validation", extra={"errors": errors})
        self.ctx.metrics.restore_validation_failure.inc()
        self.ctx.recorder.record(updated, "Warning", "FailedValidation", "; ".join(errors))
        return Done()

    # -- runs ------------------------------------------------------------------------------------------
    def _start(self, obj: Obj, *, resumed: bool) -> None:
        key = object_key(obj)
        uid = str(_meta(obj).get("uid") or "")
        run = RestoreRun(self._deps, obj, resumed=resumed)

        def exited(_uid: str) -> None:
            if run.final_resource_version is not None:
                self._finished[uid] = run.final_resource_version
                self.queue.add(key)
            else:
                # Cancelled, failed to record its outcome, or its Restore went away: look again, with backoff.
                self.queue.add_rate_limited(key)

        if self.tasks.start(uid, run.execute, on_exit=exited):
            self.ctx.metrics.restore_attempt.inc()
            if resumed:
                log.info("resuming restore", extra={"key": key})
                self.ctx.recorder.record(obj, "Normal", "RestoreResumed", "restore resumed after a restart")
