"""The Backup controller of `ark server` (the claim/run/resume cycle is `ClaimedRunController`'s).

- New (or ""): validate the spec against the Config and the cluster's resources -> FailedValidation
  with `validationErrors`, or claim it (`startTimestamp`, `expiration` when ttl > 0, `version: 1`).
  Backups created by backup sync (annotation `ark.heptio.com/synced-from`) are never run.
- A resumed run reuses the PodVolumeBackups it made before (deterministic names), reading their
  outcome from the cluster.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from arkd.api.constants import BACKUP_UID_LABEL, SYNCED_FROM_ANNOTATION, BackupPhase
from arkd.api.duration import parse_duration
from arkd.api.meta import format_time
from arkd.controllers.backup_run import BackupRun, RunDeps, plan_backup, schedule_of
from arkd.controllers.claimed import CONFIG_POLL_SECONDS, ClaimedRunController
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import BACKUPS, PODVOLUMEBACKUPS, RESTICREPOSITORIES
from arkd.controllers.runtime import ServerContext
from arkd.kube.controller import Done, RequeueAfter, Result
from arkd.kube.discovery import Discover, discover
from arkd.podvolume.tracker import PodVolumeTracker
from arkd.storage import StorageError
from arkd.storage.layout import backup_metadata_key

log = logging.getLogger("arkd.controllers.backup")

Obj = dict[str, Any]

BACKUP_FORMAT_VERSION = 1


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def phase_of(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or BackupPhase.NEW.value)


def _now(ctx: ServerContext) -> datetime.datetime:
    return ctx.clock.wall().replace(microsecond=0)


class BackupController(ClaimedRunController):
    kind = "Backup"
    resource = BACKUPS

    def __init__(self, ctx: ServerContext, *, discover_fn: Discover = discover) -> None:
        self.pvbs = ctx.informers.get(PODVOLUMEBACKUPS, ctx.namespace)
        self.repositories = ctx.informers.get(RESTICREPOSITORIES, ctx.namespace)
        super().__init__(
            ctx, workers=ctx.settings.backup_workers, also_synced=(self.pvbs, self.repositories),
            discover_fn=discover_fn,
        )
        self.backups = self.informer
        self.tracker = PodVolumeTracker(self.pvbs, BACKUP_UID_LABEL, ctx.clock)
        self._deps = RunDeps(ctx, self.backups, self.repositories, self.tracker, discover_fn)

    def phase_of(self, obj: Obj) -> str:
        return phase_of(obj)

    def make_run(self, obj: Obj, *, resumed: bool) -> BackupRun:
        return BackupRun(self._deps, obj, resumed=resumed)

    def count_attempt(self, obj: Obj) -> None:
        self.ctx.metrics.backup_attempt.labels(schedule=schedule_of(obj)).inc()

    def count_validation_failure(self, obj: Obj) -> None:
        self.ctx.metrics.backup_validation_failure.labels(schedule=schedule_of(obj)).inc()

    async def new(self, obj: Obj) -> Result:
        if SYNCED_FROM_ANNOTATION in (_meta(obj).get("annotations") or {}):
            return Done()  # backup sync writes its stored status next; it is not ours to run
        config = self.ctx.config.current
        if config is None:
            log.info("waiting for a valid Config before validating backups")
            return RequeueAfter(CONFIG_POLL_SECONDS)
        errors = await self._validate(obj, config)
        if errors:
            return await self.fail_validation(obj, errors)
        plan_ttl = _ttl(obj)
        now = _now(self.ctx)
        status: Obj = {
            "phase": BackupPhase.IN_PROGRESS.value,
            "startTimestamp": format_time(now),
            "version": BACKUP_FORMAT_VERSION,
        }
        if plan_ttl > datetime.timedelta(0):
            status["expiration"] = format_time(now + plan_ttl)
        claimed = await self.claim(obj, status)
        log.info("backup claimed", extra={"expiration": status.get("expiration")})
        self.ctx.recorder.record(claimed, "Normal", "BackupStarted", "backup started")
        self.start(claimed, resumed=False)
        return Done()

    async def _validate(self, obj: Obj, config: ArkConfig) -> list[str]:
        errors: list[str] = []
        if config.config.restore_only_mode:
            errors.append(
                "the server is in restore-only mode (Config restoreOnlyMode: true), so it takes no backups; "
                "set restoreOnlyMode to false in Config default to back up"
            )
        errors.extend(await self.plan_errors(lambda resources: plan_backup(obj, resources)))
        name = str(_meta(obj).get("name"))
        try:
            if await config.store.exists(backup_metadata_key(name)):
                errors.append(
                    f"a backup named {name!r} already exists in object storage ({config.store.location}); "
                    "choose another name, or delete the old one with `ark backup delete`"
                )
        except StorageError as exc:
            log.warning("cannot check object storage for an existing backup", extra={"error": str(exc)})
        return errors


def _ttl(obj: Obj) -> datetime.timedelta:
    ttl = (obj.get("spec") or {}).get("ttl")
    return parse_duration(ttl) if isinstance(ttl, str) and ttl else datetime.timedelta(0)
