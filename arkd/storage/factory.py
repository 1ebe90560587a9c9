"""Build an ObjectStore from Ark's Config `backupStorageProvider` (name, bucket, config)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from arkd.storage.base import ObjectStore, StorageConfigError
from arkd.storage.local import LocalObjectStore
from arkd.storage.s3 import S3ObjectStore

AWS_KEYS = ("region", "s3Url", "s3ForcePathStyle", "insecureSkipTLSVerify", "kmsKeyId")
LOCAL_KEYS = ("path",)
DEFAULT_REGION = "us-east-1"

# Go's strconv.ParseBool, which Ark uses for these settings.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(value: str, name: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise StorageConfigError(f'backupStorageProvider.config.{name} must be "true" or "false", got {value!r}')


def _check_keys(provider: str, config: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise StorageConfigError(
            f"backupStorageProvider.config has unknown key(s) {', '.join(unknown)} for provider "
            f"{provider!r}; supported: {', '.join(allowed)}"
        )


def _bucket_name(bucket: str) -> str:
    if "/" in bucket or bucket in (".", ".."):
        raise StorageConfigError(
            f"backupStorageProvider.bucket {bucket!r} must be a bare bucket name without '/'; "
            "Ark 0.9 keeps backups at the top level of the bucket"
        )
    return bucket


def _s3_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StorageConfigError(
            f"backupStorageProvider.config.s3Url {value!r} must be a URL such as "
            "http://minio.heptio-ark.svc:9000"
        )
    return value.rstrip("/")


def make_store(provider: str, bucket: str, config: Mapping[str, str] | None = None) -> ObjectStore:
    """An ObjectStore for `backupStorageProvider`: `aws` (S3 and S3-compatible) or `local`."""
    settings = {k: str(v) for k, v in (config or {}).items()}
    if provider == "aws":
        _check_keys(provider, settings, AWS_KEYS)
        if not bucket:
            raise StorageConfigError("backupStorageProvider.bucket is required for provider 'aws'")
        endpoint = settings.get("s3Url") or None
        return S3ObjectStore(
            _bucket_name(bucket),
            region=settings.get("region") or DEFAULT_REGION,
            endpoint_url=_s3_url(endpoint) if endpoint else None,
            force_path_style=parse_bool(settings.get("s3ForcePathStyle", ""), "s3ForcePathStyle"),
            verify_tls=not parse_bool(settings.get("insecureSkipTLSVerify", ""), "insecureSkipTLSVerify"),
            kms_key_id=settings.get("kmsKeyId") or None,
        )
    if provider == "local":
        _check_keys(provider, settings, LOCAL_KEYS)
        path = settings.get("path")
        if not path:
            raise StorageConfigError(
                "backupStorageProvider.config.path is required for provider 'local' (the storage directory)"
            )
        root = f"{path.rstrip('/')}/{_bucket_name(bucket)}" if bucket else path
        # The bucket is a subdirectory we may create, like `mb` on S3; the path itself must exist.
        return LocalObjectStore(root, create=bool(bucket) and Path(path).is_dir())
    raise StorageConfigError(
        f"backupStorageProvider.name {provider!r} is not supported; use 'aws' (Amazon S3 or an "
        "S3-compatible store such as MinIO) or 'local' (a directory)"
    )
