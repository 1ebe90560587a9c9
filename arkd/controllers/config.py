"""The Config `default`: wait for it, validate it, apply Ark's defaults, follow changes without a restart.

Controllers call `holder.current` (or `await holder.wait_ready()`) and get a validated snapshot with
the object store built from it. A change to the Config swaps the snapshot; an invalid change keeps
the last good one and says why in an Event on the Config and in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from arkd.api.config import Config, apply_config_defaults
from arkd.api.duration import parse_duration
from arkd.api.identifier import repo_identifier
from arkd.api.meta import validation_messages
from arkd.kube.events import EventRecorder
from arkd.kube.informer import Informer
from arkd.storage import ObjectStore, make_store

log = logging.getLogger("arkd.controllers.config")

CONFIG_NAME = "default"
SUPPORTED_STORAGE = ("aws", "local")


@dataclass(frozen=True)
class ArkConfig:
    """A validated Config with Ark's defaults applied, and the object store it names."""

    config: Config
    store: ObjectStore
    resource_version: str

    @property
    def restic_enabled(self) -> bool:
        return bool((self.config.backup_storage_provider.restic_location or "").strip())

    def restic_identifier(self, namespace: str) -> str:
        return repo_identifier(self.config, namespace)

    @property
    def bucket(self) -> str:
        return self.config.backup_storage_provider.bucket

    def seconds(self, field: str) -> float:
        value = getattr(self.config, field)
        return parse_duration(value).total_seconds() if value else 0.0


def validate_config(cfg: Config) -> list[str]:
    """What is wrong with a Config, as messages that say what to do."""
    errors: list[str] = []
    bsp = cfg.backup_storage_provider
    if bsp.name not in SUPPORTED_STORAGE:
        errors.append(
            f"backupStorageProvider.name {bsp.name!r} is not supported: use aws (AWS S3 or an "
            "S3-compatible store such as MinIO, with config.s3Url) or local (a directory, config.path)"
        )
    if bsp.name == "local":
        if not (bsp.config or {}).get("path"):
            errors.append("backupStorageProvider.config.path is required for the local provider")
    elif not bsp.bucket:
        errors.append("backupStorageProvider.bucket is required: name the bucket that holds the backups")
    restic = (bsp.restic_location or "").strip().strip("/")
    if restic and bsp.name != "local" and restic.split("/", 1)[0] == bsp.bucket:
        errors.append(
            f"backupStorageProvider.resticLocation {bsp.restic_location!r} is in the backup bucket "
            f"{bsp.bucket!r}: restic repositories need a bucket of their own, or backup sync would "
            "read them as backups"
        )
    return errors


class ConfigHolder:
    def __init__(
        self,
        informer: Informer,
        namespace: str,
        recorder: EventRecorder,
        store_factory: Callable[[str, str, dict[str, str]], ObjectStore] = make_store,
    ) -> None:
        self.informer = informer
        self.namespace = namespace
        self.recorder = recorder
        self.store_factory = store_factory
        self.current: ArkConfig | None = None
        self.error: str | None = None
        self._ready = asyncio.Event()
        self._retired: list[ObjectStore] = []
        self._listeners: list[Callable[[ArkConfig], None]] = []
        informer.add_handler(
            on_add=self._on_event, on_update=lambda _old, new: self._on_event(new), on_delete=self._on_delete
        )

    def subscribe(self, fn: Callable[[ArkConfig], None]) -> None:
        self._listeners.append(fn)

    async def wait_ready(self) -> ArkConfig:
        """Block until a valid Config `default` exists, saying so in the log every 30 s."""
        while True:
            if self.current is not None:
                return self.current
            log.info(
                "waiting for a valid Config",
                extra={"config": f"{self.namespace}/{CONFIG_NAME}", "problem": self.error or "not found"},
            )
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=30)
            except TimeoutError:
                continue

    def _on_delete(self, obj: dict[str, Any]) -> None:
        if obj.get("metadata", {}).get("name") == CONFIG_NAME:
            log.warning("Config deleted; keeping the last valid settings", extra={"config": CONFIG_NAME})

    def _on_event(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        if meta.get("name") != CONFIG_NAME:
            return
        rv = str(meta.get("resourceVersion", ""))
        if self.current is not None and self.current.resource_version == rv:
            return
        try:
            cfg = apply_config_defaults(Config.from_obj(obj))
            problems = validate_config(cfg)
        except (ValidationError, ValueError) as exc:
            problems = [_validation_message(exc)]
        if problems:
            self.error = "; ".join(problems)
            log.error("invalid Config", extra={"config": CONFIG_NAME, "errors": problems})
            self.recorder.record(obj, "Warning", "InvalidConfig", self.error)
            return
        bsp = cfg.backup_storage_provider
        try:
            store = self.store_factory(bsp.name, bsp.bucket, dict(bsp.config or {}))
        except Exception as exc:
            self.error = f"cannot set up backup storage: {exc}"
            log.error("invalid Config", extra={"config": CONFIG_NAME, "errors": [self.error]})
            self.recorder.record(obj, "Warning", "InvalidConfig", self.error)
            return
        previous = self.current
        self.current = ArkConfig(config=cfg, store=store, resource_version=rv)
        self.error = None
        if previous is not None:
            # In-flight work may still hold the old store; close it at shutdown, not now.
            self._retired.append(previous.store)
        log.info(
            "using Config",
            extra={"config": CONFIG_NAME, "provider": bsp.name, "bucket": bsp.bucket, "resourceVersion": rv},
        )
        self.recorder.record(
            obj, "Normal", "ConfigLoaded", f"using {bsp.name} storage, bucket {bsp.bucket!r}"
        )
        self._ready.set()
        for fn in self._listeners:
            try:
                fn(self.current)
            except Exception:
                log.exception("Config listener failed")

    async def close(self) -> None:
        stores = [*self._retired, *([self.current.store] if self.current else [])]
        for store in stores:
            try:
                await store.close()
            except Exception:
                log.exception("closing object store failed")


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(validation_messages(exc, "Config"))
    return str(exc)


__all__ = ["CONFIG_NAME", "ArkConfig", "ConfigHolder", "validate_config"]
