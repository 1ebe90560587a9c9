"""Object storage on a real S3 endpoint (moto_server), side by side with the local-directory store.

Behaviour tests run against both stores so they are proven to behave the same; S3-only tests
cover multipart uploads, SSE-KMS, presigned URLs, TLS and how endpoint and credential failures
reach the user.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from arkd.storage import (
    BucketNotFound,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    make_store,
)
from tests.support.moto import MotoServer

MiB = 1024 * 1024

_AMBIENT_AWS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CA_BUNDLE",
)


def use_aws_env(monkeypatch: pytest.MonkeyPatch, server: MotoServer) -> None:
    """Point the standard AWS credential chain at `server`'s credentials file, and nothing else."""
    for name in _AMBIENT_AWS:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, s3: MotoServer) -> None:
    use_aws_env(monkeypatch, s3)


@pytest.fixture(scope="module")
def moto_auth() -> Iterator[MotoServer]:
    """A second moto_server that checks signatures against IAM users, like real S3."""
    with MotoServer(iam_auth=True) as server:
        server.make_bucket("auth-bucket")
        yield server


@pytest.fixture(scope="module")
def moto_tls() -> Iterator[MotoServer]:
    with MotoServer(tls=True) as server:
        server.make_bucket("tls-bucket")
        yield server


def new_bucket(server: MotoServer) -> str:
    name = f"arkd-{secrets.token_hex(6)}"
    server.make_bucket(name)
    return name


def s3_store(server: MotoServer, bucket: str) -> S3ObjectStore:
    # A tiny page size makes every listing below cross several pages.
    return S3ObjectStore(
        bucket, region=server.region, endpoint_url=server.endpoint, force_path_style=True, page_size=2
    )


@pytest.fixture
async def bucket(s3: MotoServer) -> str:
    return new_bucket(s3)


@pytest.fixture(params=["s3", "local"])
async def store(request: pytest.FixtureRequest, s3: MotoServer, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "s3":
        impl: ObjectStore = s3_store(s3, new_bucket(s3))
    else:
        impl = LocalObjectStore(tmp_path)
    try:
        yield impl
    finally:
        await impl.close()


async def chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, total, size):
        yield bytes([(i // size) % 256]) * min(size, total - i)


def digest_of(total: int, size: int = 256 * 1024) -> bytes:
    h = hashlib.sha256()
    for i in range(0, total, size):
        h.update(bytes([(i // size) % 256]) * min(size, total - i))
    return h.digest()


class Boom(Exception):
    pass


async def failing_after(limit: int) -> AsyncIterator[bytes]:
    sent = 0
    while True:
        if sent >= limit:
            raise Boom("the tarball writer failed")
        yield b"f" * MiB
        sent += MiB


def pending_uploads(server: MotoServer, bucket: str) -> list[object]:
    return list(server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


# -- behaviour shared by both stores ----------------------------------------------------------


async def test_round_trip(store: ObjectStore) -> None:
    await store.put("b1/ark-backup.json", b'{"kind":"Backup"}')
    assert await store.get("b1/ark-backup.json") == b'{"kind":"Backup"}'
    assert await store.exists("b1/ark-backup.json")
    assert not await store.exists("b1/missing")
    await store.put("b1/ark-backup.json", bytearray(b"replaced"))
    assert await store.get("b1/ark-backup.json") == b"replaced"
    with pytest.raises(ObjectNotFound, match="'b1/missing'"):
        await store.get("b1/missing")


async def test_streaming_put_and_get_of_20_mib(store: ObjectStore) -> None:
    await store.put("b1/b1.tar.gz", chunks(20 * MiB))
    h = hashlib.sha256()
    async for chunk in store.get_stream("b1/b1.tar.gz"):
        h.update(chunk)
    assert h.digest() == digest_of(20 * MiB)


async def test_small_stream_is_stored_whole(store: ObjectStore) -> None:
    await store.put("b1/b1-logs.gz", chunks(3 * MiB + 17, size=1000))
    assert len(await store.get("b1/b1-logs.gz")) == 3 * MiB + 17


async def test_failed_stream_leaves_no_object(store: ObjectStore) -> None:
    with pytest.raises(Boom):
        await store.put("b1/b1.tar.gz", failing_after(12 * MiB))
    assert not await store.exists("b1/b1.tar.gz")
    assert await store.list_keys() == []


async def test_cancelled_put_leaves_no_object(store: ObjectStore) -> None:
    sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        total = 0
        while True:
            yield b"c" * MiB
            total += MiB
            if total > 10 * MiB:
                sent.set()

    task = asyncio.create_task(store.put("b1/b1.tar.gz", endless()))
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists("b1/b1.tar.gz")
    assert await store.list_keys() == []


LAYOUT = [
    "backup-a/ark-backup.json",
    "backup-a/backup-a.tar.gz",
    "backup-a/restore-r1-logs.gz",
    "backup-b/ark-backup.json",
    "backup-b/nested/deep/file",
    "other/x",
    "top-level-object",
]


async def test_listing_semantics(store: ObjectStore) -> None:
    for key in LAYOUT:
        await store.put(key, key.encode())
    assert await store.list_keys() == sorted(LAYOUT)
    assert await store.list_keys("backup-") == sorted(k for k in LAYOUT if k.startswith("backup-"))
    assert await store.list_keys("backup-a/restore-") == ["backup-a/restore-r1-logs.gz"]
    assert await store.list_keys("nothing/") == []
    assert await store.list_common_prefixes() == ["backup-a/", "backup-b/", "other/"]
    assert await store.list_common_prefixes("backup-") == ["backup-a/", "backup-b/"]
    assert await store.list_common_prefixes("backup-b/") == ["backup-b/nested/"]
    assert await store.list_common_prefixes("backup-a/") == []
    assert await store.list_common_prefixes("backup-a/", "-") == [
        "backup-a/ark-",
        "backup-a/backup-",
        "backup-a/restore-",
    ]


async def test_many_keys_are_listed_across_pages(store: ObjectStore) -> None:
    keys = [f"b{i:02d}/ark-backup.json" for i in range(25)]
    await asyncio.gather(*(store.put(k, b"{}") for k in keys))
    assert await store.list_keys() == keys
    assert await store.list_common_prefixes() == [f"b{i:02d}/" for i in range(25)]


async def test_delete_is_idempotent_and_delete_prefix_removes_one_backup(store: ObjectStore) -> None:
    for key in LAYOUT:
        await store.put(key, b"x")
    await store.delete("other/x")
    await store.delete("other/x")
    await store.delete("never/there")
    assert await store.delete_prefix("backup-a/") == 3
    assert await store.list_keys() == [
        "backup-b/ark-backup.json",
        "backup-b/nested/deep/file",
        "top-level-object",
    ]
    assert await store.list_common_prefixes() == ["backup-b/"]
    assert await store.delete_prefix("backup-a/") == 0


async def test_presigned_url_downloads_the_object(store: ObjectStore) -> None:
    await store.put("b1/b1-logs.gz", b"gzip bytes of a log")
    url = await store.presign_get("b1/b1-logs.gz", 600)
    # No credentials go with the request: the URL alone grants the download.
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"gzip bytes of a log"


# -- S3 only ---------------------------------------------------------------------------------


async def test_large_stream_uses_multipart_upload_with_8_mib_parts(s3: MotoServer, bucket: str) -> None:
    async with s3_store(s3, bucket) as store:
        await store.put("b1/b1.tar.gz", chunks(20 * MiB))
    head = s3.client().head_object(Bucket=bucket, Key="b1/b1.tar.gz")
    # A multipart ETag ends in -<parts>: 8 + 8 + 4 MiB.
    assert head["ETag"].endswith('-3"')
    assert head["ContentLength"] == 20 * MiB
    whole = s3.client().get_object(Bucket=bucket, Key="b1/b1.tar.gz")["Body"].read()
    assert hashlib.sha256(whole).digest() == digest_of(20 * MiB)


@pytest.mark.parametrize(("size", "parts"), [(8 * MiB, 1), (8 * MiB + 1, 2), (16 * MiB, 2)])
async def test_part_boundaries(s3: MotoServer, bucket: str, size: int, parts: int) -> None:
    async with s3_store(s3, bucket) as store:
        await store.put("obj", chunks(size, size=3 * MiB))
        assert hashlib.sha256(await store.get("obj")).digest() == digest_of(size, size=3 * MiB)
    assert s3.client().head_object(Bucket=bucket, Key="obj")["ETag"].endswith(f'-{parts}"')


async def test_failed_multipart_upload_is_aborted(s3: MotoServer, bucket: str) -> None:
    async with s3_store(s3, bucket) as store:
        with pytest.raises(Boom):
            await store.put("b1/b1.tar.gz", failing_after(20 * MiB))
        assert not await store.exists("b1/b1.tar.gz")
    # Two parts had been uploaded; the upload was aborted rather than left to accumulate.
    assert pending_uploads(s3, bucket) == []


async def test_cancelled_multipart_upload_is_aborted(s3: MotoServer, bucket: str) -> None:
    async with s3_store(s3, bucket) as store:
        sent = asyncio.Event()

        async def endless() -> AsyncIterator[bytes]:
            total = 0
            while True:
                yield b"c" * MiB
                total += MiB
                if total > 17 * MiB:
                    sent.set()

        task = asyncio.create_task(store.put("b1/b1.tar.gz", endless()))
        await sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pending_uploads(s3, bucket) == []
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)


async def test_kms_key_id_requests_sse_kms(s3: MotoServer, bucket: str) -> None:
    key_id = "arn:aws:kms:us-east-1:123456789012:key/ark-backups"
    store = make_store("aws", bucket, {**s3.store_config(), "kmsKeyId": key_id})
    try:
        await store.put("small", b"x")
        await store.put("large", chunks(9 * MiB))
    finally:
        await store.close()
    for key in ("small", "large"):
        head = s3.client().head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_id


async def test_make_store_from_ark_config(s3: MotoServer, bucket: str) -> None:
    store = make_store("aws", bucket, s3.store_config())
    try:
        await store.put("b1/ark-backup.json", b"{}")
        assert await store.list_common_prefixes() == ["b1/"]
        assert s3.endpoint in store.location
    finally:
        await store.close()


async def test_missing_bucket_is_bucket_not_found(s3: MotoServer) -> None:
    async with s3_store(s3, "no-such-bucket") as store:
        for attempt in (
            store.put("k", b"x"),
            store.get("k"),
            store.exists("k"),
            store.list_keys(),
            store.list_common_prefixes(),
        ):
            with pytest.raises(
                BucketNotFound, match=r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1"
            ):
                await attempt


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_endpoint_is_storage_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = make_store("aws", "ark", {"s3Url": endpoint, "s3ForcePathStyle": "true"})
    try:
        with pytest.raises(StorageUnavailable) as err:
            await store.get("b1/ark-backup.json")
    finally:
        await store.close()
    message = str(err.value)
    assert message.startswith(f"could not reach object storage at {endpoint}")
    assert "s3Url" in message
    assert "\n" not in message


async def test_self_signed_tls_needs_insecure_skip_tls_verify(
    moto_tls: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_aws_env(monkeypatch, moto_tls)
    strict = make_store("aws", "tls-bucket", moto_tls.store_config())
    try:
        with pytest.raises(StorageUnavailable, match="insecureSkipTLSVerify"):
            await strict.put("k", b"x")
    finally:
        await strict.close()

    relaxed = make_store("aws", "tls-bucket", {**moto_tls.store_config(), "insecureSkipTLSVerify": "true"})
    try:
        await relaxed.put("k", b"over https")
        assert await relaxed.get("k") == b"over https"
    finally:
        await relaxed.close()


# -- credentials -------------------------------------------------------------------------------


async def test_correct_credentials_work_on_an_authenticating_endpoint(
    moto_auth: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_aws_env(monkeypatch, moto_auth)
    async with s3_store(moto_auth, "auth-bucket") as store:
        await store.put("b1/ark-backup.json", b"{}")
        assert await store.list_keys("b1/") == ["b1/ark-backup.json"]


async def test_wrong_secret_is_an_auth_error_naming_the_credentials_file(
    moto_auth: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_aws_env(monkeypatch, moto_auth)
    wrong = moto_auth.write_credentials_file(moto_auth.access_key, "not-the-secret", str(tmp_path / "cloud"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", wrong)
    async with s3_store(moto_auth, "auth-bucket") as store:
        with pytest.raises(StorageAuthError) as err:
            await store.list_keys()
    message = str(err.value)
    assert "SignatureDoesNotMatch" in message
    assert f"{wrong} (AWS_SHARED_CREDENTIALS_FILE), profile 'default'" in message
    assert "\n" not in message


async def test_unknown_access_key_is_an_auth_error(
    moto_auth: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_aws_env(monkeypatch, moto_auth)
    unknown = moto_auth.write_credentials_file("AKIAUNKNOWN000000000", "x" * 40, str(tmp_path / "cloud"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", unknown)
    async with s3_store(moto_auth, "auth-bucket") as store:
        for attempt in (store.put("k", b"x"), store.get("k"), store.exists("k")):
            with pytest.raises(StorageAuthError, match="refused access"):
                await attempt


async def test_aws_profile_selects_the_profile(
    moto_auth: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_aws_env(monkeypatch, moto_auth)
    creds = tmp_path / "cloud"
    creds.write_text(
        "[default]\naws_access_key_id = AKIAUNKNOWN000000000\naws_secret_access_key = nope\n"
        f"[ark]\naws_access_key_id = {moto_auth.access_key}\naws_secret_access_key = {moto_auth.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "ark")
    async with s3_store(moto_auth, "auth-bucket") as store:
        await store.put("profile-check", b"ok")
        assert await store.get("profile-check") == b"ok"

    monkeypatch.setenv("AWS_PROFILE", "missing")
    async with s3_store(moto_auth, "auth-bucket") as store:
        with pytest.raises(StorageAuthError, match="AWS profile 'missing' \\(AWS_PROFILE\\)"):
            await store.get("profile-check")


async def test_no_credentials_at_all_is_an_auth_error(
    s3: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "does-not-exist"))
    async with s3_store(s3, bucket) as store:
        with pytest.raises(
            StorageAuthError, match=r"no AWS credentials were found.*AWS_SHARED_CREDENTIALS_FILE"
        ):
            await store.get("k")


async def test_closed_store_says_so(s3: MotoServer, bucket: str) -> None:
    store = s3_store(s3, bucket)
    await store.put("k", b"x")
    await store.close()
    with pytest.raises(StorageError, match="is closed"):
        await store.get("k")
