"""The restic encryption key of each volume namespace, kept in a Secret in the Ark namespace.

Secret `ark-restic-credentials-<NS>` (data key `repository-password`, label
`ark.heptio.com/restic-key=<NS>`) lives in the Ark namespace, not in NS: deleting the application
namespace must never lose the key of its backups. A namespace without a key gets a random one
(1024 bytes, like `ark restic init-repository`) unless the server requires keys made by
init-repository. The key bytes never appear in logs, messages or exceptions.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import Any, Protocol

from arkd.api.constants import (
    COMPONENT_LABEL,
    COMPONENT_VALUE,
    RESTIC_KEY_DATA_KEY,
    RESTIC_KEY_LABEL,
    restic_key_secret_name,
)
from arkd.kube.client import KubeClient
from arkd.kube.errors import AlreadyExists, NotFound
from arkd.kube.resource import SECRETS

log = logging.getLogger("arkd.podvolume.keys")

Obj = dict[str, Any]
DEFAULT_KEY_SIZE = 1024


class SecretCache(Protocol):
    def get(self, key: str) -> Obj | None: ...


class ResticKeyError(Exception):
    """The key of a namespace is missing or unusable; the message says which Secret and what to do."""


def _decode(secret: Obj, ark_namespace: str) -> bytes:
    name = (secret.get("metadata") or {}).get("name", "")
    data = secret.get("data") or {}
    encoded = data.get(RESTIC_KEY_DATA_KEY)
    if not encoded:
        raise ResticKeyError(
            f"Secret {ark_namespace}/{name} has no data key {RESTIC_KEY_DATA_KEY!r}; "
            "recreate it with `ark restic init-repository`"
        )
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ResticKeyError(
            f"Secret {ark_namespace}/{name} data key {RESTIC_KEY_DATA_KEY!r} is not valid base64"
        ) from None
    if not key:
        raise ResticKeyError(f"Secret {ark_namespace}/{name} holds an empty restic key")
    return key


def key_secret(ark_namespace: str, volume_namespace: str, key: bytes) -> Obj:
    """The Secret object holding `key` for `volume_namespace`."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": restic_key_secret_name(volume_namespace),
            "namespace": ark_namespace,
            "labels": {RESTIC_KEY_LABEL: volume_namespace, COMPONENT_LABEL: COMPONENT_VALUE},
        },
        "data": {RESTIC_KEY_DATA_KEY: base64.b64encode(key).decode()},
    }


class RepositoryKeys:
    """Reads (and, for the server, creates) restic keys.

    `cache` is an informer cache of the key Secrets in the Ark namespace; a key missing from it is
    looked up on the API server too, since a Secret created a moment ago may not be cached yet.
    """

    def __init__(
        self,
        client: KubeClient,
        ark_namespace: str,
        *,
        cache: SecretCache | None = None,
        key_size: int = DEFAULT_KEY_SIZE,
    ) -> None:
        if key_size < 1:
            raise ValueError(f"restic key size must be at least 1 byte (got {key_size})")
        self.client = client
        self.ark_namespace = ark_namespace
        self.cache = cache
        self.key_size = key_size

    async def _lookup(self, volume_namespace: str, *, fresh: bool = False) -> Obj | None:
        name = restic_key_secret_name(volume_namespace)
        if self.cache is not None and not fresh:
            cached = self.cache.get(f"{self.ark_namespace}/{name}")
            if cached is not None:
                return cached
        try:
            return await self.client.get(SECRETS, name, self.ark_namespace)
        except NotFound:
            return None

    async def get(self, volume_namespace: str, *, fresh: bool = False) -> bytes:
        """The key of `volume_namespace`; ResticKeyError if there is none. `fresh` reads it from the
        API server, past the cache (which can still hold the old key right after a rotation)."""
        secret = await self._lookup(volume_namespace, fresh=fresh)
        if secret is None:
            name = restic_key_secret_name(volume_namespace)
            raise ResticKeyError(
                f"no restic key for namespace {volume_namespace}: Secret {self.ark_namespace}/{name} "
                f"does not exist; run `ark restic init-repository --namespace {volume_namespace}`"
            )
        return _decode(secret, self.ark_namespace)

    async def ensure(self, volume_namespace: str, *, require: bool = False) -> bytes:
        """The key of `volume_namespace`, creating a random one when missing unless `require`."""
        secret = await self._lookup(volume_namespace)
        if secret is not None:
            return _decode(secret, self.ark_namespace)
        if require:
            return await self.get(volume_namespace)
        key = secrets.token_bytes(self.key_size)
        try:
            created = await self.client.create(
                SECRETS, key_secret(self.ark_namespace, volume_namespace, key), self.ark_namespace
            )
        except AlreadyExists:
            # Someone else created it first; theirs is the key.
            return await self.get(volume_namespace)
        log.info(
            "created restic key",
            extra={"volume_namespace": volume_namespace, "secret": created["metadata"]["name"]},
        )
        return key
