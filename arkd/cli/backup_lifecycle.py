"""`ark backup delete|logs|download` and `ark restore logs`.

Deletion goes through a DeleteBackupRequest that the server processes. Logs and contents go
through a DownloadRequest: the server answers with a URL valid for 10 minutes (http(s) for S3, a
`file://` path for the local store), the CLI reads it and deletes the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import click

from arkd.api import constants as c
from arkd.cli.context import CliError, cli_context, global_options, run_async, with_client
from arkd.controllers.deletion import new_delete_backup_request
from arkd.controllers.download import DownloadTargetError, download_key, is_restore_kind
from arkd.controllers.resources import BACKUPS, DELETEBACKUPREQUESTS, DOWNLOADREQUESTS, RESTORES
from arkd.kube.client import KubeClient
from arkd.kube.errors import ApiError, NotFound
from arkd.kube.resource import EVENTS

Obj = dict[str, Any]
Sink = Callable[[bytes], Awaitable[None]]

CHUNK = 256 * 1024
POLL_SECONDS = 0.25
# The server records the reason for a failed download as an Event; give it a moment to land.
EVENT_WAIT_SECONDS = 3.0
DEFAULT_TIMEOUT = 60.0

timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the server to answer.",
)


# -- delete ------------------------------------------------------------------------------------------
@click.command("delete")
@click.argument("name")
@click.option("--confirm", is_flag=True, help="Confirm the deletion without asking.")
@click.option("--wait", is_flag=True, help="Wait until the server has deleted it; exit non-zero if it could not.")
@global_options
@run_async
async def delete(name: str, confirm: bool, wait: bool) -> None:
    """Delete a backup: its files in object storage, its restic snapshots, its restores, and the Backup."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        try:
            backup = await client.get(BACKUPS, name, ns)
        except NotFound:
            raise CliError(f"backup {name!r} not found in namespace {ns} (`ark backup get` lists them)") from None
        if not confirm and not click.confirm(
            f"Delete backup {name!r} and all its data? Are you sure you want to continue", default=False
        ):
            click.echo("Backup not deleted.")
            return
        uid = str(backup["metadata"].get("uid") or "")
        request = await client.create(DELETEBACKUPREQUESTS, new_delete_backup_request(name, uid, ns), ns)
        click.echo(f'Request to delete backup "{name}" submitted successfully.')
        if not wait:
            click.echo(
                "The backup will be fully deleted after all associated data (restic snapshots, backup "
                "files, restores) are removed."
            )
            return
        await _wait_deleted(client, ns, name, str(request["metadata"]["name"]))

    await with_client(go)


async def _wait_deleted(client: KubeClient, ns: str, backup: str, request: str) -> None:
    while True:
        try:
            obj = await client.get(DELETEBACKUPREQUESTS, request, ns)
        except NotFound:
            # Removed because another request for the same backup succeeded first.
            try:
                await client.get(BACKUPS, backup, ns)
            except NotFound:
                click.echo(f"Backup {backup} deleted.")
                return
            raise CliError(f"the deletion request {request} was removed before it was processed") from None
        status = obj.get("status") or {}
        if status.get("phase") == c.DeleteBackupRequestPhase.PROCESSED:
            errors = status.get("errors") or []
            if errors:
                raise CliError(f"backup {backup} was not deleted: " + "; ".join(errors))
            click.echo(f"Backup {backup} deleted.")
            return
        await asyncio.sleep(POLL_SECONDS)


# -- downloads ---------------------------------------------------------------------------------------
async def _target_key(client: KubeClient, ns: str, kind: str, name: str) -> str:
    """The object the server will look for, checking the Backup or Restore exists first."""
    if is_restore_kind(kind):
        try:
            restore = await client.get(RESTORES, name, ns)
        except NotFound:
            raise CliError(f"restore {name!r} not found in namespace {ns} (`ark restore get` lists them)") from None
        backup = str((restore.get("spec") or {}).get("backupName") or "") or None
    else:
        try:
            await client.get(BACKUPS, name, ns)
        except NotFound:
            raise CliError(f"backup {name!r} not found in namespace {ns} (`ark backup get` lists them)") from None
        backup = name
    try:
        return download_key(kind, name, backup)
    except DownloadTargetError as exc:
        raise CliError(str(exc)) from None


async def _failure_reason(client: KubeClient, ns: str, request: Obj) -> str:
    meta = request["metadata"]
    selector = f"involvedObject.name={meta['name']},involvedObject.kind={c.DOWNLOAD_REQUEST_KIND}"
    deadline = time.monotonic() + EVENT_WAIT_SECONDS
    while True:
        events = await client.list(EVENTS, ns, field_selector=selector)
        warnings = [e for e in events if e.get("type") == "Warning" and e.get("message")]
        if warnings:
            return str(warnings[-1]["message"])
        if time.monotonic() >= deadline:
            return "the server gave no reason; see the ark server log"
        await asyncio.sleep(POLL_SECONDS)


async def request_download(client: KubeClient, ns: str, kind: str, name: str, timeout: float) -> tuple[Obj, str]:
    """Create a DownloadRequest, wait until the server processed it; returns it and its URL."""
    key = await _target_key(client, ns, kind, name)
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.DOWNLOAD_REQUEST_KIND,
        "metadata": {"generateName": f"{name}-", "namespace": ns},
        "spec": {"target": {"kind": kind, "name": name}},
    }
    request = await client.create(DOWNLOADREQUESTS, body, ns)
    try:
        deadline = time.monotonic() + timeout
        while True:
            obj = await client.get(DOWNLOADREQUESTS, request["metadata"]["name"], ns)
            status = obj.get("status") or {}
            if status.get("phase") == c.DownloadRequestPhase.PROCESSED:
                break
            if time.monotonic() >= deadline:
                raise CliError(
                    f"the server did not answer the download request within {timeout:.0f}s: is `ark server` "
                    f"running for namespace {ns}? (`kubectl -n {ns} get pods`; its log says why)"
                )
            await asyncio.sleep(POLL_SECONDS)
        url = str(status.get("downloadURL") or "")
        if not url:
            raise CliError(f"the server could not find {key}: {await _failure_reason(client, ns, obj)}")
        return obj, url
    except BaseException:
        await _delete_request(client, ns, request)
        raise


async def _delete_request(client: KubeClient, ns: str, request: Obj) -> None:
    with contextlib.suppress(ApiError):
        await client.delete(DOWNLOADREQUESTS, request["metadata"]["name"], ns)


async def read_url(url: str) -> AsyncIterator[bytes]:
    """The bytes behind a download URL: http(s) (S3 presigned) or file:// (the local store)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise CliError(
                f"cannot read {path}: {exc.strerror} (the local storage provider keeps files on the ark "
                "server's filesystem; run the CLI where that directory is mounted)"
            ) from None
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()
        return
    if parts.scheme not in ("http", "https"):
        raise CliError(f"the server returned a download URL this CLI cannot read: {url[:80]}")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=60)) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                raise CliError(f"downloading from object storage failed: HTTP {resp.status}: {text}")
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk
    except aiohttp.ClientError as exc:
        raise CliError(f"downloading from object storage ({parts.netloc}) failed: {exc}") from None


async def gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Decompress a gzip stream (several members allowed), chunk by chunk."""
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        data = chunk
        while data:
            out = decoder.decompress(data)
            if out:
                yield out
            data = decoder.unused_data
            if decoder.eof:
                decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            else:
                data = b""
    tail = decoder.flush()
    if tail:
        yield tail


async def _print_log(kind: str, name: str, timeout: float) -> None:
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        request, url = await request_download(client, ns, kind, name, timeout)
        try:
            async for data in gunzip(read_url(url)):
                click.echo(data, nl=False)
        except zlib.error as exc:
            raise CliError(f"the {kind} of {name} is not valid gzip data: {exc}") from None
        finally:
            await _delete_request(client, ns, request)

    await with_client(go)


@click.command("logs")
@click.argument("name")
@timeout_option
@global_options
@run_async
async def logs(name: str, timeout: float) -> None:
    """Print the log of a backup."""
    await _print_log(c.DownloadTargetKind.BACKUP_LOG.value, name, timeout)


@click.command("logs")
@click.argument("name")
@timeout_option
@global_options
@run_async
async def restore_logs(name: str, timeout: float) -> None:
    """Print the log of a restore."""
    await _print_log(c.DownloadTargetKind.RESTORE_LOG.value, name, timeout)


@click.command("download")
@click.argument("name")
@click.option(
    "-o", "--output", "output", default=None, metavar="PATH", help="Where to write it (default <name>-data.tar.gz)."
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@timeout_option
@global_options
@run_async
async def download(name: str, output: str | None, force: bool, timeout: float) -> None:
    """Download the contents of a backup (a gzip-compressed tarball of its resources)."""
    ns = cli_context().namespace
    target = _output_path(name, output, force)

    async def go(client: KubeClient) -> None:
        request, url = await request_download(client, ns, c.DownloadTargetKind.BACKUP_CONTENTS.value, name, timeout)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            # Written beside the target and renamed, so a failed download never leaves half a file.
            with os.fdopen(fd, "wb") as f:
                async for data in read_url(url):
                    await asyncio.to_thread(f.write, data)
            await asyncio.to_thread(tmp.replace, target)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink)
            raise
        finally:
            await _delete_request(client, ns, request)
        click.echo(f"Backup {name} has been successfully downloaded to {target}")

    await with_client(go)


def _output_path(name: str, output: str | None, force: bool) -> Path:
    target = Path(output or f"{name}-data.tar.gz").absolute()
    if target.exists() and not force:
        raise CliError(f"{target} already exists; use --force to overwrite it or -o to choose another file")
    if not target.parent.is_dir():
        raise CliError(f"cannot write {target}: directory {target.parent} does not exist")
    return target
