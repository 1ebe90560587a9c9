"""S3 and S3-compatible object storage through aiobotocore (`backupStorageProvider.name: aws`).

Credentials come from the standard AWS chain (environment, AWS_SHARED_CREDENTIALS_FILE with
AWS_PROFILE, config file, container or instance roles). Streams are uploaded with multipart
upload, one part in memory at a time; an upload that fails or is cancelled is aborted, so
no object, partial or otherwise, appears.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from arkd.storage.base import (
    BucketNotFound,
    ObjectNotFound,
    PutData,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    check_chunk,
    check_data,
    validate_key,
    validate_prefix,
    validate_ttl,
)

_log = logging.getLogger("arkd.storage.s3")

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000
# Parts double in size every this many parts, so a stream can exceed PART_SIZE * MAX_PARTS
# (78 GiB) while small uploads keep small parts; parts never grow past PART_SIZE * 16.
_PART_GROWTH_EVERY = 1000
_PART_GROWTH_MAX_SHIFT = 4
READ_CHUNK = 1 * MiB
DELETE_BATCH = 1000  # DeleteObjects limit

_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
        "401",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503", "500"}
)
_NETWORK_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)
_S3_ERRORS = (ClientError, BotoCoreError, *_NETWORK_ERRORS)


def _describe_credentials(session: AioSession, method: str | None) -> str:
    """Say where the credentials in use came from, so an auth error points at what to fix."""
    profile = session.get_config_variable("profile") or "default"
    if method is None:
        return (
            "no AWS credentials were found; provide them in a shared credentials file named by "
            "AWS_SHARED_CREDENTIALS_FILE (the cloud-credentials secret), or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    if method == "shared-credentials-file":
        path = Path(session.get_config_variable("credentials_file")).expanduser()
        if "AWS_SHARED_CREDENTIALS_FILE" in os.environ:
            return f"the credentials came from {path} (AWS_SHARED_CREDENTIALS_FILE), profile {profile!r}"
        return f"the credentials came from {path} (default shared credentials file), profile {profile!r}"
    if method == "env":
        return "the credentials came from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if method == "config-file":
        path = Path(session.get_config_variable("config_file")).expanduser()
        return f"the credentials came from the AWS config file {path} (AWS_CONFIG_FILE), profile {profile!r}"
    return f"the credentials came from the AWS credential provider {method!r}"


class S3ObjectStore:
    def __init__(
        self,
        bucket: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        force_path_style: bool = False,
        verify_tls: bool = True,
        kms_key_id: str | None = None,
        profile: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        part_size: int = PART_SIZE,
        page_size: int = 1000,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.kms_key_id = kms_key_id
        self._force_path_style = force_path_style
        self._verify_tls = verify_tls
        self._profile = profile
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._part_size = part_size
        self._page_size = page_size
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._credentials = "the credentials were not resolved yet"

    @property
    def endpoint(self) -> str:
        if self._client is not None:
            return cast(str, self._client.meta.endpoint_url)
        return self.endpoint_url or f"AWS S3 ({self.region})"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint}"

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.location!r})"

    async def __aenter__(self) -> S3ObjectStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- client --------------------------------------------------------------------------------

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._closed:
                raise StorageError(f"the object store for {self.location} is closed")
            if self._client is None:
                await self._create_client()
        return self._client

    async def _create_client(self) -> None:
        session = get_session()
        if self._profile:
            session.set_config_variable("profile", self._profile)
        config = AioConfig(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path" if self._force_path_style else "auto"},
            # Default CRC checksums on every upload break older S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="arkd",
        )
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    verify=None if self._verify_tls else False,
                    config=config,
                )
            )
            credentials = await session.get_credentials()
        except ProfileNotFound as exc:
            await stack.aclose()
            source = "" if self._profile else " (AWS_PROFILE)"
            raise StorageAuthError(
                f"AWS profile {exc.kwargs.get('profile')!r}{source} is not in the AWS credentials or "
                "config file; fix the profile name or the credentials file"
            ) from exc
        except (CredentialRetrievalError, PartialCredentialsError) as exc:
            await stack.aclose()
            raise StorageAuthError(f"AWS credentials for {self.location} could not be loaded: {exc}") from exc
        except BotoCoreError as exc:
            await stack.aclose()
            raise StorageError(f"cannot set up the S3 client for {self.location}: {exc}") from exc
        except BaseException:
            await stack.aclose()
            raise
        self._credentials = _describe_credentials(session, getattr(credentials, "method", None))
        self._client, self._stack = client, stack

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- errors --------------------------------------------------------------------------------

    def _error(self, exc: BaseException, key: str | None = None) -> StorageError:
        """Map an aiobotocore/network failure to a one-line StorageError for users."""
        what = f"object {key!r} in bucket {self.bucket!r}" if key else f"bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")).strip() or code
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # HEAD responses carry no error body, only the status.
            detail = f"HTTP {code} {message}" if code.isdigit() else f"{code}: {message}"
            if code == "NoSuchBucket":
                return BucketNotFound(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or fix "
                    "backupStorageProvider.bucket"
                )
            if code in _NOT_FOUND_CODES and key is not None:
                return ObjectNotFound(f"{what} not found at {self.endpoint}", key=key)
            if code in _AUTH_CODES or status in (401, 403):
                return StorageAuthError(
                    f"{self.endpoint} refused access to {what} ({detail}); {self._credentials}"
                )
            if code in _REGION_CODES or status == 301:
                return StorageError(
                    f"bucket {self.bucket!r} is not in region {self.region!r} ({code}); set "
                    "backupStorageProvider.config.region to the bucket's region"
                )
            if code == "InvalidBucketName":
                return StorageError(f"{self.bucket!r} is not a valid bucket name ({message})")
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return StorageUnavailable(
                    f"object storage at {self.endpoint} kept failing for {what} after "
                    f"{self._max_attempts} attempts ({detail})"
                )
            return StorageError(f"object storage at {self.endpoint} failed for {what} ({detail})")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return StorageAuthError(f"cannot sign requests to {self.endpoint}: {self._credentials}")
        if isinstance(exc, SSLError):
            return StorageUnavailable(
                f"TLS with object storage at {self.endpoint} failed ({exc}); fix the certificate, or set "
                'backupStorageProvider.config.insecureSkipTLSVerify to "true" for a test setup'
            )
        if isinstance(exc, _NETWORK_ERRORS):
            reason = str(exc) or type(exc).__name__
            return StorageUnavailable(
                f"could not reach object storage at {self.endpoint} for {what} ({reason}); check "
                "backupStorageProvider.config.s3Url and that the endpoint is up"
            )
        return StorageError(f"object storage at {self.endpoint} failed for {what}: {exc}")

    # -- writes --------------------------------------------------------------------------------

    def _sse(self) -> dict[str, str]:
        if not self.kms_key_id:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}

    async def put(self, key: str, data: PutData) -> None:
        validate_key(key)
        check_data(data)
        if isinstance(data, bytes | bytearray | memoryview):
            await self._put_object(key, bytes(data))
            return
        parts = _Parts(data, self._part_size)
        first = await parts.next()
        if parts.exhausted:
            # Fits in one part: a single PUT is atomic already.
            await self._put_object(key, first or b"")
            return
        await self._multipart(key, first or b"", parts)

    async def _put_object(self, key: str, body: bytes) -> None:
        client = await self._get_client()
        try:
            await client.put_object(Bucket=self.bucket, Key=key, Body=body, **self._sse())
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc

    async def _multipart(self, key: str, first: bytes, parts: _Parts) -> None:
        client = await self._get_client()
        try:
            created = await client.create_multipart_upload(Bucket=self.bucket, Key=key, **self._sse())
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc
        upload_id: str = created["UploadId"]
        done: list[dict[str, Any]] = []
        try:
            body: bytes | None = first
            while body is not None:
                number = len(done) + 1
                if number > MAX_PARTS:
                    raise StorageError(
                        f"object {key!r} is too large for a multipart upload ({MAX_PARTS} parts)"
                    )
                uploaded = await client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                done.append({"PartNumber": number, "ETag": uploaded["ETag"]})
                body = None  # drop the sent part before buffering the next: one part in memory
                parts.size = self._part_size << min(len(done) // _PART_GROWTH_EVERY, _PART_GROWTH_MAX_SHIFT)
                body = await parts.next()
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException as exc:
            # Shielded so a second cancellation cannot leave the parts behind.
            await asyncio.shield(self._abort(client, key, upload_id))
            if isinstance(exc, _S3_ERRORS):
                raise self._error(exc, key) from exc
            raise
        _log.debug(
            "multipart upload completed", extra={"key": key, "parts": len(done), "bucket": self.bucket}
        )

    async def _abort(self, client: Any, key: str, upload_id: str) -> None:
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except _S3_ERRORS as exc:
            # The object never became visible; the parts stay until a lifecycle rule removes them.
            _log.warning(
                "could not abort multipart upload",
                extra={"key": key, "bucket": self.bucket, "upload_id": upload_id, "error": str(exc)},
            )

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        validate_key(key)
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return cast(bytes, await body.read())
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc

    async def get_stream(self, key: str) -> AsyncGenerator[bytes, None]:
        validate_key(key)
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc
        async with response["Body"] as body:
            while True:
                try:
                    chunk = await body.read(READ_CHUNK)
                except _S3_ERRORS as exc:
                    raise self._error(exc, key) from exc
                if not chunk:
                    return
                yield chunk

    async def exists(self, key: str) -> bool:
        validate_key(key)
        client = await self._get_client()
        try:
            await client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES:
                raise self._error(exc, key) from exc
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc
        # HEAD has no body, so a missing bucket looks like a missing key; ask the bucket.
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise BucketNotFound(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or fix "
                    "backupStorageProvider.bucket"
                ) from exc
            raise self._error(exc) from exc
        except _S3_ERRORS as exc:
            raise self._error(exc) from exc
        return False

    # -- listing -------------------------------------------------------------------------------

    async def _pages(self, **params: Any) -> AsyncGenerator[dict[str, Any], None]:
        client = await self._get_client()
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, PaginationConfig={"PageSize": self._page_size}, **params
        )
        try:
            async for page in pages:
                yield page
        except _S3_ERRORS as exc:
            raise self._error(exc) from exc

    async def list_keys(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        keys: list[str] = []
        async for page in self._pages(Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", ()))
        return keys

    async def list_common_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        validate_prefix(prefix)
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        found: list[str] = []
        async for page in self._pages(Prefix=prefix, Delimiter=delimiter):
            found.extend(item["Prefix"] for item in page.get("CommonPrefixes", ()))
        return found

    # -- deletes -------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        validate_key(key)
        client = await self._get_client()
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete every object: delete_prefix needs a non-empty prefix")
        keys = await self.list_keys(prefix)
        client = await self._get_client()
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                result = await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except _S3_ERRORS as exc:
                raise self._error(exc) from exc
            errors = result.get("Errors") or []
            if errors:
                first = errors[0]
                failure = {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}
                raise self._error(ClientError(failure, "DeleteObjects"), first.get("Key"))
        _log.debug("deleted objects", extra={"prefix": prefix, "count": len(keys), "bucket": self.bucket})
        return len(keys)

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        validate_key(key)
        validate_ttl(ttl_seconds)
        client = await self._get_client()
        try:
            url = await client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_seconds
            )
        except _S3_ERRORS as exc:
            raise self._error(exc, key) from exc
        return cast(str, url)


class _Parts:
    """Cuts a byte stream into upload parts of `size` bytes (the last may be shorter)."""

    def __init__(self, source: AsyncIterable[bytes], size: int) -> None:
        self._source = aiter(source)
        self._buffer = bytearray()
        self.size = size
        self.exhausted = False

    async def next(self) -> bytes | None:
        while not self.exhausted and len(self._buffer) < self.size:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self.exhausted = True
                break
            self._buffer += check_chunk(chunk)
        if not self._buffer:
            return None
        part = bytes(self._buffer[: self.size])
        del self._buffer[: self.size]
        return part
