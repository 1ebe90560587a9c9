"""Object storage without Kubernetes: the ObjectStore protocol, S3, a local directory, Ark's layout."""

from arkd.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    PutData,
    StorageAuthError,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
)
from arkd.storage.factory import make_store
from arkd.storage.local import LocalObjectStore
from arkd.storage.s3 import S3ObjectStore

__all__ = [
    "BucketNotFound",
    "InvalidKey",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "PutData",
    "S3ObjectStore",
    "StorageAuthError",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "make_store",
]
