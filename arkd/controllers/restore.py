"""The Restore controller of `ark server` (the claim/run/resume cycle is `ClaimedRunController`'s).

- New (or ""): validate (backupName names a Completed or PartiallyFailed Backup; namespace and
  resource includes/excludes valid and resolvable; no explicitly included non-restorable resource;
  a valid labelSelector and namespaceMapping) -> FailedValidation with `validationErrors`, or claim
  it (`startTimestamp`).
- A resumed run leaves objects that exist alone and reuses its PodVolumeRestores, so a second run
  is safe.
"""

from __future__ import annotations

import logging
from typing import Any

from arkd.api.constants import RESTORE_UID_LABEL, BackupPhase, RestorePhase
from arkd.api.meta import format_time
from arkd.controllers.claimed import CONFIG_POLL_SECONDS, ClaimedRunController
from arkd.controllers.resources import BACKUPS, PODVOLUMERESTORES, RESTORES
from arkd.controllers.restore_run import RestoreRun, RunDeps, plan_restore, restore_phase
from arkd.controllers.runtime import ServerContext
from arkd.kube.controller import Done, RequeueAfter, Result
from arkd.kube.errors import NotFound
from arkd.podvolume.tracker import PodVolumeTracker

log = logging.getLogger("arkd.controllers.restore")

Obj = dict[str, Any]

RESTORABLE_BACKUP_PHASES = (BackupPhase.COMPLETED.value, BackupPhase.PARTIALLY_FAILED.value)


class RestoreController(ClaimedRunController):
    kind = "Restore"
    resource = RESTORES

    def __init__(self, ctx: ServerContext) -> None:
        self.backups = ctx.informers.get(BACKUPS, ctx.namespace)
        self.pvrs = ctx.informers.get(PODVOLUMERESTORES, ctx.namespace)
        super().__init__(ctx, workers=ctx.settings.restore_workers, also_synced=(self.backups, self.pvrs))
        self.restores = self.informer
        self.tracker = PodVolumeTracker(self.pvrs, RESTORE_UID_LABEL, ctx.clock)
        self._deps = RunDeps(ctx, self.restores, self.backups, self.tracker)

    def phase_of(self, obj: Obj) -> str:
        return restore_phase(obj)

    def make_run(self, obj: Obj, *, resumed: bool) -> RestoreRun:
        return RestoreRun(self._deps, obj, resumed=resumed)

    def count_attempt(self, obj: Obj) -> None:
        self.ctx.metrics.restore_attempt.inc()

    def count_validation_failure(self, obj: Obj) -> None:
        self.ctx.metrics.restore_validation_failure.inc()

    async def new(self, obj: Obj) -> Result:
        if self.ctx.config.current is None:
            log.info("waiting for a valid Config before validating restores")
            return RequeueAfter(CONFIG_POLL_SECONDS)
        errors = await self.validate(obj)
        if errors:
            return await self.fail_validation(obj, errors)
        now = format_time(self.ctx.clock.wall().replace(microsecond=0))
        claimed = await self.claim(obj, {"phase": RestorePhase.IN_PROGRESS.value, "startTimestamp": now})
        backup = (obj.get("spec") or {}).get("backupName")
        log.info("restore claimed", extra={"backup": backup})
        self.ctx.recorder.record(claimed, "Normal", "RestoreStarted", f"restoring from backup {backup}")
        self.start(claimed, resumed=False)
        return Done()

    async def validate(self, obj: Obj) -> list[str]:
        """Every reason `obj` cannot run, as messages that say what to do; empty when it can."""
        errors: list[str] = []
        backup_name = (obj.get("spec") or {}).get("backupName")
        if backup_name:
            errors.extend(await self._backup_errors(str(backup_name)))
        errors.extend(await self.plan_errors(lambda resources: plan_restore(obj, resources)))
        return errors

    async def _backup_errors(self, name: str) -> list[str]:
        namespace = self.ctx.namespace
        backup = self.backups.cache.get(f"{namespace}/{name}")
        if backup is None:
            try:  # the cache may not have caught up with a Backup created a moment ago
                backup = await self.ctx.client.get(BACKUPS, name, namespace)
            except NotFound:
                return [
                    f"backup {name} not found in namespace {namespace}: `ark backup get` lists the backups "
                    "(backups in object storage appear after the next backup sync)"
                ]
        phase = str((backup.get("status") or {}).get("phase") or BackupPhase.NEW.value)
        if phase not in RESTORABLE_BACKUP_PHASES:
            return [
                f"backup {name} is {phase}: only a Completed or PartiallyFailed backup can be restored"
                + ("; wait for it to finish and create the restore again" if phase in ("New", "InProgress") else "")
            ]
        return []
