"""Backup tarballs: the streaming writer's Ark 0.9 layout and the restore reader's safety checks."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from arkd.backup.tarball import TarballError, TarballWriter, entry_header, gzip_bytes, gzip_json, item_path
from arkd.restore.tarball import (
    BackupTarballError,
    CorruptTarballError,
    UnsafeTarballEntryError,
    extract_tarball,
    extract_tarball_stream,
)

FIXED_NOW = 1_700_000_000.0

ITEMS: list[tuple[str, str | None, str, dict[str, Any]]] = [
    (
        "pods",
        "app",
        "web-0",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "app"}},
    ),
    (
        "persistentvolumeclaims",
        "app",
        "data",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "app"},
        },
    ),
    (
        "persistentvolumes",
        None,
        "pv-1",
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"}},
    ),
    (
        "deployments.apps",
        "app",
        "web",
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "app"}},
    ),
    ("clusterroles.rbac.authorization.k8s.io", None, "system:aggregate-to-edit", {"kind": "ClusterRole"}),
]


async def write_all(
    items: list[tuple[str, str | None, str, dict[str, Any]]], **kwargs: Any
) -> tuple[bytes, TarballWriter]:
    writer = TarballWriter(clock=lambda: FIXED_NOW, **kwargs)
    out = bytearray()

    async def consume() -> None:
        async for chunk in writer.chunks():
            out.extend(chunk)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(consume())
        for gr, ns, name, obj in items:
            await writer.add(gr, ns, name, obj)
        await writer.close()
    return bytes(out), writer


def make_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --------------------------------------------------------------------------- writer


async def test_writer_produces_ark_layout_that_tar_and_the_reader_both_understand(tmp_path: Path) -> None:
    data, writer = await write_all(ITEMS)

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [
            "resources/pods/namespaces/app/web-0.json",
            "resources/persistentvolumeclaims/namespaces/app/data.json",
            "resources/persistentvolumes/cluster/pv-1.json",
            "resources/deployments.apps/namespaces/app/web.json",
            "resources/clusterroles.rbac.authorization.k8s.io/cluster/system:aggregate-to-edit.json",
        ]
        for member, (_, _, _, obj) in zip(members, ITEMS, strict=True):
            assert member.isreg()
            assert member.mode == 0o755
            assert member.mtime == int(FIXED_NOW)
            body = tf.extractfile(member)
            assert body is not None
            assert body.read() == orjson.dumps(obj)  # compact JSON, as Go's json.Marshal

    assert writer.items == len(ITEMS)
    assert writer.counts["pods"] == 1 and writer.counts["deployments.apps"] == 1
    assert writer.compressed_size == len(data)

    with extract_tarball(data, tmp_path / "x") as contents:
        assert contents.index == {
            "pods": {"app": ["web-0"]},
            "persistentvolumeclaims": {"app": ["data"]},
            "persistentvolumes": {None: ["pv-1"]},
            "deployments.apps": {"app": ["web"]},
            "clusterroles.rbac.authorization.k8s.io": {None: ["system:aggregate-to-edit"]},
        }
        for gr, ns, name, obj in ITEMS:
            assert contents.load(gr, ns, name) == obj
        assert contents.namespaces() == ["app"]
        assert contents.path("pods", "app", "web-0") == "resources/pods/namespaces/app/web-0.json"
    assert not (tmp_path / "x" / "resources").exists()


async def test_long_names_round_trip() -> None:
    name = "n" * 240
    data, _ = await write_all([("configmaps", "ns-" + "x" * 60, name, {"data": {"k": "v"}})])
    with extract_tarball(data) as contents:
        assert contents.names("configmaps", "ns-" + "x" * 60) == [name]
        assert contents.load("configmaps", "ns-" + "x" * 60, name) == {"data": {"k": "v"}}


def tarfile_header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.type, info.mtime = size, 0o755, tarfile.REGTYPE, mtime
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "path",
    [
        "resources/configmaps/namespaces/app/settings.json",
        "resources/" + "p" * 90,  # exactly 100 bytes: the longest plain ustar name
        "resources/" + "p" * 91,  # 101 bytes: needs the PAX extended header
        "resources/configmaps/namespaces/app/caf\u00e9.json",  # not ASCII: PAX too
    ],
)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 8**11 - 1, 8**11])
def test_item_headers_are_what_tarfile_writes(path: str, size: int) -> None:
    mtime = int(FIXED_NOW)
    ours, theirs = entry_header(path, size, mtime), tarfile_header(path, size, mtime)
    # Older tarfile releases wrote "0000000" device numbers for regular files; both mean "none".
    dev = slice(len(ours) - 512 + 329, len(ours) - 512 + 345)
    assert ours[: dev.start] + ours[dev.stop :] == theirs[: dev.start] + theirs[dev.stop :]
    parsed = tarfile.TarFile(fileobj=io.BytesIO(ours + b"\0" * (-size % 512 + 1024)), mode="r").next()
    assert parsed is not None
    assert (parsed.name, parsed.size, parsed.mtime, parsed.mode, parsed.type) == (
        path, size, mtime, 0o755, tarfile.REGTYPE,
    )


async def test_writer_streams_in_bounded_chunks_and_never_buffers_the_backup() -> None:
    chunk_size, pending = 4096, 2
    writer = TarballWriter(chunk_size=chunk_size, max_pending_chunks=pending)
    # Incompressible-ish payload so the archive is many times the buffer bound.
    items = [("configmaps", "ns", f"cm-{i}", {"data": {"blob": os.urandom(600).hex()}}) for i in range(5000)]
    largest_item = max(len(orjson.dumps(obj)) for *_, obj in items) + 2048
    # Between adds: a partial chunk plus the queue. While an add runs: plus one burst from zlib,
    # whose internal state is bounded (window + pending buffer, well under 256 KiB at level 6).
    bound = chunk_size * (pending + 1) + largest_item
    transient_bound = bound + (256 << 10)
    seen: list[int] = []
    total = 0

    async def consume() -> None:
        nonlocal total
        async for chunk in writer.chunks():
            assert len(chunk) <= chunk_size
            seen.append(writer.buffered_bytes)
            total += len(chunk)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(consume())
        for gr, ns, name, obj in items:
            await writer.add(gr, ns, name, obj)
            assert writer.buffered_bytes <= bound
        await writer.close()

    assert total == writer.compressed_size > 10 * transient_bound
    assert len(seen) > 100 and max(seen) <= transient_bound
    assert writer.buffered_bytes == 0


async def test_abort_makes_the_upload_fail_instead_of_storing_a_truncated_archive() -> None:
    writer = TarballWriter()
    await writer.add(*ITEMS[0])

    async def consume() -> bytes:
        return b"".join([c async for c in writer.chunks()])

    task = asyncio.create_task(consume())
    writer.abort(RuntimeError("listing pods failed"))
    with pytest.raises(RuntimeError, match="listing pods failed"):
        await task
    with pytest.raises(TarballError, match="aborted"):
        await writer.add(*ITEMS[1])


async def test_producer_fails_when_the_consumer_stops_reading() -> None:
    writer = TarballWriter(chunk_size=64, max_pending_chunks=1)
    stream = writer.chunks()

    async def read_one_then_stop() -> None:
        await stream.__anext__()
        await stream.aclose()

    reader = asyncio.create_task(read_one_then_stop())
    with pytest.raises(TarballError, match="consumer stopped reading"):
        for i in range(1000):
            await writer.add("configmaps", "ns", f"cm-{i}", {"data": {"k": os.urandom(64).hex()}})
    await reader


@pytest.mark.parametrize(
    ("gr", "ns", "name"),
    [
        ("pods", "ns", "../escape"),
        ("pods", "..", "x"),
        ("pods", "ns", "a/b"),
        ("pods", "ns", ""),
        ("", None, "x"),
    ],
)
async def test_items_that_cannot_be_a_path_are_refused_and_the_archive_stays_valid(
    gr: str, ns: str | None, name: str
) -> None:
    writer = TarballWriter()
    out = bytearray()

    async def consume() -> None:
        async for chunk in writer.chunks():
            out.extend(chunk)

    task = asyncio.create_task(consume())
    with pytest.raises(TarballError, match="invalid"):
        await writer.add(gr, ns, name, {})
    await writer.add(*ITEMS[0])
    await writer.close()
    await task
    with extract_tarball(bytes(out)) as contents:
        assert contents.index == {"pods": {"app": ["web-0"]}}


def test_item_path_matches_ark_output_file_format() -> None:
    assert item_path("jobs.batch", "ns", "j") == "resources/jobs.batch/namespaces/ns/j.json"
    assert item_path("namespaces", None, "ns") == "resources/namespaces/cluster/ns.json"


def test_gzip_helpers_round_trip() -> None:
    assert gzip.decompress(gzip_bytes("log line\n")) == b"log line\n"
    results = {"warnings": {"ark": [], "cluster": [], "namespaces": {}}, "errors": {"ark": ["x"]}}
    assert orjson.loads(gzip.decompress(gzip_json(results))) == results


# --------------------------------------------------------------------------- reader: safety


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "'..'"),
        ("resources/pods/namespaces/../../../etc/x.json", "'..'"),
        ("/etc/x", "absolute path"),
        ("/resources/pods/cluster/x.json", "absolute path"),
    ],
)
def test_reader_rejects_paths_escaping_the_extraction_dir(tmp_path: Path, name: str, why: str) -> None:
    data = make_tar([("resources/pods/namespaces/a/ok.json", b"{}"), (name, b"{}")])
    with pytest.raises(UnsafeTarballEntryError) as err:
        extract_tarball(data, tmp_path / "out")
    assert name in str(err.value) and why in str(err.value)
    # nothing is left behind, including the file extracted before the bad entry
    assert not (tmp_path / "out" / "resources").exists()
    assert not any(p.name == "x" for p in tmp_path.rglob("x"))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_reader_rejects_links_and_devices(kind: bytes, message: str) -> None:
    info = tarfile.TarInfo("resources/secrets/namespaces/a/s.json")
    info.type = kind
    info.linkname = "/etc/shadow"
    with pytest.raises(UnsafeTarballEntryError, match=message) as err:
        extract_tarball(make_tar([info]))
    assert "resources/secrets/namespaces/a/s.json" in str(err.value)


def test_reader_accepts_other_writers_formats_and_ignores_foreign_files() -> None:
    long_name = "p" * 90  # > 100 chars with its directory: ustar prefix, GNU longname or PAX path
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        directory = tarfile.TarInfo("resources/pods")
        directory.type = tarfile.DIRTYPE
        data = make_tar(
            [
                directory,
                (f"./resources/pods/namespaces/a/{long_name}.json", b'{"kind":"Pod"}'),
                ("metadata/version", b"1.1.0"),  # Velero >= 0.11
                ("resources/pods/namespaces/a/not-json.txt", b"x"),
            ],
            fmt=fmt,
        )
        with extract_tarball(data) as contents:
            assert contents.index == {"pods": {"a": [long_name]}}
            assert contents.load("pods", "a", long_name) == {"kind": "Pod"}
            assert contents.ignored == ["metadata/version", "resources/pods/namespaces/a/not-json.txt"]


# --------------------------------------------------------------------------- reader: damage


async def test_truncated_gzip_is_reported_wherever_the_cut_is() -> None:
    data, _ = await write_all(ITEMS)
    for cut in (len(data) - 1, len(data) - 4, len(data) - 8, len(data) // 2, 11, 1):
        with pytest.raises(CorruptTarballError, match=r"^backup tarball is corrupt or truncated: "):
            extract_tarball(data[:cut])


async def test_flipped_bytes_are_reported_as_corruption() -> None:
    data, _ = await write_all(ITEMS)
    for pos in (len(data) // 2, len(data) - 6):  # deflate data, then the CRC itself
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        with pytest.raises(CorruptTarballError):
            extract_tarball(bytes(damaged))


def test_not_a_gzip_file_is_reported() -> None:
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("resources/pods/cluster/x.json"))
    with pytest.raises(CorruptTarballError, match="gzip"):
        extract_tarball(plain.getvalue())


def test_invalid_tar_header_in_the_middle_is_reported() -> None:
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in ("resources/pods/namespaces/a/one.json", "resources/pods/namespaces/a/two.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    raw = bytearray(good.getvalue())
    raw[1024 + 148 : 1024 + 156] = b"0000000\0"  # wrong checksum on the second header
    with pytest.raises(CorruptTarballError, match="invalid tar header at offset 1024"):
        extract_tarball(gzip.compress(bytes(raw)))


def test_tar_ending_inside_an_entry_is_reported() -> None:
    info = tarfile.TarInfo("resources/pods/namespaces/a/one.json")
    info.size = 4000
    header = info.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(CorruptTarballError, match="unexpected end of archive"):
        extract_tarball(gzip.compress(header + b"{" * 100))


def test_oversized_entry_is_refused() -> None:
    data = make_tar([("resources/configmaps/namespaces/a/big.json", b"{" + b" " * 5000 + b"}")])
    with pytest.raises(BackupTarballError, match="more than the 1024 byte limit"):
        extract_tarball(data, max_entry_bytes=1024)


def test_bad_json_is_reported_per_item_with_its_path() -> None:
    data = make_tar(
        [
            ("resources/pods/namespaces/a/bad.json", b"{not json"),
            ("resources/pods/namespaces/a/ok.json", b"{}"),
        ]
    )
    with extract_tarball(data) as contents:
        assert contents.load("pods", "a", "ok") == {}
        with pytest.raises(BackupTarballError, match=r"error decoding resources/pods/namespaces/a/bad\.json"):
            contents.load("pods", "a", "bad")
        with pytest.raises(BackupTarballError, match="no entry"):
            contents.load("pods", "a", "missing")


async def test_extract_from_an_async_stream(tmp_path: Path) -> None:
    data, _ = await write_all(ITEMS)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 37):
            yield data[i : i + 37]

    contents = await extract_tarball_stream(chunks(), tmp_path / "restore")
    try:
        assert contents.load("persistentvolumes", None, "pv-1")["metadata"]["name"] == "pv-1"
        assert sorted(p.name for p in (tmp_path / "restore").iterdir()) == ["resources"]
    finally:
        contents.cleanup()

    async def truncated() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]

    with pytest.raises(CorruptTarballError):
        await extract_tarball_stream(truncated(), tmp_path / "restore2")
    assert not (tmp_path / "restore2" / "resources").exists()
