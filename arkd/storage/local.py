"""Object storage in a local directory (`backupStorageProvider.name: local`).

Keys map to relative paths under the root. Writes go to a hidden temp file beside the target,
are fsynced and renamed into place, so a reader sees the old object or the whole new one.
Listings follow S3: only objects count, so empty directories never show up as prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from arkd.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectNotFound,
    PutData,
    StorageAuthError,
    StorageError,
    check_chunk,
    check_data,
    validate_key,
    validate_prefix,
    validate_ttl,
)

_log = logging.getLogger("arkd.storage.local")

T = TypeVar("T")

CHUNK_SIZE = 1024 * 1024
# Marks in-progress writes; such names are never listed and never accepted as keys.
_PARTIAL_SUFFIX = ".arkd-partial"
_OPEN_ATTEMPTS = 5


async def _settle(fut: asyncio.Future[T]) -> None:
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({fut})


async def _in_thread(fn: Callable[..., T], *args: object, undo: Callable[[T], object] | None = None) -> T:
    """Run blocking file I/O in a worker thread.

    On cancellation wait for the thread to finish before re-raising, so cleanup that closes or
    unlinks the file never races a write still running on it; `undo` releases what a call that
    finished anyway acquired (an open temp file).
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await _settle(fut)
        if undo is not None and not fut.cancelled() and fut.exception() is None:
            await _settle(loop.run_in_executor(None, undo, fut.result()))
        raise


@contextlib.contextmanager
def _os_errors(action: str, where: Path) -> Iterator[None]:
    """Turn OS failures into storage errors that say what was being done where."""
    try:
        yield
    except PermissionError as exc:
        raise StorageAuthError(
            f"permission denied {action} in {where}: {exc.strerror}; the ark process needs read and "
            "write access to the storage directory"
        ) from exc
    except OSError as exc:
        raise StorageError(f"failed {action} in {where}: {exc.strerror or exc}") from exc


def _raise(exc: OSError) -> None:
    raise exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore:
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False, chunk_size: int = CHUNK_SIZE):
        self.root = Path(root).resolve()
        self._create = create
        self._chunk_size = chunk_size

    @property
    def location(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    async def __aenter__(self) -> LocalObjectStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        parts = key.split("/")
        for part in parts:
            if part.endswith(_PARTIAL_SUFFIX):
                raise InvalidKey(
                    f"invalid object key {key!r}: names ending in {_PARTIAL_SUFFIX!r} are reserved"
                )
        return self.root.joinpath(*parts)

    def _key(self, path: str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def _check_root(self) -> None:
        if self.root.is_dir():
            return
        if self._create:
            self.root.mkdir(parents=True, exist_ok=True)
            return
        raise BucketNotFound(
            f"local storage directory {self.root} does not exist; create it or fix "
            "backupStorageProvider.config.path / bucket"
        )

    # -- writes --------------------------------------------------------------------------------

    def _open_partial(self, path: Path) -> tuple[BinaryIO, str]:
        self._check_root()
        for _ in range(_OPEN_ATTEMPTS):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(
                    dir=path.parent, prefix=f".{path.name[:64]}.", suffix=_PARTIAL_SUFFIX
                )
            except FileNotFoundError:
                # A concurrent delete pruned the freshly made parent directory; make it again.
                continue
            except (FileExistsError, NotADirectoryError) as exc:
                raise StorageError(
                    f"cannot store {self._key(str(path))!r} under {self.root}: a parent of it is an "
                    "object, and a directory store cannot hold an object and a prefix of the same name"
                ) from exc
            return os.fdopen(fd, "wb"), tmp
        raise StorageError(f"cannot create the directory for {self._key(str(path))!r} under {self.root}")

    @staticmethod
    def _write(f: BinaryIO, data: bytes | bytearray | memoryview) -> None:
        f.write(data)

    def _commit(self, f: BinaryIO, tmp: str, path: Path) -> None:
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        try:
            Path(tmp).replace(path)
        except IsADirectoryError as exc:
            raise StorageError(
                f"cannot store {self._key(str(path))!r} under {self.root}: objects already exist under "
                "that name as a prefix, and a directory store cannot hold both"
            ) from exc
        _fsync_dir(path.parent)

    @staticmethod
    def _discard(f: BinaryIO, tmp: str) -> None:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()

    async def put(self, key: str, data: PutData) -> None:
        path = self._path(key)
        check_data(data)
        with _os_errors(f"writing {key!r}", self.root):
            await self._put(path, data)

    async def _put(self, path: Path, data: PutData) -> None:
        f, tmp = await _in_thread(self._open_partial, path, undo=lambda opened: self._discard(*opened))
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                await _in_thread(self._write, f, data)
            else:
                buffer = bytearray()
                async for chunk in data:
                    buffer += check_chunk(chunk)
                    if len(buffer) >= self._chunk_size:
                        # Hand the full buffer to the thread and start a new one: no copy.
                        full, buffer = buffer, bytearray()
                        await _in_thread(self._write, f, full)
                if buffer:
                    await _in_thread(self._write, f, buffer)
            await _in_thread(self._commit, f, tmp, path)
        except BaseException:
            await _in_thread(self._discard, f, tmp)
            raise

    # -- reads ---------------------------------------------------------------------------------

    def _open_read(self, key: str, path: Path) -> BinaryIO:
        self._check_root()
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"object {key!r} not found in {self.root}", key=key) from exc

    def _read_all(self, key: str, path: Path) -> bytes:
        with self._open_read(key, path) as f:
            return f.read()

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        with _os_errors(f"reading {key!r}", self.root):
            return await _in_thread(self._read_all, key, path)

    async def get_stream(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        with _os_errors(f"reading {key!r}", self.root):
            f = await _in_thread(self._open_read, key, path, undo=lambda opened: opened.close())
            try:
                while chunk := await _in_thread(f.read, self._chunk_size):
                    yield chunk
            finally:
                await _in_thread(f.close)

    async def exists(self, key: str) -> bool:
        path = self._path(key)

        def check() -> bool:
            self._check_root()
            return path.is_file()

        with _os_errors(f"checking {key!r}", self.root):
            return await _in_thread(check)

    # -- listing -------------------------------------------------------------------------------

    def _walk_keys(self, prefix: str) -> list[str]:
        self._check_root()
        directory = self.root.joinpath(*prefix.split("/")[:-1])
        if not directory.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise):
            base = self._key(dirpath)
            base = "" if base == "." else base + "/"
            # Descend only where keys can match: inside the prefix, or on the way down to it.
            dirnames[:] = [
                d for d in dirnames if (sub := f"{base}{d}/").startswith(prefix) or prefix.startswith(sub)
            ]
            keys.extend(
                base + name
                for name in filenames
                if not name.endswith(_PARTIAL_SUFFIX) and (base + name).startswith(prefix)
            )
        keys.sort()
        return keys

    def _has_object(self, directory: str) -> bool:
        for _, _, filenames in os.walk(directory, onerror=_raise):
            if any(not name.endswith(_PARTIAL_SUFFIX) for name in filenames):
                return True
        return False

    def _slash_prefixes(self, prefix: str) -> list[str]:
        self._check_root()
        head, _, partial = prefix.rpartition("/")
        directory = self.root.joinpath(*head.split("/")) if head else self.root
        base = head + "/" if head else ""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [
            base + entry.name + "/"
            for entry in entries
            if entry.name.startswith(partial)
            and entry.is_dir(follow_symlinks=False)
            and self._has_object(entry.path)
        ]
        found.sort()
        return found

    async def list_keys(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        with _os_errors(f"listing {prefix!r}", self.root):
            return await _in_thread(self._walk_keys, prefix)

    async def list_common_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        validate_prefix(prefix)
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        with _os_errors(f"listing {prefix!r}", self.root):
            if delimiter == "/":
                # Directories are exactly the '/' groups, so one directory scan answers it.
                return await _in_thread(self._slash_prefixes, prefix)
            keys = await _in_thread(self._walk_keys, prefix)
        found: set[str] = set()
        for key in keys:
            rest = key[len(prefix) :]
            cut = rest.find(delimiter)
            if cut >= 0:
                found.add(prefix + rest[: cut + len(delimiter)])
        return sorted(found)

    # -- deletes -------------------------------------------------------------------------------

    def _prune_dirs(self, directory: Path) -> None:
        """Remove now-empty parent directories so deleted prefixes disappear like on S3."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _unlink(self, path: Path) -> bool:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        self._prune_dirs(path.parent)
        return True

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            self._check_root()
            self._unlink(path)

        with _os_errors(f"deleting {key!r}", self.root):
            await _in_thread(remove)

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete every object: delete_prefix needs a non-empty prefix")

        def remove_all() -> int:
            return sum(self._unlink(self.root.joinpath(*key.split("/"))) for key in self._walk_keys(prefix))

        with _os_errors(f"deleting {prefix!r}", self.root):
            removed = await _in_thread(remove_all)
        _log.debug("deleted objects", extra={"prefix": prefix, "count": removed, "root": str(self.root)})
        return removed

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        path = self._path(key)
        validate_ttl(ttl_seconds)
        return path.as_uri()

    async def close(self) -> None:
        """Nothing to release; present so both stores are closed the same way."""
