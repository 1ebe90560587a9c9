"""The skeleton Backups and Restores share: validate, claim, run as a supervised task, resume.

Reconcile reads the object from the shared informer cache:
- New (or ""): the subclass validates it (FailedValidation with `validationErrors`, see
  `fail_validation`) or claims it with a resourceVersion-guarded status patch to InProgress and
  calls `start`; the worker returns at once.
- InProgress without a running task (a restarted server, or a run that crashed): run it again;
  the runs are written to be safe to repeat.
- Any other phase: nothing.
Runs are keyed by the object's UID, so one object never has two runs, and a run whose object is
deleted is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from arkd.backup.filters import FilterValidationError
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key, resource_version, rv_at_least
from arkd.kube.controller import Controller, Done, Result
from arkd.kube.discovery import Discover, discover
from arkd.kube.informer import Informer
from arkd.kube.patch import status_merge_patch
from arkd.kube.resource import Resource
from arkd.kube.tasks import TaskSupervisor
from arkd.kube.workqueue import WorkQueue

Obj = dict[str, Any]

NEW = "New"
IN_PROGRESS = "InProgress"
CONFIG_POLL_SECONDS = 5.0
# Discovery results are reused this long for validation; an unknown name triggers a fresh look.
DISCOVERY_TTL_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 30.0
UNKNOWN_RESOURCE = "unknown resource"


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class Run(Protocol):
    """One execution of a claimed object; `final_resource_version` is set once it wrote the final status."""

    final_resource_version: str | None

    async def execute(self) -> None: ...


class ClaimedRunController:
    kind: ClassVar[str]  # "Backup", "Restore": events, log lines, the controller's name
    resource: ClassVar[Resource]

    def __init__(
        self,
        ctx: ServerContext,
        *,
        workers: int,
        also_synced: Sequence[Informer] = (),
        discover_fn: Discover = discover,
    ) -> None:
        self.ctx = ctx
        self.informer = ctx.informers.get(self.resource, ctx.namespace)
        self.log = logging.getLogger(f"arkd.controllers.{self.kind.lower()}")
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            self.kind.lower(),
            self.queue,
            self.reconcile,
            workers=max(1, workers),
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self.tasks = TaskSupervisor(self.kind.lower())
        self._also_synced = tuple(also_synced)
        self._discover = discover_fn
        self._resources: list[Resource] | None = None
        self._resources_at = 0.0
        # UID -> resourceVersion of the final status a run wrote; older cached copies are stale.
        self._finished: dict[str, str] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        self.informer.add_handler(
            on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new), on_delete=self._on_delete
        )
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    # -- subclass hooks --------------------------------------------------------------------------------
    def phase_of(self, obj: Obj) -> str:
        raise NotImplementedError

    async def new(self, obj: Obj) -> Result:
        """Validate and claim (then `start(claimed, resumed=False)`), or fail validation."""
        raise NotImplementedError

    def make_run(self, obj: Obj, *, resumed: bool) -> Run:
        raise NotImplementedError

    def count_attempt(self, obj: Obj) -> None:
        """Metrics for a run that starts."""

    def count_validation_failure(self, obj: Obj) -> None:
        """Metrics for an object that failed validation."""

    # -- lifecycle -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the workers until cancelled; runs in flight are cancelled then (a new server resumes them)."""
        await asyncio.gather(self.informer.wait_synced(), *(i.wait_synced() for i in self._also_synced))
        try:
            await self.controller.run()
        finally:
            await self.tasks.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)

    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.informer.cache.list():
            self._enqueue(obj)

    def _on_delete(self, obj: Obj) -> None:
        uid = str(_meta(obj).get("uid") or "")
        self._finished.pop(uid, None)
        if self.tasks.running(uid):
            # Nobody wants the result any more; what the run created goes with it (owner references).
            self.log.info(f"{self.kind.lower()} deleted while running; stopping it", extra={"key": object_key(obj)})
            task = asyncio.create_task(self.tasks.cancel(uid))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    async def reconcile(self, key: str) -> Result:
        obj = self.informer.cache.get(key)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return Done()
        uid = str(_meta(obj).get("uid") or "")
        phase = self.phase_of(obj)
        if phase == NEW:
            return await self.new(obj)
        if phase == IN_PROGRESS:
            if self.tasks.running(uid):
                return Done()
            final = self._finished.get(uid)
            if final is not None and not rv_at_least(resource_version(obj), final):
                return Done()  # the cache has not caught up with the run's final write yet
            self.start(obj, resumed=True)
            return Done()
        self._finished.pop(uid, None)
        return Done()

    def start(self, obj: Obj, *, resumed: bool) -> None:
        key = object_key(obj)
        uid = str(_meta(obj).get("uid") or "")
        run = self.make_run(obj, resumed=resumed)

        def exited(_uid: str) -> None:
            if run.final_resource_version is not None:
                self._finished[uid] = run.final_resource_version
                self.queue.add(key)
            else:
                # Crashed, cancelled, failed to record its outcome, or its object went away: look
                # again, with backoff.
                self.queue.add_rate_limited(key)

        if self.tasks.start(uid, run.execute, on_exit=exited):
            self.count_attempt(obj)
            if resumed:
                self.log.info(f"resuming {self.kind.lower()}", extra={"key": key})
                self.ctx.recorder.record(
                    obj, "Normal", f"{self.kind}Resumed", f"{self.kind.lower()} resumed after a restart"
                )

    # -- validation helpers ----------------------------------------------------------------------------
    async def plan_errors(self, plan: Callable[[list[Resource]], object]) -> list[str]:
        """What `plan(resources)` refuses (FilterValidationError), on recent discovery results; a name
        it does not know makes it look again, in case a CRD was installed since."""
        fresh = self._resources is None or self.ctx.clock.now() - self._resources_at > DISCOVERY_TTL_SECONDS
        try:
            plan(await self._discovered(refresh=fresh))
        except FilterValidationError as exc:
            if fresh or not any(e.startswith(UNKNOWN_RESOURCE) for e in exc.errors):
                return list(exc.errors)
            try:
                plan(await self._discovered(refresh=True))
            except FilterValidationError as again:
                return list(again.errors)
        return []

    async def _discovered(self, *, refresh: bool) -> list[Resource]:
        if refresh or self._resources is None:
            self._resources = await self._discover(self.ctx.client)
            self._resources_at = self.ctx.clock.now()
        return self._resources

    async def claim(self, obj: Obj, status: Obj) -> Obj:
        """The resourceVersion-guarded status patch: a stale cache copy gets 409 (requeued by the
        harness), so no object runs twice."""
        return await self.ctx.client.patch(
            self.resource, str(_meta(obj)["name"]), status_merge_patch(obj, status), self.ctx.namespace,
            subresource="status",
        )

    async def fail_validation(self, obj: Obj, errors: list[str]) -> Result:
        updated = await self.claim(obj, {"phase": "FailedValidation", "validationErrors": errors})
        self.log.warning(f"{self.kind.lower()} failed validation", extra={"errors": errors})
        self.count_validation_failure(obj)
        self.ctx.recorder.record(updated, "Warning", "FailedValidation", "; ".join(errors))
        return Done()
