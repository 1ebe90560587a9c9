"""Backup sync: Backups found in object storage but missing from the cluster are created.

At start-up and every `backupSyncPeriod` (Config), each top-level directory of the backup bucket
whose `<dir>/ark-backup.json` exists is a backup (Ark 0.9's rule, so buckets Ark wrote sync too).
A missing Backup is created in the server namespace from the stored object: its spec, labels and
annotations, then its status through the status subresource; uid, resourceVersion,
creationTimestamp, ownerReferences and Ark 0.8's GC finalizer are dropped. A backup with a pending
DeleteBackupRequest is skipped, so a deletion in flight cannot be undone; a completed deletion
removed the files first, so nothing brings the backup back.

The other direction is reported, not repaired: a Completed, PartiallyFailed or Failed Backup with
no files left in the bucket gets a Warning Event `BackupFilesMissing` and a log line (once per
backup per process); its phase is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from pydantic import ValidationError

from arkd.api.backup import Backup
from arkd.api.constants import LEGACY_GC_FINALIZER, SYNCED_FROM_ANNOTATION, BackupPhase
from arkd.controllers.config import ArkConfig
from arkd.controllers.deletion import pending_requests
from arkd.controllers.resources import BACKUPS, DELETEBACKUPREQUESTS
from arkd.controllers.runtime import ServerContext
from arkd.kube.controller import Controller, RequeueAfter, Result
from arkd.kube.errors import AlreadyExists, ApiError
from arkd.kube.patch import status_merge_patch
from arkd.kube.workqueue import WorkQueue
from arkd.storage import ObjectNotFound, ObjectStore, StorageError
from arkd.storage.layout import backup_metadata_key, backup_names_from_prefixes, backup_prefix

log = logging.getLogger("arkd.controllers.sync")

Obj = dict[str, Any]

SYNC_KEY = "backup-sync"
TERMINAL = (BackupPhase.COMPLETED.value, BackupPhase.PARTIALLY_FAILED.value, BackupPhase.FAILED.value)
KEPT_METADATA = ("labels", "annotations")


def _drop_nulls(value: Any) -> Any:
    # Go writes null for unset fields; absent says the same and suits any schema.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def backup_from_storage(stored: Obj, namespace: str) -> tuple[Obj, Obj]:
    """The Backup to create from a stored `ark-backup.json`, and the status to give it after."""
    meta = stored.get("metadata") or {}
    new_meta: Obj = {"name": meta.get("name"), "namespace": namespace}
    for field in KEPT_METADATA:
        if meta.get(field):
            new_meta[field] = meta[field]
    finalizers = [f for f in meta.get("finalizers") or [] if f != LEGACY_GC_FINALIZER]
    if finalizers:
        new_meta["finalizers"] = finalizers
    body = {
        "apiVersion": stored.get("apiVersion"),
        "kind": stored.get("kind"),
        "metadata": new_meta,
        "spec": _drop_nulls(stored.get("spec") or {}),
    }
    return body, _drop_nulls(stored.get("status") or {})


class BackupSyncController:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.backups = ctx.informers.get(BACKUPS, ctx.namespace)
        self.requests = ctx.informers.get(DELETEBACKUPREQUESTS, ctx.namespace)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "backup-sync", self.queue, self.reconcile, metrics=ctx.controller_metrics, clock=ctx.clock
        )
        # Backup uids already reported as missing from storage, and directories already reported
        # as unreadable (by name and the metadata's content), so each is said once.
        self._missing_reported: set[str] = set()
        self._bad_reported: set[tuple[str, int]] = set()
        # A changed Config may name another bucket: sync it now rather than a period later.
        ctx.config.subscribe(lambda _config: self.queue.add(SYNC_KEY))

    async def run(self) -> None:
        await asyncio.gather(self.backups.wait_synced(), self.requests.wait_synced())
        self.queue.add(SYNC_KEY)
        await self.controller.run()

    async def reconcile(self, key: str) -> Result:
        config = await self.ctx.config.wait_ready()
        await self.sync(config)
        return RequeueAfter(max(1.0, config.seconds("backup_sync_period")))

    async def sync(self, config: ArkConfig) -> int:
        """One pass; returns how many Backups were created. Storage failures raise (retried)."""
        store = config.store
        names = backup_names_from_prefixes(await store.list_common_prefixes("", "/"))
        in_store = set(names)
        created = 0
        for name in names:
            cached = self.backups.cache.get(f"{self.ctx.namespace}/{name}")
            if cached is not None:
                await self._finish_interrupted(cached)
                continue
            if pending_requests(self.requests.cache.list(), name):
                continue
            if await self._sync_one(store, name):
                created += 1
        await self._report_missing(in_store, config)
        if created:
            log.info("synced backups from object storage", extra={"created": created, "location": store.location})
        return created

    async def _finish_interrupted(self, obj: Obj) -> None:
        """A synced Backup still New lost its status write (a crash in between): remove it to sync again."""
        meta = obj.get("metadata") or {}
        if SYNCED_FROM_ANNOTATION not in (meta.get("annotations") or {}):
            return
        if (obj.get("status") or {}).get("phase") not in (None, "", BackupPhase.NEW.value):
            return
        log.warning("removing a synced backup whose status was never written", extra={"backup": meta.get("name")})
        await self.ctx.client.delete(BACKUPS, str(meta["name"]), self.ctx.namespace, preconditions_uid=meta.get("uid"))

    async def _sync_one(self, store: ObjectStore, name: str) -> bool:
        key = backup_metadata_key(name)
        try:
            data = await store.get(key)
        except ObjectNotFound:
            return False  # not a backup (or being deleted right now)
        except StorageError as exc:
            log.warning("cannot read backup metadata", extra={"key": key, "error": str(exc)})
            return False
        try:
            stored = orjson.loads(data)
            Backup.from_obj(stored)
            if (stored.get("metadata") or {}).get("name") != name:
                raise ValueError(f"it names backup {(stored.get('metadata') or {}).get('name')!r}, not {name!r}")
            phase = (stored.get("status") or {}).get("phase")
            if phase not in TERMINAL:
                # A synced Backup without a final phase would look New and be run again, over these files.
                raise ValueError(f"its phase is {phase!r}, not one of {', '.join(TERMINAL)}")
        except (orjson.JSONDecodeError, ValidationError, ValueError, AttributeError) as exc:
            marker = (name, hash(data))
            if marker not in self._bad_reported:
                self._bad_reported.add(marker)
                log.warning(
                    "skipping backup metadata in object storage that cannot be synced",
                    extra={"key": key, "location": store.location, "error": str(exc)[:500]},
                )
            return False
        body, status = backup_from_storage(stored, self.ctx.namespace)
        body["metadata"].setdefault("annotations", {})[SYNCED_FROM_ANNOTATION] = f"{store.location}/{key}"
        try:
            obj = await self.ctx.client.create(BACKUPS, body, self.ctx.namespace)
        except AlreadyExists:
            return False
        if status:
            try:
                obj = await self.ctx.client.patch(
                    BACKUPS, name, status_merge_patch(obj, status), self.ctx.namespace, subresource="status"
                )
            except ApiError as exc:
                # Without its status the Backup would look New and be run again: take it back out.
                log.warning(
                    "could not set a synced backup's status; removing it",
                    extra={"backup": name, "error": str(exc)},
                )
                await self.ctx.client.delete(
                    BACKUPS, name, self.ctx.namespace, preconditions_uid=obj["metadata"]["uid"]
                )
                raise
        log.info("backup synced from object storage", extra={"backup": name, "phase": status.get("phase")})
        self.ctx.recorder.record(obj, "Normal", "BackupSynced", f"created from {key} in {store.location}")
        return True

    async def _report_missing(self, in_store: set[str], config: ArkConfig) -> None:
        for obj in self.backups.cache.list():
            meta = obj.get("metadata") or {}
            name, uid = str(meta.get("name") or ""), str(meta.get("uid") or "")
            phase = (obj.get("status") or {}).get("phase")
            if phase not in TERMINAL or name in in_store or meta.get("deletionTimestamp"):
                continue
            if uid in self._missing_reported:
                continue
            # It may have finished (files first, then the phase) since the bucket was listed.
            if await config.store.list_keys(backup_prefix(name)):
                continue
            self._missing_reported.add(uid)
            message = (
                f"backup {name} is {phase} but object storage has no files for it ({name}/ in "
                f"{config.store.location}): it cannot be restored or downloaded; delete it with "
                f"`ark backup delete {name}` if it is no longer wanted"
            )
            log.warning("backup files missing from object storage", extra={"backup": name, "phase": phase})
            self.ctx.recorder.record(obj, "Warning", "BackupFilesMissing", message)
