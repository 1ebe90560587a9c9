"""Streaming writer for Ark 0.9 backup tarballs (`<backup>.tar.gz`).

Layout (docs/output-file-format.md@v0.9.0):
    resources/<group-resource>/namespaces/<namespace>/<name>.json
    resources/<group-resource>/cluster/<name>.json
Each entry is the object as compact JSON, a regular file with mode 0755 and mtime "now".

`TarballEncoder` is the synchronous core (item in, compressed bytes out); `TarballWriter` puts
it behind a bounded queue so a producer (`add`) and a consumer (`chunks()`, e.g. the object
store's streaming put) run concurrently while memory stays at one item plus a few chunks.
"""

from __future__ import annotations

import asyncio
import gzip
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import orjson

RESOURCES_DIR = "resources"
NAMESPACE_SCOPED_DIR = "namespaces"
CLUSTER_SCOPED_DIR = "cluster"

_BLOCK = tarfile.BLOCKSIZE  # 512
_DEFAULT_CHUNK = 1 << 20


class TarballError(RuntimeError):
    """The tarball could not be written (bad item or the consumer went away)."""


def _check_segment(what: str, value: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\x00" in value:
        raise TarballError(f"cannot write item to tarball: invalid {what} {value!r}")


def item_path(group_resource: str, namespace: str | None, name: str) -> str:
    """The archive path of one item; raises TarballError for names that cannot be a path segment."""
    _check_segment("group-resource", group_resource)
    _check_segment("name", name)
    if namespace:
        _check_segment("namespace", namespace)
        return f"{RESOURCES_DIR}/{group_resource}/{NAMESPACE_SCOPED_DIR}/{namespace}/{name}.json"
    return f"{RESOURCES_DIR}/{group_resource}/{CLUSTER_SCOPED_DIR}/{name}.json"


# The fixed parts of a ustar header for a regular file with mode 0755, uid/gid 0, no owner names, and
# empty device fields (as tarfile and Go's archive/tar write them for regular files).
_MODE_UID_GID = b"0000755\x000000000\x000000000\x00"
_CHECKSUM_PLACEHOLDER = b" " * 8
_AFTER_CHECKSUM = (
    tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC + b"\0" * 64 + b"\0" * 16 + b"\0" * 167
)
_MAX_OCTAL_11 = 8**11


def entry_header(path: str, size: int, mtime: int) -> bytes:
    """The tar header of one item, the same as `TarInfo.tobuf(PAX_FORMAT)` gives.

    Item headers are most of the encoder's work, and `tobuf` builds a dict and a dozen fields per
    call; the plain-ustar case (ASCII path of at most 100 bytes, which nearly every item is) is built
    here directly. Anything else goes through tarfile, which adds the PAX extended header, like Go's
    archive/tar does for long names.
    """
    if path.isascii() and len(path) <= 100 and 0 <= size < _MAX_OCTAL_11 and 0 <= mtime < _MAX_OCTAL_11:
        block = b"".join((
            path.encode("ascii").ljust(100, b"\0"),
            _MODE_UID_GID,
            b"%011o\x00" % size,
            b"%011o\x00" % mtime,
            _CHECKSUM_PLACEHOLDER,
            _AFTER_CHECKSUM,
        ))
        return block[:148] + b"%06o\x00 " % sum(block) + block[156:]
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o755
    info.type = tarfile.REGTYPE
    info.mtime = mtime
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class TarballEncoder:
    """Synchronous tar + gzip encoder: each call returns the compressed bytes produced so far."""

    def __init__(self, *, compresslevel: int = 6, clock: Callable[[], float] = time.time) -> None:
        # wbits=31 -> gzip container around raw deflate, one member for the whole archive.
        self._zlib = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)
        self._clock = clock
        self._finished = False
        self.counts: Counter[str] = Counter()
        self.items = 0
        self.uncompressed_size = 0
        self.compressed_size = 0

    def add(self, group_resource: str, namespace: str | None, name: str, obj: Mapping[str, Any]) -> bytes:
        if self._finished:
            raise TarballError("cannot add items to a finished tarball")
        path = item_path(group_resource, namespace, name)
        data = orjson.dumps(obj)
        header = entry_header(path, len(data), int(self._clock()))
        padding = b"\0" * (-len(data) % _BLOCK)
        out = self._compress(b"".join((header, data, padding)))  # one zlib call per item, not three
        self.counts[group_resource] += 1
        self.items += 1
        return out

    def finish(self) -> bytes:
        """End-of-archive marker (two zero blocks) plus the gzip trailer."""
        if self._finished:
            return b""
        self._finished = True
        out = self._compress(b"\0" * (2 * _BLOCK))
        tail = self._zlib.flush()
        self.compressed_size += len(tail)
        return out + tail

    def _compress(self, raw: bytes) -> bytes:
        self.uncompressed_size += len(raw)
        out = self._zlib.compress(raw)
        self.compressed_size += len(out)
        return out


class TarballWriter:
    """Async, backpressured tarball stream.

    Typical use (the upload consumes while items are added)::

        writer = TarballWriter()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(store.put(key, writer.chunks()))
            for item in items:
                await writer.add(gr, ns, name, obj)
            await writer.close()

    On a producer failure call `abort(exc)` so the consumer raises instead of uploading a
    truncated archive that looks complete.
    """

    def __init__(
        self,
        *,
        chunk_size: int = _DEFAULT_CHUNK,
        max_pending_chunks: int = 4,
        compresslevel: int = 6,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chunk_size <= 0 or max_pending_chunks <= 0:
            raise ValueError("chunk_size and max_pending_chunks must be positive")
        self._encoder = TarballEncoder(compresslevel=compresslevel, clock=clock)
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(max_pending_chunks)
        self._queued_bytes = 0
        self._closed = False
        self._aborted = False
        self._consumer_gone = False
        self._consumed = False

    # ---- stats

    @property
    def items(self) -> int:
        return self._encoder.items

    @property
    def counts(self) -> dict[str, int]:
        """Items written per group-resource."""
        return dict(self._encoder.counts)

    @property
    def compressed_size(self) -> int:
        return self._encoder.compressed_size

    @property
    def uncompressed_size(self) -> int:
        return self._encoder.uncompressed_size

    @property
    def buffered_bytes(self) -> int:
        """Compressed bytes held by the writer (partial chunk plus queued chunks)."""
        return len(self._buffer) + self._queued_bytes

    # ---- producer side

    async def add(
        self, group_resource: str, namespace: str | None, name: str, obj: Mapping[str, Any]
    ) -> None:
        """Append one item; waits while the consumer is behind. Raises TarballError on a bad item
        (nothing is written for it, the archive stays valid)."""
        self._check_open()
        self._buffer += self._encoder.add(group_resource, namespace, name, obj)
        await self._flush_full_chunks()

    async def close(self) -> None:
        """Finish the archive and end the chunk stream."""
        self._check_open()
        self._closed = True
        # zlib may hold back a window's worth of output until the final flush.
        self._buffer += self._encoder.finish()
        await self._flush_full_chunks()
        if self._buffer:
            await self._put(bytes(self._buffer))
            self._buffer.clear()
        await self._put(None)

    async def _flush_full_chunks(self) -> None:
        while len(self._buffer) >= self._chunk_size:
            chunk = bytes(self._buffer[: self._chunk_size])
            del self._buffer[: self._chunk_size]
            await self._put(chunk)

    def abort(self, exc: BaseException) -> None:
        """Make the consumer fail with `exc`; never blocks."""
        if self._closed:
            return
        self._closed = self._aborted = True
        self._buffer.clear()
        # Drop pending chunks so the error is seen at once and the put below cannot block.
        self._drain_queue()
        self._queue.put_nowait(exc)

    def _check_open(self) -> None:
        if self._aborted:
            raise TarballError("the tarball writer was aborted")
        if self._consumer_gone:
            raise TarballError("the tarball consumer stopped reading before the archive was complete")
        if self._closed:
            raise TarballError("the tarball writer is already closed")

    async def _put(self, item: bytes | None) -> None:
        size = len(item) if item is not None else 0
        self._queued_bytes += size  # counted while waiting for room too
        try:
            await self._queue.put(item)
        except BaseException:
            self._queued_bytes -= size
            raise
        if self._consumer_gone:
            raise TarballError("the tarball consumer stopped reading before the archive was complete")

    # ---- consumer side

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Compressed bytes in order; ends after `close()`, raises what `abort()` was given."""
        if self._consumed:
            raise TarballError("the tarball stream can only be consumed once")
        self._consumed = True
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._queued_bytes -= len(item)
                yield item
        finally:
            self._consumer_gone = True
            # Unblock a producer waiting in `_put`; it then sees `_consumer_gone`.
            self._drain_queue()

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, bytes):
                self._queued_bytes -= len(item)


def gzip_bytes(data: bytes | str) -> bytes:
    """gzip a small blob (logs, results); deterministic header (mtime 0)."""
    raw = data.encode() if isinstance(data, str) else data
    return gzip.compress(raw, mtime=0)


def gzip_json(obj: Any) -> bytes:
    """gzip the compact JSON of `obj` (e.g. restore results, the PodVolumeBackup list)."""
    return gzip_bytes(orjson.dumps(obj))
