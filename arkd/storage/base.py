"""The object-store contract shared by the S3 and local-directory stores, its errors, and key rules."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import Protocol, runtime_checkable

# S3 refuses longer keys; the local store applies the same limit so both accept the same keys.
MAX_KEY_BYTES = 1024
# SigV4 presigned URLs cannot outlive seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

PutData = bytes | bytearray | memoryview | AsyncIterable[bytes]


class StorageError(Exception):
    """Base of every object-storage failure; `str(err)` is a one-line message for users."""


class ObjectNotFound(StorageError):
    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class BucketNotFound(StorageError):
    pass


class StorageUnavailable(StorageError):
    """The storage endpoint could not be reached or kept failing; retrying later may succeed."""


class StorageAuthError(StorageError):
    """Credentials are missing, wrong, or not allowed to do the operation."""


class InvalidKey(StorageError, ValueError):
    pass


class StorageConfigError(StorageError, ValueError):
    """The storage provider configuration is invalid."""


@runtime_checkable
class ObjectStore(Protocol):
    @property
    def location(self) -> str:
        """Where the objects live, for log lines and messages (`s3://bucket at URL`, a directory)."""
        ...

    async def put(self, key: str, data: PutData) -> None:
        """Store an object atomically: readers see the old object, or all of the new one."""
        ...

    async def get(self, key: str) -> bytes: ...

    def get_stream(self, key: str) -> AsyncGenerator[bytes, None]:
        """Chunks of the object; wrap in `contextlib.aclosing` when stopping early."""
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        ...

    async def list_common_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        """Distinct `prefix + part + delimiter` of keys under `prefix`, sorted (S3 CommonPrefixes)."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under a non-empty prefix; returns how many were removed."""
        ...

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        """A URL that downloads the object without credentials until it expires."""
        ...

    async def close(self) -> None: ...


def _check_segment(key: str, segment: str, what: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidKey(
            f"invalid object {what} {key!r}: path parts must not be empty, '.' or '..'; "
            "use '/'-separated names like 'backup/backup.tar.gz'"
        )


def _check_common(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidKey(f"object {what} must be a string, got {type(value).__name__}")
    if value.startswith("/"):
        raise InvalidKey(f"invalid object {what} {value!r}: it must be relative, not start with '/'")
    if "\x00" in value:
        raise InvalidKey(f"invalid object {what} {value!r}: it contains a NUL character")
    if len(value.encode()) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid object {what} {value[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    return value


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative '/'-joined name, else raise InvalidKey."""
    _check_common(key, "key")
    if not key:
        raise InvalidKey("object key must not be empty")
    for segment in key.split("/"):
        _check_segment(key, segment, "key")
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but empty is allowed and the last part may be partial or empty."""
    _check_common(prefix, "prefix")
    for segment in prefix.split("/")[:-1]:
        _check_segment(prefix, segment, "prefix")
    return prefix


def validate_ttl(ttl_seconds: int) -> int:
    if not isinstance(ttl_seconds, int) or not 0 < ttl_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"presigned URL lifetime must be 1..{MAX_PRESIGN_SECONDS} seconds, got {ttl_seconds!r}"
        )
    return ttl_seconds


def check_chunk(chunk: object) -> bytes | bytearray | memoryview:
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise TypeError(f"object data streams must yield bytes, got {type(chunk).__name__}")
    return chunk


def check_data(data: object) -> None:
    if not isinstance(data, bytes | bytearray | memoryview) and not hasattr(data, "__aiter__"):
        raise TypeError(f"object data must be bytes or an async iterator of bytes, got {type(data).__name__}")
