"""The DeleteBackupRequest controller: delete a backup and everything that belongs to it.

For a request in phase New (or InProgress, left by a server that stopped half-way: every step is
idempotent, so it is simply run again from the start):

1. validate: `spec.backupName` set; the Backup exists (else Processed with "backup X not found"),
   is not InProgress, and is the one the request was made for (its uid label); the server is not in
   restore-only mode;
2. the request moves to InProgress (adding the backup-name and backup-uid labels), the Backup to
   phase Deleting;
3. restic snapshots are forgotten through the optional `SnapshotForgetter`; if that fails, nothing
   else is deleted, so a later request still has the PodVolumeBackup list to forget them with;
4. every object under `<backup>/` in the backup bucket is deleted;
5. the Restores of the backup (and their PodVolumeRestores) are deleted;
6. the PodVolumeBackups labelled with the backup's uid, then the Backup, are deleted. If this fails
   after the files are gone, the Backup stays in phase Deleting, which says so;
7. the request is Processed with any errors; on full success the other requests for the backup
   are deleted. Processed requests are deleted 24 h after their creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from arkd.api.constants import (
    API_VERSION,
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    DELETE_BACKUP_REQUEST_KIND,
    LEGACY_GC_FINALIZER,
    RESTORE_UID_LABEL,
    BackupPhase,
    DeleteBackupRequestPhase,
)
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import (
    BACKUPS,
    DELETEBACKUPREQUESTS,
    PODVOLUMEBACKUPS,
    PODVOLUMERESTORES,
    RESTORES,
)
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.errors import ApiError, NotFound
from arkd.kube.patch import guarded_merge_patch, remove_finalizer_patch, status_merge_patch
from arkd.kube.resource import Resource
from arkd.kube.workqueue import WorkQueue
from arkd.storage import ObjectNotFound, ObjectStore, StorageError
from arkd.storage.layout import backup_prefix, podvolumebackups_key

log = logging.getLogger("arkd.controllers.deletion")

Obj = dict[str, Any]

LABEL_VALUE_MAX = 63
PROCESSED_REQUEST_TTL = datetime.timedelta(hours=24)
CONFIG_POLL_SECONDS = 5.0


class SnapshotForgetter(Protocol):
    """Forgets the restic snapshots of a backup that is being deleted (implemented by the restic side).

    `pvbs_from_cluster` are the PodVolumeBackups labelled with the backup's uid; `stored_pvbs` the
    list saved in object storage beside the backup (empty for Ark 0.9 backups), which is all a
    cluster that synced the backup has. Returns one message per failure; an empty list is success.
    A snapshot that is already gone counts as forgotten.
    """

    async def forget_backup_snapshots(
        self, backup: Obj, pvbs_from_cluster: list[Obj], stored_pvbs: list[Obj]
    ) -> list[str]: ...


def label_value(value: str) -> str:
    """`value` as a label value: unchanged up to 63 characters, else cut and suffixed with a hash
    (Velero's GetValidName), so long backup and schedule names still label their objects."""
    if len(value) <= LABEL_VALUE_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return value[: LABEL_VALUE_MAX - len(digest)] + digest


def new_delete_backup_request(backup_name: str, backup_uid: str | None, namespace: str) -> Obj:
    """A DeleteBackupRequest as `ark backup delete` and garbage collection create it."""
    labels = {BACKUP_NAME_LABEL: label_value(backup_name)}
    if backup_uid:
        labels[BACKUP_UID_LABEL] = backup_uid
    return {
        "apiVersion": API_VERSION,
        "kind": DELETE_BACKUP_REQUEST_KIND,
        "metadata": {"generateName": f"{backup_name}-", "namespace": namespace, "labels": labels},
        "spec": {"backupName": backup_name},
    }


def request_phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or DeleteBackupRequestPhase.NEW.value)


def requests_for_backup(requests: list[Obj], backup_name: str) -> list[Obj]:
    return [r for r in requests if (r.get("spec") or {}).get("backupName") == backup_name]


def pending_requests(requests: list[Obj], backup_name: str) -> list[Obj]:
    """Requests for `backup_name` not yet Processed."""
    return [
        r for r in requests_for_backup(requests, backup_name) if request_phase(r) != DeleteBackupRequestPhase.PROCESSED
    ]


def parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.UTC)
    except ValueError:
        return None


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class DeletionController:
    def __init__(self, ctx: ServerContext, forgetter: SnapshotForgetter | None = None, *, workers: int = 2) -> None:
        self.ctx = ctx
        self.forgetter = forgetter
        self.requests = ctx.informers.get(DELETEBACKUPREQUESTS, ctx.namespace)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "backup-deletion",
            self.queue,
            self.reconcile,
            workers=workers,
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        # Backup name -> its lock and how many reconciles hold or wait for it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.requests.add_handler(on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new))
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    async def run(self) -> None:
        await self.requests.wait_synced()
        await self.controller.run()

    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.requests.cache.list():
            self._enqueue(obj)

    @contextlib.asynccontextmanager
    async def _backup_lock(self, backup_name: str) -> AsyncIterator[None]:
        # Two requests for one backup (GC and a user) are processed one after the other.
        lock, users = self._locks.get(backup_name) or (asyncio.Lock(), 0)
        self._locks[backup_name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[backup_name]
            if users == 1:
                del self._locks[backup_name]
            else:
                self._locks[backup_name] = (lock, users - 1)

    # -- reconcile -------------------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Result:
        obj = self.requests.cache.get(key)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return Done()
        if request_phase(obj) == DeleteBackupRequestPhase.PROCESSED:
            return await self._expire(obj)
        backup_name = str((obj.get("spec") or {}).get("backupName") or "")
        async with self._backup_lock(backup_name):
            # Another request for this backup may have finished (and deleted this one) meanwhile.
            obj = self.requests.cache.get(key)
            if obj is None or request_phase(obj) == DeleteBackupRequestPhase.PROCESSED:
                return Done()
            config = self.ctx.config.current
            if config is None:
                log.info("waiting for a valid Config before deleting backups")
                return RequeueAfter(CONFIG_POLL_SECONDS)
            return await self._process(obj, backup_name, config)

    async def _expire(self, obj: Obj) -> Result:
        created = parse_time(_meta(obj).get("creationTimestamp"))
        if created is None:
            return Done()
        left = created + PROCESSED_REQUEST_TTL - self.ctx.clock.wall()
        if left > datetime.timedelta(0):
            return RequeueAfter(left.total_seconds())
        with contextlib.suppress(NotFound):
            await self.ctx.client.delete(DELETEBACKUPREQUESTS, str(_meta(obj)["name"]), self.ctx.namespace)
        log.info("deleted processed DeleteBackupRequest older than 24h", extra={"request": object_key(obj)})
        return Done()

    async def _process(self, obj: Obj, name: str, config: ArkConfig) -> Result:
        ns = self.ctx.namespace
        resumed = request_phase(obj) == DeleteBackupRequestPhase.IN_PROGRESS
        if not name:
            return await self._finish(obj, ["spec.backupName is required: name the backup to delete"], None)
        try:
            backup: Obj | None = await self.ctx.client.get(BACKUPS, name, ns)
        except NotFound:
            backup = None
        wanted_uid = str((_meta(obj).get("labels") or {}).get(BACKUP_UID_LABEL) or "")
        if backup is None and not resumed:
            return await self._finish(obj, [f"backup {name} not found"], None)
        if backup is not None:
            uid = str(_meta(backup).get("uid") or "")
            if wanted_uid and uid != wanted_uid:
                return await self._finish(
                    obj,
                    [
                        f"backup {name} was re-created after this request was made (uid {wanted_uid} is "
                        f"now {uid}); nothing was deleted: request the deletion again to delete the new one"
                    ],
                    None,
                )
            wanted_uid = uid
        if config.config.restore_only_mode:
            return await self._finish(
                obj,
                [
                    f"backup {name} was not deleted: the server is in restore-only mode (Config "
                    "restoreOnlyMode: true); set restoreOnlyMode to false in Config default and request "
                    "the deletion again"
                ],
                backup,
            )
        if backup is not None and (backup.get("status") or {}).get("phase") == BackupPhase.IN_PROGRESS:
            return await self._finish(
                obj,
                [
                    f"backup {name} is InProgress and cannot be deleted while it runs; wait until it "
                    f"finishes (`ark backup describe {name}`), then delete it"
                ],
                backup,
            )

        if not resumed:
            obj = await self._start(obj, name, wanted_uid)
        else:
            log.info("resuming an interrupted backup deletion", extra={"backup": name})
        if backup is not None and (backup.get("status") or {}).get("phase") != BackupPhase.DELETING:
            backup = await self._patch_status(BACKUPS, backup, {"phase": BackupPhase.DELETING.value})
            self.ctx.recorder.record(
                backup, "Normal", "Deleting", f"deleting the backup (DeleteBackupRequest {_meta(obj)['name']})"
            )
        errors = await self._delete_everything(name, wanted_uid, backup, config.store)
        return await self._finish(obj, errors, backup)

    async def _start(self, obj: Obj, name: str, uid: str) -> Obj:
        labels = _meta(obj).get("labels") or {}
        wanted = {BACKUP_NAME_LABEL: label_value(name)}
        if uid:
            wanted[BACKUP_UID_LABEL] = uid
        missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
        if missing:
            obj = await self.ctx.client.patch(
                DELETEBACKUPREQUESTS,
                str(_meta(obj)["name"]),
                guarded_merge_patch(obj, {"metadata": {"labels": missing}}),
                self.ctx.namespace,
            )
        obj = await self._patch_status(DELETEBACKUPREQUESTS, obj, {"phase": DeleteBackupRequestPhase.IN_PROGRESS.value})
        log.info("deleting backup", extra={"backup": name, "request": object_key(obj)})
        return obj

    async def _delete_everything(self, name: str, uid: str, backup: Obj | None, store: ObjectStore) -> list[str]:
        """Steps 3-6; returns what failed. Stops before deleting anything that a retry would need."""
        ns = self.ctx.namespace
        selector = f"{BACKUP_UID_LABEL}={uid}" if uid else f"{BACKUP_NAME_LABEL}={label_value(name)}"
        if backup is not None and self.forgetter is not None:
            pvbs = await self.ctx.client.list(PODVOLUMEBACKUPS, ns, label_selector=selector)
            stored, errors = await self._stored_pvbs(store, name)
            if not errors:
                try:
                    errors = list(await self.forgetter.forget_backup_snapshots(backup, pvbs, stored))
                except Exception as exc:
                    log.exception("forgetting restic snapshots failed", extra={"backup": name})
                    errors = [f"forgetting the backup's restic snapshots failed: {exc}"]
            if errors:
                return [*errors, "the backup's files and the Backup were kept so the deletion can be retried"]

        prefix = backup_prefix(name)
        try:
            removed = await store.delete_prefix(prefix)
        except StorageError as exc:
            return [f"deleting the backup's files ({prefix} in {store.location}) failed: {exc}"]
        log.info("deleted backup files", extra={"backup": name, "objects": removed, "location": store.location})

        errors = await self._delete_restores(name)
        if errors:
            return errors
        try:
            for pvb in await self.ctx.client.list(PODVOLUMEBACKUPS, ns, label_selector=selector):
                await self._delete(PODVOLUMEBACKUPS, pvb)
            if backup is not None:
                await self._delete_backup(backup)
        except ApiError as exc:
            return [
                f"the backup's files were deleted, but deleting the Backup or its PodVolumeBackups failed: "
                f"{exc}; the Backup stays in phase Deleting until a new deletion request succeeds"
            ]
        return []

    async def _stored_pvbs(self, store: ObjectStore, name: str) -> tuple[list[Obj], list[str]]:
        key = podvolumebackups_key(name)
        try:
            data = await store.get(key)
        except ObjectNotFound:
            return [], []
        except StorageError as exc:
            return [], [f"reading the backup's PodVolumeBackup list ({key}) failed: {exc}"]
        try:
            items = orjson.loads(gzip.decompress(data))
        except (OSError, EOFError, orjson.JSONDecodeError) as exc:
            log.warning("unreadable PodVolumeBackup list", extra={"key": key, "error": str(exc)})
            return [], []
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else [], []

    async def _delete_restores(self, name: str) -> list[str]:
        ns = self.ctx.namespace
        errors: list[str] = []
        for restore in await self.ctx.client.list(RESTORES, ns):
            if (restore.get("spec") or {}).get("backupName") != name:
                continue
            rname = str(_meta(restore).get("name"))
            try:
                ruid = str(_meta(restore).get("uid") or "")
                # Their owner reference would do this where a garbage collector runs.
                for pvr in await self.ctx.client.list(
                    PODVOLUMERESTORES, ns, label_selector=f"{RESTORE_UID_LABEL}={ruid}"
                ):
                    await self._delete(PODVOLUMERESTORES, pvr)
                await self._delete(RESTORES, restore)
            except ApiError as exc:
                errors.append(f"deleting restore {rname} failed: {exc}")
        return errors

    async def _delete_backup(self, backup: Obj) -> None:
        patch = remove_finalizer_patch(backup, LEGACY_GC_FINALIZER)
        if patch:
            # Ark <= 0.8's finalizer would keep the object; nothing removes it any more.
            with contextlib.suppress(NotFound):
                await self.ctx.client.patch(
                    BACKUPS, str(_meta(backup)["name"]), patch, self.ctx.namespace, patch_type="json"
                )
        await self._delete(BACKUPS, backup)

    async def _delete(self, res: Resource, obj: Obj) -> None:
        with contextlib.suppress(NotFound):
            await self.ctx.client.delete(
                res,
                str(_meta(obj)["name"]),
                self.ctx.namespace,
                preconditions_uid=str(_meta(obj).get("uid") or "") or None,
            )

    async def _finish(self, obj: Obj, errors: list[str], backup: Obj | None) -> Result:
        """Processed with `errors`; a failure is also an Event on `backup` when given."""
        name = str((obj.get("spec") or {}).get("backupName") or "")
        status: Obj = {"phase": DeleteBackupRequestPhase.PROCESSED.value, "errors": errors or None}
        updated = await self._patch_status(DELETEBACKUPREQUESTS, obj, status)
        metrics = self.ctx.metrics
        metrics.backup_deletion_attempt.inc()
        if errors:
            metrics.backup_deletion_failure.inc()
            message = "; ".join(errors)
            log.warning("backup deletion failed", extra={"backup": name, "errors": errors})
            self.ctx.recorder.record(updated, "Warning", "DeletionFailed", message)
            if backup is not None:
                self.ctx.recorder.record(backup, "Warning", "DeletionFailed", message)
            return await self._expire(updated)
        metrics.backup_deletion_success.inc()
        log.info("backup deleted", extra={"backup": name})
        self.ctx.recorder.record(updated, "Normal", "Deleted", f"backup {name} deleted")
        for other in requests_for_backup(self.requests.cache.list(), name):
            if _meta(other).get("name") != _meta(updated).get("name"):
                await self._delete(DELETEBACKUPREQUESTS, other)
        return await self._expire(updated)

    async def _patch_status(self, res: Resource, obj: Obj, status: Obj) -> Obj:
        return await self.ctx.client.patch(
            res,
            str(_meta(obj)["name"]),
            status_merge_patch(obj, status),
            self.ctx.namespace,
            subresource="status",
        )
