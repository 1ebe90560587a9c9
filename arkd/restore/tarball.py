"""Safe reader for Ark 0.9 backup tarballs.

The archive is read as a stream (never held in memory) and its item files are extracted to a
directory; objects are parsed only when `BackupContents.load` asks for them. The reader

* rejects absolute paths, `..` components, links, devices and FIFOs, naming the entry;
* reports any gzip or tar damage (bad magic, CRC or length mismatch, truncation, an invalid
  header anywhere in the archive) as "backup tarball is corrupt or truncated: ...";
* ignores regular files outside the Ark layout (e.g. Velero's `metadata/version`).

Headers are parsed here rather than with `tarfile`'s iterator because that iterator stops
silently at an invalid header after the first one, which would turn damage into a short restore.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

RESOURCES_DIR = "resources"
NAMESPACE_SCOPED_DIR = "namespaces"
CLUSTER_SCOPED_DIR = "cluster"

_BLOCK = tarfile.BLOCKSIZE
_COPY_CHUNK = 1 << 16
_MAX_META_BYTES = 1 << 20  # PAX / GNU long-name headers
DEFAULT_MAX_ENTRY_BYTES = 64 << 20

_REGULAR = {tarfile.REGTYPE, tarfile.AREGTYPE}
_META_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_LINKS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link"}
_SPECIAL = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


class BackupTarballError(ValueError):
    """The backup tarball cannot be used for a restore."""


class CorruptTarballError(BackupTarballError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"backup tarball is corrupt or truncated: {detail}")


class UnsafeTarballEntryError(BackupTarballError):
    def __init__(self, entry: str, why: str) -> None:
        self.entry = entry
        super().__init__(f"backup tarball entry {entry!r} rejected: {why}")


class BackupContents:
    """The extracted items of one backup, indexed as {group_resource: {namespace|None: [names]}}."""

    def __init__(
        self,
        root: Path,
        index: dict[str, dict[str | None, list[str]]],
        ignored: list[str],
        *,
        owns_root: bool,
    ) -> None:
        self.root = root
        self.index = index
        self.ignored = ignored
        self._owns_root = owns_root
        # Membership per item would scan a list: O(n^2) for a namespace of many objects.
        self._members = {(gr, ns, name) for gr, by_ns in index.items() for ns, names in by_ns.items() for name in names}

    def __enter__(self) -> BackupContents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the extracted files (the whole directory if the reader created it)."""
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(self.root / RESOURCES_DIR, ignore_errors=True)

    @property
    def empty(self) -> bool:
        return not self.index

    def group_resources(self) -> list[str]:
        return sorted(self.index)

    def namespaces(self, group_resource: str | None = None) -> list[str]:
        """Namespaces with items of `group_resource`, or of any resource when it is None."""
        grs = [group_resource] if group_resource is not None else list(self.index)
        found = {ns for gr in grs for ns in self.index.get(gr, {}) if ns is not None}
        return sorted(found)

    def names(self, group_resource: str, namespace: str | None) -> list[str]:
        return list(self.index.get(group_resource, {}).get(namespace, []))

    def has(self, group_resource: str, namespace: str | None, name: str) -> bool:
        return (group_resource, namespace, name) in self._members

    def path(self, group_resource: str, namespace: str | None, name: str) -> str:
        """The entry's path inside the archive (what Ark's messages show)."""
        return "/".join(_layout_parts(group_resource, namespace, name))

    def load(self, group_resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Parse one item; a BackupTarballError names the entry if it is missing or not a JSON object."""
        entry = self.path(group_resource, namespace, name)
        if not self.has(group_resource, namespace, name):
            raise BackupTarballError(f"backup tarball has no entry {entry}")
        try:
            obj = orjson.loads((self.root / entry).read_bytes())
        except orjson.JSONDecodeError as exc:
            raise BackupTarballError(f"error decoding {entry}: {exc}") from exc
        if not isinstance(obj, dict):
            raise BackupTarballError(f"error decoding {entry}: not a JSON object")
        return obj

    def items(self, group_resource: str, namespace: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, object) pairs, loaded one at a time."""
        for name in self.names(group_resource, namespace):
            yield name, self.load(group_resource, namespace, name)


def _layout_parts(group_resource: str, namespace: str | None, name: str) -> list[str]:
    if namespace is None:
        return [RESOURCES_DIR, group_resource, CLUSTER_SCOPED_DIR, f"{name}.json"]
    return [RESOURCES_DIR, group_resource, NAMESPACE_SCOPED_DIR, namespace, f"{name}.json"]


def _safe_parts(name: str) -> list[str]:
    """Normalised path components of an entry, or UnsafeTarballEntryError."""
    if not name:
        raise UnsafeTarballEntryError(name, "empty path")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeTarballEntryError(name, "absolute path")
    if "\x00" in name:
        raise UnsafeTarballEntryError(name, "NUL byte in path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTarballEntryError(name, "path contains '..'")
    return parts


def _parse_layout(parts: list[str]) -> tuple[str, str | None, str] | None:
    if len(parts) < 4 or parts[0] != RESOURCES_DIR or not parts[-1].endswith(".json"):
        return None
    name = parts[-1][: -len(".json")]
    if not name:
        return None
    if len(parts) == 4 and parts[2] == CLUSTER_SCOPED_DIR:
        return parts[1], None, name
    if len(parts) == 5 and parts[2] == NAMESPACE_SCOPED_DIR:
        return parts[1], parts[3], name
    return None


class _GzipStream:
    """Reads the decompressed archive, turning every gzip failure into CorruptTarballError."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self.offset = 0

    def read(self, size: int) -> bytes:
        try:
            data = self._gz.read(size)
        except EOFError as exc:
            raise CorruptTarballError(f"the gzip stream ends early ({exc})") from exc
        except gzip.BadGzipFile as exc:
            raise CorruptTarballError(f"bad gzip data ({exc})") from exc
        except zlib.error as exc:
            raise CorruptTarballError(f"bad compressed data ({exc})") from exc
        self.offset += len(data)
        return data

    def read_exact(self, size: int, what: str) -> bytes:
        chunks: list[bytes] = []
        left = size
        while left > 0:
            data = self.read(min(left, _COPY_CHUNK))
            if not data:
                raise CorruptTarballError(f"unexpected end of archive in {what}")
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)

    def skip(self, size: int, what: str) -> None:
        left = size
        while left > 0:
            data = self.read(min(left, _COPY_CHUNK))
            if not data:
                raise CorruptTarballError(f"unexpected end of archive in {what}")
            left -= len(data)

    def drain(self) -> None:
        """Read to the end so gzip's CRC and length trailer get checked."""
        while self.read(_COPY_CHUNK):
            pass


def _parse_pax(data: bytes, entry_offset: int) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise CorruptTarballError(f"invalid PAX header at offset {entry_offset}")
        key, sep, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not sep:
            raise CorruptTarballError(f"invalid PAX record at offset {entry_offset}")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


_Index = dict[str, dict[str | None, set[str]]]


def _extract(raw: IO[bytes], root: Path, max_entry_bytes: int) -> tuple[_Index, list[str]]:
    stream = _GzipStream(raw)
    index: _Index = {}
    ignored: list[str] = []
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        offset = stream.offset
        first = stream.read(_BLOCK)
        if not first:
            break  # a clean end at a header boundary without the end marker is accepted, as Go does
        block = first
        if len(block) < _BLOCK:
            block += stream.read_exact(_BLOCK - len(block), f"the tar header at offset {offset}")
        if block.count(0) == _BLOCK:
            break  # end-of-archive marker; whatever follows is padding
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise CorruptTarballError(f"invalid tar header at offset {offset} ({exc})") from exc
        size = info.size
        if info.type in _META_TYPES:
            if size > _MAX_META_BYTES:
                raise CorruptTarballError(f"oversized extended header at offset {offset}")
            data = stream.read_exact(_padded(size), f"the extended header at offset {offset}")[:size]
            if info.type == tarfile.XHDTYPE:
                pax = _parse_pax(data, offset)
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue  # global PAX headers and long link names do not matter here
        name = pax.get("path") or long_name or info.name
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError as exc:
                raise CorruptTarballError(f"invalid PAX size for {name!r}") from exc
        pax, long_name = {}, None
        parts = _safe_parts(name)
        if info.type in _LINKS:
            raise UnsafeTarballEntryError(name, f"{_LINKS[info.type]} (links are not allowed)")
        if info.type in _SPECIAL:
            raise UnsafeTarballEntryError(
                name, f"{_SPECIAL[info.type]} (only files and directories are allowed)"
            )
        if info.type == tarfile.DIRTYPE:
            stream.skip(_padded(size), f"directory entry {name!r}")
            continue
        if info.type not in _REGULAR:
            raise UnsafeTarballEntryError(name, f"unsupported entry type {info.type!r}")
        layout = _parse_layout(parts)
        if layout is None:
            ignored.append("/".join(parts))
            stream.skip(_padded(size), f"entry {name!r}")
            continue
        if size > max_entry_bytes:
            raise BackupTarballError(
                f"backup tarball entry {name!r} is {size} bytes, more than the {max_entry_bytes} byte limit"
            )
        gr, namespace, item = layout
        target = root.joinpath(*_layout_parts(gr, namespace, item))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            left = size
            while left > 0:
                data = stream.read(min(left, _COPY_CHUNK))
                if not data:
                    raise CorruptTarballError(f"unexpected end of archive in entry {name!r}")
                out.write(data)
                left -= len(data)
        stream.skip(_padded(size) - size, f"entry {name!r}")
        index.setdefault(gr, {}).setdefault(namespace, set()).add(item)
    stream.drain()
    return index, ignored


def extract_tarball(
    source: bytes | str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str] | None = None,
    *,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> BackupContents:
    """Extract an Ark backup tarball from bytes, a path or a binary file object.

    Without `dest` a private temporary directory is created and removed by `cleanup()`; on any
    error nothing extracted is left behind.
    """
    owns_root = dest is None
    root = Path(tempfile.mkdtemp(prefix="arkd-restore-")) if dest is None else Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(source, bytes):
            index, ignored = _extract(io.BytesIO(source), root, max_entry_bytes)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                index, ignored = _extract(fh, root, max_entry_bytes)
        else:
            index, ignored = _extract(source, root, max_entry_bytes)
    except BaseException:
        if owns_root:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(root / RESOURCES_DIR, ignore_errors=True)
        raise
    final = {gr: {ns: sorted(names) for ns, names in by_ns.items()} for gr, by_ns in index.items()}
    return BackupContents(root, final, ignored, owns_root=owns_root)


async def extract_tarball_stream(
    chunks: AsyncIterator[bytes],
    dest: str | os.PathLike[str] | None = None,
    *,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> BackupContents:
    """Download (e.g. `ObjectStore.get_stream`) to a spool file, then extract it off the event loop.

    The compressed spool lives in its own temporary file and is removed before returning.
    """
    fd, spool_name = tempfile.mkstemp(prefix="arkd-restore-", suffix=".tar.gz")
    spool = Path(spool_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                await asyncio.to_thread(fh.write, chunk)
        return await asyncio.to_thread(extract_tarball, spool, dest, max_entry_bytes=max_entry_bytes)
    finally:
        await asyncio.to_thread(spool.unlink, missing_ok=True)
