"""The local-directory object store, and make_store's handling of Ark's backupStorageProvider config."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from arkd.storage import (
    BucketNotFound,
    InvalidKey,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StorageAuthError,
    StorageConfigError,
    StorageError,
    make_store,
)

MiB = 1024 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "bucket"
    path.mkdir()
    return path


@pytest.fixture
async def store(root: Path) -> AsyncIterator[LocalObjectStore]:
    async with LocalObjectStore(root) as s:
        yield s


async def chunks(total: int, size: int = 64 * 1024, seed: int = 0) -> AsyncIterator[bytes]:
    for i in range(0, total, size):
        yield bytes([(seed + i // size) % 256]) * min(size, total - i)


def expected(total: int, size: int = 64 * 1024, seed: int = 0) -> bytes:
    return b"".join(bytes([(seed + i // size) % 256]) * min(size, total - i) for i in range(0, total, size))


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


async def test_satisfies_the_object_store_protocol(store: LocalObjectStore) -> None:
    assert isinstance(store, ObjectStore)


async def test_round_trip_and_overwrite(store: LocalObjectStore, root: Path) -> None:
    await store.put("b1/ark-backup.json", b'{"kind": "Backup"}')
    assert await store.get("b1/ark-backup.json") == b'{"kind": "Backup"}'
    assert await store.exists("b1/ark-backup.json")
    # Keys are plain relative paths, so the directory is browsable by hand.
    assert (root / "b1" / "ark-backup.json").read_bytes() == b'{"kind": "Backup"}'

    await store.put("b1/ark-backup.json", b"second")
    assert await store.get("b1/ark-backup.json") == b"second"
    assert await store.get("b1/ark-backup.json") == b"second"


async def test_empty_object(store: LocalObjectStore) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    assert await store.exists("empty")


async def test_streaming_put_of_20_mib_from_async_generator(store: LocalObjectStore) -> None:
    total = 20 * MiB
    await store.put("b1/b1.tar.gz", chunks(total))

    digest = hashlib.sha256()
    received = 0
    async for chunk in store.get_stream("b1/b1.tar.gz"):
        # Reads are streamed in bounded chunks, never the whole object at once.
        assert len(chunk) <= MiB
        digest.update(chunk)
        received += len(chunk)
    assert received == total
    assert digest.digest() == hashlib.sha256(expected(total)).digest()


async def test_data_that_is_not_bytes_is_rejected(store: LocalObjectStore, root: Path) -> None:
    with pytest.raises(TypeError, match="bytes or an async iterator of bytes, got str"):
        await store.put("k", "text")  # type: ignore[arg-type]

    async def strings() -> AsyncIterator[str]:
        yield "text"

    with pytest.raises(TypeError, match="must yield bytes, got str"):
        await store.put("k", strings())  # type: ignore[arg-type]
    assert files_under(root) == []


async def test_missing_object(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="'b1/nothing'") as err:
        await store.get("b1/nothing")
    assert err.value.key == "b1/nothing"
    with pytest.raises(ObjectNotFound):
        async for _ in store.get_stream("nothing"):
            pass
    assert not await store.exists("b1/nothing")


async def test_prefix_is_not_an_object(store: LocalObjectStore) -> None:
    await store.put("b1/x", b"x")
    assert not await store.exists("b1")
    with pytest.raises(ObjectNotFound):
        await store.get("b1")


class Boom(Exception):
    pass


async def failing(after: int) -> AsyncIterator[bytes]:
    sent = 0
    while True:
        if sent >= after:
            raise Boom("source broke")
        yield b"z" * MiB
        sent += MiB


async def test_failed_stream_leaves_no_object_and_no_temp_files(store: LocalObjectStore, root: Path) -> None:
    with pytest.raises(Boom):
        await store.put("b1/b1.tar.gz", failing(after=5 * MiB))
    assert not await store.exists("b1/b1.tar.gz")
    assert await store.list_keys() == []
    assert files_under(root) == []


async def test_failed_overwrite_keeps_the_old_object(store: LocalObjectStore, root: Path) -> None:
    await store.put("b1/b1.tar.gz", b"old complete object")
    with pytest.raises(Boom):
        await store.put("b1/b1.tar.gz", failing(after=3 * MiB))
    assert await store.get("b1/b1.tar.gz") == b"old complete object"
    assert files_under(root) == ["b1/b1.tar.gz"]


async def test_cancelled_put_leaves_no_object(store: LocalObjectStore, root: Path) -> None:
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"q" * MiB
            started.set()

    task = asyncio.create_task(store.put("b1/b1.tar.gz", endless()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists("b1/b1.tar.gz")
    assert files_under(root) == []


async def test_readers_see_old_or_complete_new_object_never_partial(store: LocalObjectStore) -> None:
    await store.put("obj", b"old")
    half_written = asyncio.Event()
    finish = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"n" * (3 * MiB)
        half_written.set()
        await finish.wait()
        yield b"n" * (3 * MiB)

    writer = asyncio.create_task(store.put("obj", slow()))
    await half_written.wait()
    # Half of the new object is on disk by now, in a temp file nobody can see.
    assert await store.get("obj") == b"old"
    assert await store.list_keys() == ["obj"]
    finish.set()
    await writer
    assert await store.get("obj") == b"n" * (6 * MiB)


async def test_stopping_a_stream_early_closes_the_file(store: LocalObjectStore) -> None:
    await store.put("big", chunks(4 * MiB))
    async with aclosing(store.get_stream("big")) as stream:
        async for first in stream:
            assert first
            break
    # Nothing holds the object: it can be deleted and its directory pruned.
    await store.delete("big")
    assert not await store.exists("big")


@pytest.mark.parametrize(
    "key",
    ["../escape", "b1/../../escape", "/etc/passwd", "", "a//b", "a/", "./a", "a/./b", "..", "a\x00b"],
)
async def test_unsafe_keys_are_rejected(store: LocalObjectStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    with pytest.raises(InvalidKey):
        await store.presign_get(key, 60)
    # Nothing was written anywhere near the store.
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("prefix", ["../", "a/../", "/abs", "a//"])
async def test_unsafe_prefixes_are_rejected(store: LocalObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        await store.list_keys(prefix)
    with pytest.raises(InvalidKey):
        await store.list_common_prefixes(prefix)
    with pytest.raises(InvalidKey):
        await store.delete_prefix(prefix)


async def test_reserved_temp_names_are_not_keys(store: LocalObjectStore) -> None:
    with pytest.raises(InvalidKey, match="reserved"):
        await store.put("b1/.x.arkd-partial", b"x")


LAYOUT = [
    "backup-a/ark-backup.json",
    "backup-a/backup-a.tar.gz",
    "backup-a/restore-r1-logs.gz",
    "backup-b/ark-backup.json",
    "backup-b/nested/deep/file",
    "other/x",
    "top-level-object",
]


async def fill(store: ObjectStore) -> None:
    for key in LAYOUT:
        await store.put(key, key.encode())


async def test_listing_matches_s3_semantics(store: LocalObjectStore) -> None:
    await fill(store)
    assert await store.list_keys() == sorted(LAYOUT)
    assert await store.list_keys("backup-a/") == [k for k in sorted(LAYOUT) if k.startswith("backup-a/")]
    # A prefix is a string prefix, not a directory: it may end mid-name.
    assert await store.list_keys("backup-") == [k for k in sorted(LAYOUT) if k.startswith("backup-")]
    assert await store.list_keys("backup-a/restore-") == ["backup-a/restore-r1-logs.gz"]
    assert await store.list_keys("nothing/") == []

    # Only "directories" are common prefixes; top-level-object is a key, not a prefix.
    assert await store.list_common_prefixes() == ["backup-a/", "backup-b/", "other/"]
    assert await store.list_common_prefixes("backup-") == ["backup-a/", "backup-b/"]
    assert await store.list_common_prefixes("backup-b/") == ["backup-b/nested/"]
    assert await store.list_common_prefixes("backup-b/nested/") == ["backup-b/nested/deep/"]
    assert await store.list_common_prefixes("backup-a/") == []
    # Other delimiters group the same way S3 does.
    assert await store.list_common_prefixes("backup-a/", "-") == [
        "backup-a/ark-",
        "backup-a/backup-",
        "backup-a/restore-",
    ]


async def test_directories_without_objects_are_not_prefixes(store: LocalObjectStore, root: Path) -> None:
    await fill(store)
    (root / "stray-empty-dir" / "inner").mkdir(parents=True)
    assert "stray-empty-dir/" not in await store.list_common_prefixes()
    await store.delete("other/x")
    assert await store.list_common_prefixes() == ["backup-a/", "backup-b/"]
    # The emptied directory is gone from disk too.
    assert not (root / "other").exists()


async def test_delete_is_idempotent(store: LocalObjectStore) -> None:
    await store.put("b1/x", b"x")
    await store.delete("b1/x")
    await store.delete("b1/x")
    await store.delete("never/existed")
    assert not await store.exists("b1/x")


async def test_delete_prefix_removes_one_backup_only(store: LocalObjectStore) -> None:
    await fill(store)
    assert await store.delete_prefix("backup-b/") == 2
    assert await store.list_keys() == [k for k in sorted(LAYOUT) if not k.startswith("backup-b/")]
    assert await store.delete_prefix("backup-b/") == 0
    with pytest.raises(ValueError, match="non-empty prefix"):
        await store.delete_prefix("")


async def test_object_and_prefix_with_the_same_name_is_a_clear_error(store: LocalObjectStore) -> None:
    await store.put("a", b"object")
    with pytest.raises(StorageError, match="same name"):
        await store.put("a/b", b"x")
    await store.put("c/d", b"x")
    with pytest.raises(StorageError, match="prefix"):
        await store.put("c", b"x")
    assert await store.get("a") == b"object"
    assert await store.list_keys() == ["a", "c/d"]


async def test_concurrent_writers_last_complete_write_wins(store: LocalObjectStore, root: Path) -> None:
    await asyncio.gather(*(store.put("same", chunks(2 * MiB, seed=i)) for i in range(8)))
    content = await store.get("same")
    assert content in {expected(2 * MiB, seed=i) for i in range(8)}
    assert files_under(root) == ["same"]


async def test_presigned_url_is_a_file_url_that_downloads_the_object(store: LocalObjectStore) -> None:
    await store.put("b1/b1-logs.gz", b"log bytes")
    url = await store.presign_get("b1/b1-logs.gz", 600)
    assert url.startswith("file:///")
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"log bytes"
    with pytest.raises(ValueError, match="lifetime"):
        await store.presign_get("b1/b1-logs.gz", 0)


async def test_missing_directory_is_bucket_not_found(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "absent")
    with pytest.raises(BucketNotFound, match=str(tmp_path / "absent")):
        await store.put("k", b"x")
    with pytest.raises(BucketNotFound):
        await store.list_common_prefixes()
    assert not (tmp_path / "absent").exists()

    created = LocalObjectStore(tmp_path / "made", create=True)
    await created.put("k", b"x")
    assert await created.get("k") == b"x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_unwritable_directory_is_a_permission_error(root: Path, store: LocalObjectStore) -> None:
    root.chmod(0o500)
    try:
        with pytest.raises(StorageAuthError, match="permission denied"):
            await store.put("k", b"x")
    finally:
        root.chmod(0o700)


# -- make_store ------------------------------------------------------------------------------


async def test_make_store_local_uses_bucket_as_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "backups").mkdir()
    store = make_store("local", "backups", {"path": str(tmp_path)})
    assert isinstance(store, LocalObjectStore)
    await store.put("b1/ark-backup.json", b"{}")
    assert (tmp_path / "backups" / "b1" / "ark-backup.json").read_bytes() == b"{}"

    plain = make_store("local", "", {"path": str(tmp_path)})
    assert await plain.list_common_prefixes() == ["backups/"]


@pytest.mark.parametrize(
    ("provider", "bucket", "config", "message"),
    [
        ("gcp", "b", {}, "'gcp' is not supported"),
        ("local", "b", {}, "config.path is required"),
        ("local", "b", {"path": "/x", "region": "r"}, "unknown key"),
        ("local", "a/b", {"path": "/x"}, "without '/'"),
        ("aws", "", {}, "bucket is required"),
        ("aws", "b", {"s3URL": "http://x"}, r"unknown key\(s\) s3URL"),
        ("aws", "b", {"s3ForcePathStyle": "yes"}, 's3ForcePathStyle must be "true" or "false"'),
        ("aws", "b", {"s3Url": "minio:9000"}, "must be a URL"),
        ("aws", "b/prefix", {}, "without '/'"),
    ],
)
def test_make_store_rejects_bad_config_clearly(
    provider: str, bucket: str, config: dict[str, str], message: str
) -> None:
    with pytest.raises(StorageConfigError, match=message):
        make_store(provider, bucket, config)


def test_make_store_aws_reads_ark_config_keys() -> None:
    store = make_store(
        "aws",
        "ark-backups",
        {
            "region": "eu-west-1",
            "s3Url": "https://minio.example:9000/",
            "s3ForcePathStyle": "true",
            "insecureSkipTLSVerify": "true",
            "kmsKeyId": "alias/ark",
        },
    )
    assert isinstance(store, S3ObjectStore)
    assert store.location == "s3://ark-backups at https://minio.example:9000"
    assert (store.region, store.kms_key_id) == ("eu-west-1", "alias/ark")
    default = make_store("aws", "b", {})
    assert isinstance(default, S3ObjectStore)
    assert default.region == "us-east-1"
