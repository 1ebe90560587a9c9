"""The DownloadRequest controller: signed URLs for a backup's log or contents, a restore's log or results.

A New request gets the object key of its target (Ark 0.9's layout; a restore's files live under
its backup's directory), a URL valid for 10 minutes (`ObjectStore.presign_get`; the local store
gives a `file://` URL), and phase Processed with `downloadURL` and `expiration`. When the target
or its file does not exist, the request is Processed without a URL and a Warning Event on it says
what was missing (the kind has no message field); the CLI reads that Event. Every request is
deleted once its expiration has passed; all are looked at again every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any

from arkd.api.constants import DownloadRequestPhase, DownloadTargetKind
from arkd.api.meta import format_time
from arkd.controllers.deletion import parse_time
from arkd.controllers.resources import DOWNLOADREQUESTS, RESTORES
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.errors import NotFound
from arkd.kube.patch import status_merge_patch
from arkd.kube.workqueue import WorkQueue
from arkd.storage import ObjectStore, StorageError, StorageUnavailable
from arkd.storage.layout import backup_log_key, backup_tarball_key, restore_log_key, restore_results_key

log = logging.getLogger("arkd.controllers.download")

Obj = dict[str, Any]

URL_TTL = datetime.timedelta(minutes=10)
RESYNC_SECONDS = 60.0
CONFIG_POLL_SECONDS = 5.0
# The Event explaining a failure must exist before the CLI sees the phase change and looks for it.
EVENT_FLUSH_SECONDS = 5.0
FAILED_REASON = "DownloadFailed"


class DownloadTargetError(ValueError):
    """The target cannot be downloaded; the message says why."""


def download_key(kind: str, name: str, restore_backup: str | None = None) -> str:
    """The object key of a download target; restore kinds need the restore's backup name."""
    try:
        target = DownloadTargetKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in DownloadTargetKind)
        raise DownloadTargetError(f"unknown download target kind {kind!r}; use one of {known}") from None
    try:
        if target == DownloadTargetKind.BACKUP_LOG:
            return backup_log_key(name)
        if target == DownloadTargetKind.BACKUP_CONTENTS:
            return backup_tarball_key(name)
        if not restore_backup:
            raise DownloadTargetError(f"restore {name} names no backup (spec.backupName), so it has no files")
        if target == DownloadTargetKind.RESTORE_LOG:
            return restore_log_key(restore_backup, name)
        return restore_results_key(restore_backup, name)
    except ValueError as exc:
        if isinstance(exc, DownloadTargetError):
            raise
        raise DownloadTargetError(str(exc)) from None


def is_restore_kind(kind: str) -> bool:
    return kind in (DownloadTargetKind.RESTORE_LOG.value, DownloadTargetKind.RESTORE_RESULTS.value)


class DownloadRequestController:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.requests = ctx.informers.get(DOWNLOADREQUESTS, ctx.namespace)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "download-request",
            self.queue,
            self.reconcile,
            workers=2,
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self.requests.add_handler(on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new))

    async def run(self) -> None:
        await self.requests.wait_synced()
        resync = asyncio.create_task(self._resync(), name="download-request-resync")
        try:
            await self.controller.run()
        finally:
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync

    async def _resync(self) -> None:
        while True:
            await self.ctx.clock.sleep(RESYNC_SECONDS)
            for obj in self.requests.cache.list():
                self._enqueue(obj)

    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    async def reconcile(self, key: str) -> Result:
        obj = self.requests.cache.get(key)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return Done()
        status = obj.get("status") or {}
        if (status.get("phase") or DownloadRequestPhase.NEW) == DownloadRequestPhase.PROCESSED:
            return await self._expire(obj)
        config = self.ctx.config.current
        if config is None:
            return RequeueAfter(CONFIG_POLL_SECONDS)
        target = (obj.get("spec") or {}).get("target") or {}
        kind, name = str(target.get("kind") or ""), str(target.get("name") or "")
        expiration = self.ctx.clock.wall().replace(microsecond=0) + URL_TTL
        try:
            url = await self._url(config.store, kind, name)
        except DownloadTargetError as exc:
            message = str(exc)
            log.warning("download request failed", extra={"request": key, "kind": kind, "error": message})
            self.ctx.recorder.record(obj, "Warning", FAILED_REASON, message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.recorder.flush(), EVENT_FLUSH_SECONDS)
            url = None
        updated = await self.ctx.client.patch(
            DOWNLOADREQUESTS,
            str(obj["metadata"]["name"]),
            status_merge_patch(
                obj,
                {
                    "phase": DownloadRequestPhase.PROCESSED.value,
                    "downloadURL": url,
                    "expiration": format_time(expiration),
                },
            ),
            self.ctx.namespace,
            subresource="status",
        )
        if url is not None:
            log.info("download URL issued", extra={"request": key, "kind": kind, "target": name})
        return await self._expire(updated)

    async def _url(self, store: ObjectStore, kind: str, name: str) -> str:
        restore_backup: str | None = None
        if is_restore_kind(kind):
            try:
                restore = await self.ctx.client.get(RESTORES, name, self.ctx.namespace)
            except NotFound:
                raise DownloadTargetError(f"restore {name} not found in namespace {self.ctx.namespace}") from None
            restore_backup = str((restore.get("spec") or {}).get("backupName") or "") or None
        key = download_key(kind, name, restore_backup)
        try:
            if not await store.exists(key):
                raise DownloadTargetError(f"{key} does not exist in {store.location}")
            return await store.presign_get(key, int(URL_TTL.total_seconds()))
        except StorageUnavailable:
            raise  # worth retrying
        except StorageError as exc:
            raise DownloadTargetError(f"{key} cannot be read from {store.location}: {exc}") from None

    async def _expire(self, obj: Obj) -> Result:
        expiration = parse_time((obj.get("status") or {}).get("expiration"))
        if expiration is not None:
            left = (expiration - self.ctx.clock.wall()).total_seconds()
            if left > 0:
                return RequeueAfter(left)
        with contextlib.suppress(NotFound):
            await self.ctx.client.delete(DOWNLOADREQUESTS, str(obj["metadata"]["name"]), self.ctx.namespace)
        log.info("expired download request deleted", extra={"request": object_key(obj)})
        return Done()
