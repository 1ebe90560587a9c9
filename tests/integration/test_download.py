"""`ark backup logs|download` and `ark restore logs` through DownloadRequests, on the real apiserver.

The files are in moto S3 (presigned http URLs) or a local directory (file:// URLs), written as
Ark 0.9 lays them out.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any, TypeVar

from arkd.api.meta import format_time
from arkd.cli.backup_lifecycle import download, logs, restore_logs
from arkd.controllers.download import DownloadRequestController
from arkd.controllers.resources import BACKUPS, DOWNLOADREQUESTS, RESTORES
from arkd.controllers.runtime import ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.errors import NotFound
from arkd.storage import ObjectStore
from tests.support.bucket import Bucket
from tests.support.server import ArkServer, Runnable, eventually, run_cli

T = TypeVar("T")
Obj = dict[str, Any]

# -- a server with the controllers under test (wired as arkd.app wires them) ---------------------------


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


BACKUP_LOG = (
    'time="2018-06-01T01:00:00Z" level=info msg="Starting backup" backup=heptio-ark/{b}\n'
    'time="2018-06-01T01:00:01Z" level=info msg="Backing up resource" group=v1 resource=pods\n'
    'time="2018-06-01T01:00:02Z" level=info msg="Backup completed successfully" backup=heptio-ark/{b}\n'
)


def tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}).encode()
        info = tarfile.TarInfo("resources/configmaps/namespaces/app/settings.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def make_backup(kube: KubeClient, namespace: str, store: ObjectStore, bname: str, *, log: bool = True) -> None:
    if log:
        await store.put(f"{bname}/{bname}-logs.gz", gzip.compress(BACKUP_LOG.format(b=bname).encode()))
    await store.put(f"{bname}/{bname}.tar.gz", tarball())
    await store.put(f"{bname}/ark-backup.json", b"{}")
    await kube.create(
        BACKUPS, {"apiVersion": "ark.heptio.com/v1", "kind": "Backup", "metadata": {"name": bname}}, namespace
    )
    await kube.patch(BACKUPS, bname, {"status": {"phase": "Completed", "version": 1}}, namespace, subresource="status")


def downloads(ctx: ServerContext) -> list[Runnable]:
    return [DownloadRequestController(ctx)]


async def no_requests_left(kube: KubeClient, namespace: str) -> bool:
    return await kube.list(DOWNLOADREQUESTS, namespace) == []


# -- tests -------------------------------------------------------------------------------------------
async def test_backup_logs_prints_the_log_from_object_storage(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace)
    b = name("nightly")
    await make_backup(kube, namespace, bucket.store, b)
    async with ArkServer(kube, namespace, downloads):
        result = await run_cli(logs, b, "-n", namespace)
        assert result.exit_code == 0, result.output
        assert result.stdout == BACKUP_LOG.format(b=b)
        # The CLI cleans up its request.
        assert await eventually(lambda: no_requests_left(kube, namespace), "the DownloadRequest removed")


async def test_backup_download_writes_the_tarball(
    kube: KubeClient, namespace: str, bucket: Bucket, tmp_path: Path
) -> None:
    await bucket.config(kube, namespace)
    b = name("weekly")
    await make_backup(kube, namespace, bucket.store, b)
    target = tmp_path / "out.tar.gz"
    async with ArkServer(kube, namespace, downloads):
        result = await run_cli(download, b, "-o", str(target), "-n", namespace)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"Backup {b} has been successfully downloaded to {target}\n"
        with tarfile.open(target) as tar:
            assert tar.getnames() == ["resources/configmaps/namespaces/app/settings.json"]

        again = await run_cli(download, b, "-o", str(target), "-n", namespace)
        assert again.exit_code == 1
        assert "already exists; use --force" in again.stderr


async def test_restore_logs_come_from_the_backups_directory(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace)
    b, r = name("nightly"), name("restore")
    await make_backup(kube, namespace, bucket.store, b)
    await bucket.store.put(f"{b}/restore-{r}-logs.gz", gzip.compress(b"restored 3 items\n"))
    await kube.create(
        RESTORES,
        {"apiVersion": "ark.heptio.com/v1", "kind": "Restore", "metadata": {"name": r}, "spec": {"backupName": b}},
        namespace,
    )
    async with ArkServer(kube, namespace, downloads):
        result = await run_cli(restore_logs, r, "-n", namespace)
    assert result.exit_code == 0, result.output
    assert result.stdout == "restored 3 items\n"


async def test_a_missing_log_is_explained(kube: KubeClient, namespace: str, bucket: Bucket) -> None:
    await bucket.config(kube, namespace)
    b = name("nolog")
    await make_backup(kube, namespace, bucket.store, b, log=False)
    async with ArkServer(kube, namespace, downloads):
        result = await run_cli(logs, b, "-n", namespace)
        assert result.exit_code == 1
        assert result.stderr.startswith(
            f"Error: the server could not find {b}/{b}-logs.gz: {b}/{b}-logs.gz does not exist in "
        )
        missing = await run_cli(logs, "nope", "-n", namespace)
        assert missing.exit_code == 1
        assert f"backup 'nope' not found in namespace {namespace}" in missing.stderr
        assert await eventually(lambda: no_requests_left(kube, namespace), "the DownloadRequests removed")


async def test_expired_requests_are_deleted_and_fresh_ones_kept(
    kube: KubeClient, namespace: str, bucket: Bucket
) -> None:
    await bucket.config(kube, namespace)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for rname, expiration in (
        ("expired", now - datetime.timedelta(seconds=1)),
        ("fresh", now + datetime.timedelta(minutes=5)),
    ):
        await kube.create(
            DOWNLOADREQUESTS,
            {
                "apiVersion": "ark.heptio.com/v1",
                "kind": "DownloadRequest",
                "metadata": {"name": rname},
                "spec": {"target": {"kind": "BackupLog", "name": "b"}},
            },
            namespace,
        )
        await kube.patch(
            DOWNLOADREQUESTS,
            rname,
            {
                "status": {
                    "phase": "Processed",
                    "downloadURL": "http://127.0.0.1:1/x",
                    "expiration": format_time(expiration),
                }
            },
            namespace,
            subresource="status",
        )
    async with ArkServer(kube, namespace, downloads):
        await eventually(lambda: _gone(kube, namespace, "expired"), "the expired request deleted")
    assert not await _gone(kube, namespace, "fresh")


async def _gone(kube: KubeClient, namespace: str, rname: str) -> bool:
    try:
        await kube.get(DOWNLOADREQUESTS, rname, namespace)
    except NotFound:
        return True
    return False


async def test_without_a_server_the_cli_says_so(kube: KubeClient, namespace: str) -> None:
    await kube.create(
        BACKUPS, {"apiVersion": "ark.heptio.com/v1", "kind": "Backup", "metadata": {"name": "b"}}, namespace
    )
    result = await run_cli(logs, "b", "--timeout", "1", "-n", namespace)
    assert result.exit_code == 1
    assert "the server did not answer the download request within 1s: is `ark server` running" in result.stderr
    assert await no_requests_left(kube, namespace)
