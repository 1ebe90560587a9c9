"""Garbage collection: a Backup whose `status.expiration` has passed gets a DeleteBackupRequest.

Each Backup is looked at when it appears or changes, again when it expires, and every
`gcSyncPeriod` (Config) for all of them. An expired Backup gets a request (generateName
`<backup>-`, labels backup-name and backup-uid) unless one for it is still pending; one that is
still New or InProgress waits until it finishes. After a deletion fails, the next request for the
same backup comes one `gcSyncPeriod` later, not at once. In restore-only mode nothing is
requested, and each expired Backup gets an Event saying why it is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arkd.api.constants import BackupPhase
from arkd.api.meta import format_time
from arkd.controllers.deletion import new_delete_backup_request, parse_time, pending_requests
from arkd.controllers.resources import BACKUPS, DELETEBACKUPREQUESTS
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.workqueue import WorkQueue

log = logging.getLogger("arkd.controllers.gc")

Obj = dict[str, Any]

CONFIG_POLL_SECONDS = 5.0
# How long to wait for our own new request to show up in the cache before moving on.
READ_OWN_WRITE_SECONDS = 5.0
UNFINISHED = (BackupPhase.NEW.value, BackupPhase.IN_PROGRESS.value, "")


class GCController:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.backups = ctx.informers.get(BACKUPS, ctx.namespace)
        self.requests = ctx.informers.get(DELETEBACKUPREQUESTS, ctx.namespace)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller("gc", self.queue, self.reconcile, metrics=ctx.controller_metrics, clock=ctx.clock)
        # Backup uid -> clock.now() of the last request this process made for it.
        self._requested: dict[str, float] = {}
        # Backup uids already told (by an Event) that restore-only mode keeps them.
        self._kept: set[str] = set()
        self.backups.add_handler(
            on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new), on_delete=self._forget
        )
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    async def run(self) -> None:
        await asyncio.gather(self.backups.wait_synced(), self.requests.wait_synced())
        resync = asyncio.create_task(self._resync(), name="gc-resync")
        try:
            await self.controller.run()
        finally:
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync

    async def _resync(self) -> None:
        while True:
            config = await self.ctx.config.wait_ready()
            await self.ctx.clock.sleep(self._period(config.seconds("gc_sync_period")))
            self._enqueue_all()

    @staticmethod
    def _period(seconds: float) -> float:
        return max(1.0, seconds)

    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.backups.cache.list():
            self._enqueue(obj)

    def _forget(self, obj: Obj) -> None:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        self._requested.pop(uid, None)
        self._kept.discard(uid)

    async def reconcile(self, key: str) -> Result:
        obj = self.backups.cache.get(key)
        if obj is None:
            return Done()
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        expiration = parse_time(status.get("expiration"))
        if meta.get("deletionTimestamp") or expiration is None:
            return Done()
        config = self.ctx.config.current
        if config is None:
            return RequeueAfter(CONFIG_POLL_SECONDS)
        period = self._period(config.seconds("gc_sync_period"))
        left = (expiration - self.ctx.clock.wall()).total_seconds()
        if left > 0:
            return RequeueAfter(min(left, period))
        name, uid = str(meta["name"]), str(meta.get("uid") or "")
        if status.get("phase") in UNFINISHED:
            return RequeueAfter(period)  # expired before it finished: collect it once it has
        if config.config.restore_only_mode:
            if uid not in self._kept:
                self._kept.add(uid)
                message = (
                    f"the backup expired at {format_time(expiration)} but is kept: the server is in "
                    "restore-only mode (Config restoreOnlyMode: true), which deletes nothing"
                )
                log.info("expired backup kept in restore-only mode", extra={"backup": name})
                self.ctx.recorder.record(obj, "Normal", "ExpiredBackupKept", message)
            return RequeueAfter(period)
        self._kept.discard(uid)
        if pending_requests(self.requests.cache.list(), name):
            return RequeueAfter(period)
        last = self._requested.get(uid)
        if last is not None and self.ctx.clock.now() - last < period:
            return RequeueAfter(period - (self.ctx.clock.now() - last))
        created = await self.ctx.client.create(
            DELETEBACKUPREQUESTS, new_delete_backup_request(name, uid, self.ctx.namespace), self.ctx.namespace
        )
        self._requested[uid] = self.ctx.clock.now()
        request = str(created["metadata"]["name"])
        log.info("expired backup: deletion requested", extra={"backup": name, "request": request})
        self.ctx.recorder.record(
            obj,
            "Normal",
            "Expired",
            f"the backup expired at {format_time(expiration)}; DeleteBackupRequest {request} will delete it",
        )
        # So a quick second look at this backup sees the request as pending.
        await self.requests.cache.wait_for(object_key(created), lambda _o: True, READ_OWN_WRITE_SECONDS)
        return RequeueAfter(period)
