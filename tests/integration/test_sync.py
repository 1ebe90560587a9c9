"""Backup sync from object storage (moto S3 and a local directory) into the real apiserver."""

from __future__ import annotations

import datetime
import gzip
import json
import secrets
from typing import Any, TypeVar

from arkd.api.meta import format_time
from arkd.controllers.deletion import DeletionController, new_delete_backup_request
from arkd.controllers.resources import BACKUPS, DELETEBACKUPREQUESTS
from arkd.controllers.runtime import ServerContext
from arkd.controllers.sync import BackupSyncController
from arkd.kube.client import KubeClient
from arkd.kube.errors import NotFound
from arkd.storage import ObjectStore
from tests.support.bucket import Bucket
from tests.support.server import ArkServer, Runnable, events_for, eventually

T = TypeVar("T")
Obj = dict[str, Any]

# -- a server with the controllers under test (wired as arkd.app wires them) ---------------------------


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def stored_backup(bname: str, expiration: datetime.datetime, phase: str = "Completed") -> Obj:
    """A Backup as arkd (and Ark 0.9) writes it to `<backup>/ark-backup.json`."""
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Backup",
        "metadata": {
            "name": bname,
            "namespace": "heptio-ark",
            "uid": "6d6c4d2b-0000-4000-8000-000000000001",
            "resourceVersion": "4711",
            "creationTimestamp": "2018-06-01T01:00:00Z",
            "labels": {"ark-schedule": "nightly", "team": "payments"},
            "annotations": {"ark.heptio.com/pod-volume-timeout": "2h"},
        },
        "spec": {"includedNamespaces": ["app"], "excludedResources": ["secrets"], "ttl": "720h0m0s"},
        "status": {
            "version": 1,
            "phase": phase,
            "expiration": format_time(expiration),
            "startTimestamp": "2018-06-01T01:00:00Z",
            "completionTimestamp": "2018-06-01T01:02:00Z",
            "errors": 0 if phase == "Completed" else 3,
        },
    }


async def put_backup(store: ObjectStore, stored: Obj) -> None:
    bname = stored["metadata"]["name"]
    await store.put(f"{bname}/{bname}-logs.gz", gzip.compress(b"log\n"))
    await store.put(f"{bname}/ark-backup.json", json.dumps(stored, indent=2).encode())
    await store.put(f"{bname}/{bname}.tar.gz", gzip.compress(b"not really a tar"))


async def get_or_none(kube: KubeClient, namespace: str, bname: str) -> Obj | None:
    try:
        obj = await kube.get(BACKUPS, bname, namespace)
    except NotFound:
        return None
    return obj if obj.get("status") else None


def sync_only(ctx: ServerContext) -> list[Runnable]:
    return [BackupSyncController(ctx)]


IN_A_MONTH = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=30)


# -- tests -------------------------------------------------------------------------------------------
async def test_backups_missing_from_the_cluster_are_recreated_with_their_status(
    kube: KubeClient, namespace: str, bucket: Bucket
) -> None:
    await bucket.config(kube, namespace, backupSyncPeriod="1s")
    good, failed = name("good"), name("failed")
    await put_backup(bucket.store, stored_backup(good, IN_A_MONTH))
    await put_backup(bucket.store, stored_backup(failed, IN_A_MONTH, phase="Failed"))

    async with ArkServer(kube, namespace, sync_only):
        obj = await eventually(lambda: get_or_none(kube, namespace, good), "the Completed backup synced")
        other = await eventually(lambda: get_or_none(kube, namespace, failed), "the Failed backup synced")

        meta = obj["metadata"]
        assert meta["labels"] == {"ark-schedule": "nightly", "team": "payments"}
        synced_from = meta["annotations"].pop("ark.heptio.com/synced-from")
        assert synced_from.endswith(f"{good}/ark-backup.json")
        assert meta["annotations"] == {"ark.heptio.com/pod-volume-timeout": "2h"}
        assert meta["uid"] != "6d6c4d2b-0000-4000-8000-000000000001"
        assert meta["creationTimestamp"] != "2018-06-01T01:00:00Z"
        assert not meta.get("finalizers")
        assert obj["spec"] == {"includedNamespaces": ["app"], "excludedResources": ["secrets"], "ttl": "720h0m0s"}
        assert obj["status"] == {
            "version": 1,
            "phase": "Completed",
            "expiration": format_time(IN_A_MONTH),
            "startTimestamp": "2018-06-01T01:00:00Z",
            "completionTimestamp": "2018-06-01T01:02:00Z",
            "errors": 0,
        }
        assert other["status"]["phase"] == "Failed"
        assert await eventually(lambda: events_for(kube, namespace, good, "BackupSynced"), "a BackupSynced event")

        # Deleted from the cluster only (not through a DeleteBackupRequest): the next pass brings it back.
        await kube.delete(BACKUPS, good, namespace)
        again = await eventually(
            lambda: _recreated(kube, namespace, good, meta["uid"]), "the deleted Backup re-created", 30
        )
        assert again["status"]["phase"] == "Completed"


async def _recreated(kube: KubeClient, namespace: str, bname: str, old_uid: str) -> Obj | None:
    obj = await get_or_none(kube, namespace, bname)
    return obj if obj is not None and obj["metadata"]["uid"] != old_uid else None


# What Ark v0.9.0 uploads as ark-backup.json (the k8s JSON serializer, pretty-printed, nulls for unset
# Go pointers and slices, the 0.8 GC finalizer still on it).
ARK_09_METADATA = """{
  "kind": "Backup",
  "apiVersion": "ark.heptio.com/v1",
  "metadata": {
    "name": "%(name)s",
    "namespace": "heptio-ark",
    "selfLink": "/apis/ark.heptio.com/v1/namespaces/heptio-ark/backups/%(name)s",
    "uid": "9f1d2a4e-65a1-11e8-8f2c-42010a800002",
    "resourceVersion": "123456",
    "creationTimestamp": "2018-06-01T03:00:00Z",
    "labels": {
      "ark-schedule": "daily"
    },
    "finalizers": [
      "gc.ark.heptio.com"
    ]
  },
  "spec": {
    "includedNamespaces": [
      "*"
    ],
    "excludedNamespaces": null,
    "includedResources": null,
    "excludedResources": null,
    "labelSelector": null,
    "snapshotVolumes": null,
    "ttl": "720h0m0s",
    "includeClusterResources": null,
    "hooks": {
      "resources": null
    }
  },
  "status": {
    "version": 1,
    "expiration": "%(expiration)s",
    "phase": "Completed",
    "volumeBackups": null,
    "validationErrors": null,
    "startTimestamp": "2018-06-01T03:00:00Z",
    "completionTimestamp": null
  }
}
"""


async def test_a_bucket_laid_out_by_ark_09_syncs(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace)
    bname = name("daily-20180601030000")
    text = ARK_09_METADATA % {"name": bname, "expiration": format_time(IN_A_MONTH)}
    await bucket.store.put(f"{bname}/ark-backup.json", text.encode())
    await bucket.store.put(f"{bname}/{bname}.tar.gz", gzip.compress(b"tar"))
    await bucket.store.put(f"{bname}/{bname}-logs.gz", gzip.compress(b"log"))
    await bucket.store.put(f"{bname}/restore-{bname}-r1-logs.gz", gzip.compress(b"restore log"))
    # Not synced: a directory without ark-backup.json, and one whose ark-backup.json is not a Backup.
    await bucket.store.put("notes/readme.txt", b"hello")
    await bucket.store.put("broken/ark-backup.json", b"{not json")
    # A backup that never finished would look New in the cluster and be run again over its files.
    await put_backup(bucket.store, stored_backup("unfinished", IN_A_MONTH, phase="InProgress"))

    async with ArkServer(kube, namespace, sync_only):
        obj = await eventually(lambda: get_or_none(kube, namespace, bname), "the Ark 0.9 backup synced")
        backups = await kube.list(BACKUPS, namespace)
    assert [b["metadata"]["name"] for b in backups] == [bname]
    assert obj["metadata"]["labels"] == {"ark-schedule": "daily"}
    assert not obj["metadata"].get("finalizers")
    assert obj["spec"] == {"includedNamespaces": ["*"], "ttl": "720h0m0s", "hooks": {}}
    assert obj["status"] == {
        "version": 1,
        "expiration": format_time(IN_A_MONTH),
        "phase": "Completed",
        "startTimestamp": "2018-06-01T03:00:00Z",
    }


async def test_a_deleted_backup_is_not_brought_back(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace, backupSyncPeriod="1s")
    doomed, pending = name("doomed"), name("pending")
    await put_backup(bucket.store, stored_backup(doomed, IN_A_MONTH))

    async with ArkServer(kube, namespace, lambda ctx: [BackupSyncController(ctx), DeletionController(ctx)]) as server:
        obj = await eventually(lambda: get_or_none(kube, namespace, doomed), "the backup synced")
        await kube.create(
            DELETEBACKUPREQUESTS, new_delete_backup_request(doomed, obj["metadata"]["uid"], namespace), namespace
        )
        await eventually(lambda: _absent(kube, namespace, doomed), "the backup deleted")
        assert await bucket.store.list_keys(f"{doomed}/") == []
        config = server.config.current
        assert config is not None
        assert await server.controller(BackupSyncController).sync(config) == 0
        assert await get_or_none(kube, namespace, doomed) is None

    # A backup whose deletion has been requested but not yet processed is not synced either.
    await put_backup(bucket.store, stored_backup(pending, IN_A_MONTH))
    await kube.create(DELETEBACKUPREQUESTS, new_delete_backup_request(pending, None, namespace), namespace)
    async with ArkServer(kube, namespace, sync_only) as server:
        config = server.config.current
        assert config is not None
        assert await server.controller(BackupSyncController).sync(config) == 0
        assert await get_or_none(kube, namespace, pending) is None


async def _absent(kube: KubeClient, namespace: str, bname: str) -> bool:
    try:
        await kube.get(BACKUPS, bname, namespace)
    except NotFound:
        return True
    return False


async def test_a_backup_whose_files_vanished_is_reported_once(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace)
    lost = name("lost")
    await kube.create(
        BACKUPS, {"apiVersion": "ark.heptio.com/v1", "kind": "Backup", "metadata": {"name": lost}}, namespace
    )
    await kube.patch(BACKUPS, lost, {"status": {"phase": "Completed", "version": 1}}, namespace, subresource="status")
    async with ArkServer(kube, namespace, sync_only) as server:
        [event] = await eventually(lambda: events_for(kube, namespace, lost, "BackupFilesMissing"), "a Warning")
        config = server.config.current
        assert config is not None
        await server.controller(BackupSyncController).sync(config)
        await server.recorder.flush()
    assert event["type"] == "Warning"
    assert f"backup {lost} is Completed but object storage has no files for it" in event["message"]
    [again] = await events_for(kube, namespace, lost, "BackupFilesMissing")
    assert again.get("count", 1) == 1
    assert (await kube.get(BACKUPS, lost, namespace))["status"]["phase"] == "Completed"
