"""Expired backups are garbage collected and DeleteBackupRequests delete everything, on the real apiserver.

The Backups and their files are written here as Ark 0.9 would have left them (not by the backup
controller), then the GC and deletion controllers run as `ark server` runs them.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any, TypeVar

import pytest

from arkd.api.meta import format_time
from arkd.cli.backup_lifecycle import delete as backup_delete
from arkd.controllers.deletion import DeletionController, new_delete_backup_request
from arkd.controllers.gc import GCController
from arkd.controllers.resources import (
    BACKUPS,
    CONFIGS,
    DELETEBACKUPREQUESTS,
    PODVOLUMEBACKUPS,
    PODVOLUMERESTORES,
    RESTORES,
    SCHEDULES,
)
from arkd.controllers.runtime import ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.errors import NotFound
from arkd.kube.resource import CONFIGMAPS
from arkd.storage import LocalObjectStore, ObjectStore, make_store
from tests.support.server import ArkServer, Runnable, events_for, eventually, run_cli

T = TypeVar("T")
Obj = dict[str, Any]
BUCKET = "ark-backups"


# -- a server with the controllers under test (wired as arkd.app wires them) ---------------------------


async def create_config(kube: KubeClient, namespace: str, storage_dir: Path, **settings: Any) -> None:
    (storage_dir / BUCKET).mkdir(parents=True, exist_ok=True)
    body = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": {"name": "local", "bucket": BUCKET, "config": {"path": str(storage_dir)}},
        **settings,
    }
    await kube.create(CONFIGS, body, namespace)


# -- backups as Ark 0.9 left them --------------------------------------------------------------------
def gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def tarball(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            data = json.dumps({"kind": "ConfigMap", "metadata": {"name": name}}).encode()
            info = tarfile.TarInfo(f"resources/configmaps/namespaces/app/{name}.json")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def write_backup_files(store: ObjectStore, name: str, status: Obj) -> None:
    """ark-backup.json, tarball and log, laid out and encoded as Ark 0.9 writes them."""
    stored = {
        "kind": "Backup",
        "apiVersion": "ark.heptio.com/v1",
        "metadata": {"name": name, "namespace": "heptio-ark", "uid": "00000000-0000-4000-8000-000000000000"},
        "spec": {
            "includedNamespaces": ["*"],
            "excludedNamespaces": None,
            "ttl": "720h0m0s",
            "hooks": {"resources": None},
        },
        "status": status,
    }
    await store.put(
        f"{name}/{name}-logs.gz", gz(f'time="2018-06-01T01:00:00Z" level=info msg="backing up" backup={name}\n')
    )
    await store.put(f"{name}/ark-backup.json", json.dumps(stored, indent=2).encode())
    await store.put(f"{name}/{name}.tar.gz", tarball("settings"))


async def create_backup(kube: KubeClient, namespace: str, name: str, status: Obj) -> Obj:
    body = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"includedNamespaces": ["*"], "ttl": "720h0m0s"},
    }
    created = await kube.create(BACKUPS, body, namespace)
    return await kube.patch(BACKUPS, name, {"status": status}, namespace, subresource="status") if status else created


def completed(expiration: datetime.datetime) -> Obj:
    return {"version": 1, "phase": "Completed", "expiration": format_time(expiration)}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


async def gone(kube: KubeClient, res: Any, name: str, namespace: str) -> bool:
    try:
        await kube.get(res, name, namespace)
    except NotFound:
        return True
    return False


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def store(storage_dir: Path) -> LocalObjectStore:
    (storage_dir / BUCKET).mkdir(parents=True, exist_ok=True)
    return LocalObjectStore(storage_dir / BUCKET)


def killable(controller: DeletionController) -> DeletionController:
    """No grace period for work in flight on shutdown: stopping the server is like killing it."""
    controller.controller.shutdown_grace = 0.0
    return controller


def gc_and_deletion(ctx: ServerContext) -> list[Runnable]:
    return [GCController(ctx), DeletionController(ctx)]


# -- tests -------------------------------------------------------------------------------------------
async def test_an_expired_backup_is_collected_with_its_files_restores_and_pod_volume_backups(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    await create_config(kube, namespace, storage_dir)
    old, young = name("old"), name("young")
    for b, expiration in ((old, now() - datetime.timedelta(seconds=5)), (young, now() + datetime.timedelta(days=1))):
        await write_backup_files(store, b, completed(expiration))
        await create_backup(kube, namespace, b, completed(expiration))
    backup = await kube.get(BACKUPS, old, namespace)
    uid = backup["metadata"]["uid"]
    await kube.create(
        PODVOLUMEBACKUPS,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "PodVolumeBackup",
            "metadata": {"name": f"{old}-pvb", "labels": {"ark.heptio.com/backup-uid": uid}},
            "spec": {"node": "n1", "volume": "data", "pod": {"kind": "Pod", "namespace": "app", "name": "p"}},
        },
        namespace,
    )
    restore = await kube.create(
        RESTORES,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Restore",
            "metadata": {"name": f"{old}-r"},
            "spec": {"backupName": old},
        },
        namespace,
    )
    await kube.create(
        PODVOLUMERESTORES,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "PodVolumeRestore",
            "metadata": {"name": f"{old}-pvr", "labels": {"ark.heptio.com/restore-uid": restore["metadata"]["uid"]}},
            "spec": {"volume": "data", "pod": {"kind": "Pod", "namespace": "app", "name": "p"}},
        },
        namespace,
    )
    await store.put(f"{old}/restore-{old}-r-logs.gz", gz("restored\n"))

    async with ArkServer(kube, namespace, gc_and_deletion) as server:
        await eventually(lambda: gone(kube, BACKUPS, old, namespace), "deletion of the expired backup")
        requests = await kube.list(DELETEBACKUPREQUESTS, namespace)
        assert len(requests) == 1
        request = requests[0]
        assert request["metadata"]["name"].startswith(f"{old}-")
        assert request["metadata"]["labels"] == {
            "ark.heptio.com/backup-name": old,
            "ark.heptio.com/backup-uid": uid,
        }
        assert request["spec"] == {"backupName": old}
        request = await eventually(
            lambda: _processed(kube, namespace, request["metadata"]["name"]), "the request being Processed"
        )
        assert not request["status"].get("errors")
        assert await store.list_keys(f"{old}/") == []
        assert await gone(kube, PODVOLUMEBACKUPS, f"{old}-pvb", namespace)
        assert await gone(kube, RESTORES, f"{old}-r", namespace)
        assert await gone(kube, PODVOLUMERESTORES, f"{old}-pvr", namespace)
        # The backup that has not expired is untouched.
        assert (await kube.get(BACKUPS, young, namespace))["status"]["phase"] == "Completed"
        assert await store.exists(f"{young}/ark-backup.json")
        assert await eventually(lambda: events_for(kube, namespace, old, "Expired"), "an Expired event")
        assert server.metric("ark_backup_deletion_success_total") == 1


async def _processed(kube: KubeClient, namespace: str, request: str) -> Obj | None:
    obj = await kube.get(DELETEBACKUPREQUESTS, request, namespace)
    return obj if (obj.get("status") or {}).get("phase") == "Processed" else None


async def test_deleting_an_in_progress_or_missing_backup_is_refused_with_a_clear_error(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    await create_config(kube, namespace, storage_dir)
    running = name("running")
    await create_backup(kube, namespace, running, {"phase": "InProgress", "version": 1})
    await store.put(f"{running}/{running}-logs.gz", gz("half a log\n"))

    async with ArkServer(kube, namespace, lambda ctx: [DeletionController(ctx)]):
        result = await run_cli(backup_delete, running, "--confirm", "--wait", "-n", namespace)
        assert result.exit_code == 1
        assert f"backup {running} is InProgress and cannot be deleted while it runs" in result.stderr
        assert (await kube.get(BACKUPS, running, namespace))["status"]["phase"] == "InProgress"
        assert await store.exists(f"{running}/{running}-logs.gz")

        request = await kube.create(DELETEBACKUPREQUESTS, new_delete_backup_request("nope", None, namespace), namespace)
        processed = await eventually(
            lambda: _processed(kube, namespace, request["metadata"]["name"]), "the request being Processed"
        )
        assert processed["status"]["errors"] == ["backup nope not found"]

        result = await run_cli(backup_delete, "nope", "--confirm", "-n", namespace)
        assert result.exit_code == 1
        assert "backup 'nope' not found" in result.stderr


class BlockingForgetter:
    """Stands in for the restic side; it never finishes, so the server can be killed mid-deletion."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def forget_backup_snapshots(self, backup: Obj, pvbs: list[Obj], stored: list[Obj]) -> list[str]:
        self.called.set()
        await asyncio.Event().wait()
        return []


class RecordingForgetter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str]]] = []

    async def forget_backup_snapshots(self, backup: Obj, pvbs: list[Obj], stored: list[Obj]) -> list[str]:
        self.calls.append(
            (backup["metadata"]["name"], [p["metadata"]["name"] for p in pvbs], [p["metadata"]["name"] for p in stored])
        )
        return []


async def test_a_deletion_killed_after_marking_the_backup_deleting_completes_after_a_restart(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    await create_config(kube, namespace, storage_dir)
    b = name("b")
    await write_backup_files(store, b, completed(now() + datetime.timedelta(days=1)))
    await store.put(
        f"{b}/{b}-podvolumebackups.json.gz",
        gzip.compress(json.dumps([{"metadata": {"name": f"{b}-stored-pvb"}}]).encode()),
    )
    backup = await create_backup(kube, namespace, b, completed(now() + datetime.timedelta(days=1)))
    await kube.create(
        PODVOLUMEBACKUPS,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "PodVolumeBackup",
            "metadata": {"name": f"{b}-pvb", "labels": {"ark.heptio.com/backup-uid": backup["metadata"]["uid"]}},
            "spec": {"node": "n1", "volume": "data", "pod": {"kind": "Pod", "namespace": "app", "name": "p"}},
        },
        namespace,
    )
    blocking = BlockingForgetter()
    first = ArkServer(kube, namespace, lambda ctx: [killable(DeletionController(ctx, blocking))])
    await first.__aenter__()
    try:
        request = await kube.create(
            DELETEBACKUPREQUESTS, new_delete_backup_request(b, backup["metadata"]["uid"], namespace), namespace
        )
        await asyncio.wait_for(blocking.called.wait(), 30)
    finally:
        await first.stop()
    rname = request["metadata"]["name"]
    assert (await kube.get(BACKUPS, b, namespace))["status"]["phase"] == "Deleting"
    assert (await kube.get(DELETEBACKUPREQUESTS, rname, namespace))["status"]["phase"] == "InProgress"
    assert await store.exists(f"{b}/{b}.tar.gz")

    forgetter = RecordingForgetter()
    async with ArkServer(kube, namespace, lambda ctx: [DeletionController(ctx, forgetter)]):
        processed = await eventually(lambda: _processed(kube, namespace, rname), "the resumed deletion")
    assert not processed["status"].get("errors")
    assert forgetter.calls == [(b, [f"{b}-pvb"], [f"{b}-stored-pvb"])]
    assert await gone(kube, BACKUPS, b, namespace)
    assert await gone(kube, PODVOLUMEBACKUPS, f"{b}-pvb", namespace)
    assert await store.list_keys(f"{b}/") == []


class PausingStore:
    """A real local store whose delete_prefix deletes, then hangs: the server dies right after it."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.deleted = asyncio.Event()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def delete_prefix(self, prefix: str) -> int:
        count = await self.inner.delete_prefix(prefix)
        self.deleted.set()
        await asyncio.Event().wait()
        return count


async def test_a_deletion_killed_after_deleting_the_files_completes_after_a_restart(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    await create_config(kube, namespace, storage_dir)
    b = name("b")
    await write_backup_files(store, b, completed(now() + datetime.timedelta(days=1)))
    await create_backup(kube, namespace, b, completed(now() + datetime.timedelta(days=1)))
    pausing: list[PausingStore] = []

    def pausing_factory(provider: str, bucket: str, config: dict[str, str]) -> Any:
        pausing.append(PausingStore(make_store(provider, bucket, config)))
        return pausing[-1]

    first = ArkServer(kube, namespace, lambda ctx: [killable(DeletionController(ctx))], store_factory=pausing_factory)
    await first.__aenter__()
    try:
        result = await run_cli(backup_delete, b, "--confirm", "-n", namespace)
        assert result.exit_code == 0, result.output
        assert f'Request to delete backup "{b}" submitted successfully.' in result.stdout
        await asyncio.wait_for(pausing[0].deleted.wait(), 30)
    finally:
        await first.stop()
    # Killed between deleting the files and deleting the Backup: the Backup says so.
    assert await store.list_keys(f"{b}/") == []
    assert (await kube.get(BACKUPS, b, namespace))["status"]["phase"] == "Deleting"

    async with ArkServer(kube, namespace, lambda ctx: [DeletionController(ctx)]):
        await eventually(lambda: gone(kube, BACKUPS, b, namespace), "the resumed deletion")
        [request] = await kube.list(DELETEBACKUPREQUESTS, namespace)
        processed = await eventually(
            lambda: _processed(kube, namespace, request["metadata"]["name"]), "the request being Processed"
        )
        assert not processed["status"].get("errors")


async def test_restore_only_mode_neither_collects_nor_deletes_and_says_why(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    await create_config(kube, namespace, storage_dir, restoreOnlyMode=True)
    b = name("b")
    await write_backup_files(store, b, completed(now() - datetime.timedelta(hours=1)))
    await create_backup(kube, namespace, b, completed(now() - datetime.timedelta(hours=1)))

    async with ArkServer(kube, namespace, gc_and_deletion):
        kept = await eventually(lambda: events_for(kube, namespace, b, "ExpiredBackupKept"), "an event on the backup")
        assert "restore-only mode" in kept[0]["message"]
        assert await kube.list(DELETEBACKUPREQUESTS, namespace) == []

        result = await run_cli(backup_delete, b, "--confirm", "--wait", "-n", namespace)
        assert result.exit_code == 1
        assert "the server is in restore-only mode (Config restoreOnlyMode: true)" in result.stderr
        [request] = await kube.list(DELETEBACKUPREQUESTS, namespace)
        refused = await eventually(
            lambda: events_for(kube, namespace, request["metadata"]["name"], "DeletionFailed"),
            "an event on the request",
        )
        assert "restore-only mode" in refused[0]["message"]
    assert (await kube.get(BACKUPS, b, namespace))["status"]["phase"] == "Completed"
    assert await store.exists(f"{b}/{b}.tar.gz")


async def test_processed_requests_are_deleted_a_day_after_their_creation(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir)
    fresh = await kube.create(DELETEBACKUPREQUESTS, new_delete_backup_request("x", None, namespace), namespace)
    await kube.patch(
        DELETEBACKUPREQUESTS,
        fresh["metadata"]["name"],
        {"status": {"phase": "Processed", "errors": ["backup x not found"]}},
        namespace,
        subresource="status",
    )

    class DayLater:
        def now(self) -> float:
            return RealClock().now()

        def wall(self) -> datetime.datetime:
            return datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=24, minutes=1)

        async def sleep(self, seconds: float) -> None:
            await asyncio.sleep(seconds)

    # Today's server keeps it; the same server a day later deletes it.
    async with ArkServer(kube, namespace, lambda ctx: [DeletionController(ctx)]) as server:
        controller = server.controllers[0]
        assert isinstance(controller, DeletionController)
        await eventually(lambda: _drained(controller), "the deletion controller looking at the request")
        assert not await gone(kube, DELETEBACKUPREQUESTS, fresh["metadata"]["name"], namespace)
    async with ArkServer(kube, namespace, lambda ctx: [DeletionController(ctx)], clock=DayLater()):
        await eventually(lambda: gone(kube, DELETEBACKUPREQUESTS, fresh["metadata"]["name"], namespace), "the sweep")


async def _drained(controller: DeletionController) -> bool:
    # The request was reconciled and put back to wait (24 h) on the delayed queue.
    return controller.queue.num_waiting() == 1 and controller.queue.len() == 0


async def test_a_scheduled_backup_can_be_read_and_deleted_end_to_end(
    kube: KubeClient, namespace: str, storage_dir: Path, store: LocalObjectStore
) -> None:
    """Schedule -> the backup controller's real backup -> `ark backup logs` -> `ark backup delete`."""
    from arkd.cli.backup_lifecycle import logs
    from arkd.controllers.backup import BackupController
    from arkd.controllers.download import DownloadRequestController
    from arkd.controllers.schedule import ScheduleController

    await create_config(kube, namespace, storage_dir)
    await kube.create(
        CONFIGMAPS,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"k": "v"}},
        namespace,
    )
    sched = name("daily")
    slot = (now() - datetime.timedelta(minutes=10)).replace(second=0)
    await kube.create(
        SCHEDULES,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Schedule",
            "metadata": {"name": sched},
            "spec": {
                "schedule": f"{slot.minute} {slot.hour} * * *",
                "template": {"includedNamespaces": [namespace], "includedResources": ["configmaps"], "ttl": "24h0m0s"},
            },
        },
        namespace,
    )
    await kube.patch(
        SCHEDULES,
        sched,
        {"status": {"phase": "Enabled", "lastBackup": format_time(slot - datetime.timedelta(days=1))}},
        namespace,
        subresource="status",
    )
    b = f"{sched}-{slot:%Y%m%d%H%M%S}"

    def everything(ctx: ServerContext) -> list[Runnable]:
        return [
            ScheduleController(ctx),
            BackupController(ctx),
            GCController(ctx),
            DeletionController(ctx),
            DownloadRequestController(ctx),
        ]

    async with ArkServer(kube, namespace, everything):
        backup = await eventually(lambda: _backup_in(kube, namespace, b, "Completed"), "the scheduled backup", 60)
        assert backup["metadata"]["labels"]["ark-schedule"] == sched
        with tarfile.open(fileobj=io.BytesIO(await store.get(f"{b}/{b}.tar.gz"))) as tar:
            assert f"resources/configmaps/namespaces/{namespace}/settings.json" in tar.getnames()

        printed = await run_cli(logs, b, "-n", namespace)
        assert printed.exit_code == 0, printed.output
        assert printed.stdout.strip()

        deleted = await run_cli(backup_delete, b, "--confirm", "--wait", "-n", namespace)
        assert deleted.exit_code == 0, deleted.output
        assert deleted.stdout.endswith(f"Backup {b} deleted.\n")
        assert await gone(kube, BACKUPS, b, namespace)
        assert await store.list_keys(f"{b}/") == []


async def _backup_in(kube: KubeClient, namespace: str, b: str, phase: str) -> Obj | None:
    try:
        obj = await kube.get(BACKUPS, b, namespace)
    except NotFound:
        return None
    got = (obj.get("status") or {}).get("phase")
    if got in ("Failed", "FailedValidation", "PartiallyFailed"):
        pytest.fail(f"backup {b} ended {got}: {obj.get('status')}")
    return obj if got == phase else None
