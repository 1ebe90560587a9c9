"""One run of a Backup: collect, stream the tarball, back up pod volumes, upload, finalise.

A run is a supervised task (DESIGN convention 5). It holds nothing in memory that the cluster or
the store does not also hold: restarting it from the top (a new server after a crash) collects
again, finds the PodVolumeBackups made before by their deterministic names, and overwrites the
store objects atomically. Object store writes: the tarball (streamed while items are collected),
then the PodVolumeBackup list, the backup's log, and `ark-backup.json` last, so a backup that
backup sync can see is always complete. The status patch comes after the store writes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from arkd.api.backup import Backup
from arkd.api.constants import (
    POD_VOLUME_TIMEOUT_ANNOTATION,
    SCHEDULE_LABEL,
    BackupPhase,
)
from arkd.api.duration import format_duration, parse_duration
from arkd.api.meta import format_time, validation_messages
from arkd.backup.collector import BackupCollector, KubeLister
from arkd.backup.filters import (
    FilterValidationError,
    IncludesExcludes,
    LabelSelector,
    spec_filters,
)
from arkd.backup.tarball import TarballError, TarballWriter, gzip_bytes, gzip_json
from arkd.controllers.backup_podvolumes import PodResult, PodVolumeBackupper, without_managed_fields
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import BACKUPS
from arkd.controllers.runlog import RunLog
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import at_least_version
from arkd.kube.discovery import Discover
from arkd.kube.errors import ApiError, Conflict, NotFound
from arkd.kube.informer import Informer
from arkd.kube.patch import status_merge_patch
from arkd.kube.resource import Resource
from arkd.log import bind
from arkd.podvolume.selection import pod_ref, requested_volumes
from arkd.podvolume.tracker import PodVolumeTracker
from arkd.storage import StorageError
from arkd.storage.layout import (
    backup_log_key,
    backup_metadata_key,
    backup_tarball_key,
    podvolumebackups_key,
)

log = logging.getLogger("arkd.controllers.backup")

Obj = dict[str, Any]

PODS = "pods"
SUMMARY_ERRORS = 3
MAX_WARNING_EVENTS = 10
# Full warning and error texts kept in the Backup status for `ark backup describe`; the log has all.
MAX_STATUS_MESSAGES = 20
_FINAL_PATCH_ATTEMPTS = 5
_CACHE_CATCH_UP_SECONDS = 10.0


# --------------------------------------------------------------------------- what to back up


@dataclass(frozen=True)
class BackupPlan:
    """A Backup's spec, resolved against the server's resources and validated."""

    namespaces: IncludesExcludes
    resources: IncludesExcludes
    selector: LabelSelector
    include_cluster_resources: bool | None
    ttl: datetime.timedelta


def plan_backup(obj: Obj, resources: Sequence[Resource]) -> BackupPlan:
    """The plan of `obj`; FilterValidationError with every problem at once when the spec is invalid."""
    try:
        backup = Backup.from_obj(obj)
    except ValidationError as exc:
        raise FilterValidationError(validation_messages(exc, "Backup")) from None
    spec = backup.spec
    errors: list[str] = []
    filters = spec_filters(obj.get("spec") or {}, resources, errors)
    if errors:
        raise FilterValidationError(errors)
    return BackupPlan(
        namespaces=filters.namespaces,
        resources=filters.resources,
        selector=filters.selector,
        include_cluster_resources=spec.include_cluster_resources,
        ttl=spec.ttl_timedelta or datetime.timedelta(0),
    )


# --------------------------------------------------------------------------- the run


@dataclass
class RunDeps:
    """What a run needs from its controller."""

    ctx: ServerContext
    backups: Informer
    repositories: Informer
    tracker: PodVolumeTracker
    discover: Discover


class _UploadFailed(Exception):
    pass


@dataclass
class _Outcome:
    fatal: str | None = None
    tarball_uploaded: bool = False
    items: int = 0
    tarball_size: int = 0
    pvbs: list[Obj] = field(default_factory=list)


def schedule_of(obj: Obj) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(SCHEDULE_LABEL) or "")


def summarize(errors: Sequence[str]) -> str:
    shown = "; ".join(errors[:SUMMARY_ERRORS])
    more = len(errors) - SUMMARY_ERRORS
    suffix = f"; and {more} more (see the backup log)" if more > 0 else ""
    return f"{len(errors)} error{'s' if len(errors) != 1 else ''}: {shown}{suffix}"


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


class BackupRun:
    def __init__(self, deps: RunDeps, backup: Obj, *, resumed: bool) -> None:
        self.deps = deps
        self.ctx = deps.ctx
        self.obj = backup
        meta = backup.get("metadata") or {}
        self.name = str(meta.get("name") or "")
        self.namespace = str(meta.get("namespace") or "")
        self.uid = str(meta.get("uid") or "")
        self.key = f"{self.namespace}/{self.name}"
        self.resumed = resumed
        self.schedule = schedule_of(backup)
        self.log = RunLog("backup", self.key, self.uid, self.ctx.clock.wall, log)
        self.item_errors: list[str] = []
        self.volume_errors: list[str] = []
        # resourceVersion of the final status write; the controller ignores older cached copies.
        self.final_resource_version: str | None = None

    async def execute(self) -> None:
        config = await self.ctx.config.wait_ready()
        with bind(backup=self.key, backup_uid=self.uid):
            self.log.attach()
            try:
                outcome = await self._collect(config)
                await self._finalize(config, outcome)
            finally:
                self.log.detach()

    # -- collecting ----------------------------------------------------------------------------------
    def _pod_volume_timeout(self, config: ArkConfig) -> float:
        default = config.seconds("pod_volume_operation_timeout")
        annotation = ((self.obj.get("metadata") or {}).get("annotations") or {}).get(
            POD_VOLUME_TIMEOUT_ANNOTATION
        )
        if annotation:
            try:
                value = parse_duration(annotation).total_seconds()
            except ValueError as exc:
                self.log.warn(
                    f"ignoring annotation {POD_VOLUME_TIMEOUT_ANNOTATION}={annotation!r} ({exc}); using "
                    f"Config podVolumeOperationTimeout {format_duration(datetime.timedelta(seconds=default))}"
                )
            else:
                if value > 0:
                    return value
        return default

    def _deadline(self, timeout: float) -> float:
        """Monotonic deadline of the pod volume work, counted from the backup's start (survives restarts)."""
        clock = self.ctx.clock
        started = _parse_time((self.obj.get("status") or {}).get("startTimestamp")) or clock.wall()
        left = (started + datetime.timedelta(seconds=timeout) - clock.wall()).total_seconds()
        return clock.now() + max(0.0, left)

    async def _collect(self, config: ArkConfig) -> _Outcome:
        ctx = self.ctx
        self.log.info(
            "resuming backup after a restart" if self.resumed else "starting backup",
            storage=config.store.location,
        )
        if (self.obj.get("spec") or {}).get("hooks"):
            self.log.warn("spec.hooks is set, but this server does not run backup hooks; backing up without them")
        try:
            resources = await self.deps.discover(ctx.client)
            plan = plan_backup(self.obj, resources)
        except FilterValidationError as exc:
            return _Outcome(fatal=f"the backup spec is not valid on this cluster: {exc}")
        except ApiError as exc:
            return _Outcome(fatal=f"cannot discover the cluster's API resources: {exc}")
        store = config.store
        writer = TarballWriter()
        put = asyncio.create_task(store.put(backup_tarball_key(self.name), writer.chunks()))

        def on_put_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                writer.abort(_UploadFailed(str(task.exception())))

        put.add_done_callback(on_put_done)
        pods: PodVolumeBackupper | None = None
        if config.restic_enabled:
            timeout = self._pod_volume_timeout(config)
            pods = PodVolumeBackupper(
                client=ctx.client,
                ark_namespace=ctx.namespace,
                backup=self.obj,
                config=config,
                settings=ctx.settings,
                tracker=self.deps.tracker,
                repositories=self.deps.repositories,
                clock=ctx.clock,
                deadline=self._deadline(timeout),
                timeout_text=format_duration(datetime.timedelta(seconds=timeout)),
                reporter=self.log,
            )
        pvbs: list[Obj] = []
        try:
            collector = BackupCollector(
                KubeLister(ctx.client),
                resources,
                namespaces=plan.namespaces,
                resource_filter=plan.resources,
                label_selector=plan.selector,
                include_cluster_resources=plan.include_cluster_resources,
            )
            async for item in collector.items():
                if item.group_resource == PODS and requested_volumes(item.obj):
                    if pods is not None:
                        pods.add_pod(item.obj)
                        continue
                    self.log.warn(
                        "restic is disabled (Config backupStorageProvider.resticLocation is empty): pod "
                        f"{pod_ref(item.obj)} is backed up without its volumes "
                        f"{', '.join(requested_volumes(item.obj))}",
                        pod=pod_ref(item.obj),
                    )
                await self._add(writer, put, item.group_resource, item.namespace, item.name, item.obj)
            for error in collector.errors:
                self._item_error(str(error))
            if pods is not None and pods.pods:
                self.log.info("all items collected; waiting for the pods' volume backups", pods=pods.pods)
                results: list[PodResult] = await pods.finish()
                for result in results:
                    for message in result.errors:
                        self.volume_errors.append(message)
                        self.log.error(message, pod=pod_ref(result.pod))
                    meta = result.pod.get("metadata") or {}
                    await self._add(
                        writer, put, PODS, str(meta.get("namespace")), str(meta.get("name")),
                        result.annotated_pod(),
                    )
                    pvbs.extend(without_managed_fields(p) for p in result.pvbs)
            await writer.close()
            await put
        except (_UploadFailed, StorageError) as exc:
            return _Outcome(fatal=f"cannot upload the backup tarball to {store.location}: {exc}")
        except TarballError as exc:
            # Only the stream itself fails this way here (bad items are caught in _add).
            return _Outcome(fatal=f"cannot write the backup tarball: {exc}")
        finally:
            if not put.done():
                writer.abort(_UploadFailed("the backup run stopped before the tarball was complete"))
                put.cancel()
                await asyncio.gather(put, return_exceptions=True)
            if pods is not None:
                await pods.close()
        return _Outcome(
            tarball_uploaded=True, items=writer.items, tarball_size=writer.compressed_size, pvbs=pvbs
        )

    async def _add(
        self,
        writer: TarballWriter,
        put: asyncio.Task[None],
        group_resource: str,
        namespace: str | None,
        name: str,
        obj: Obj,
    ) -> None:
        try:
            await writer.add(group_resource, namespace, name, obj)
        except (TarballError, _UploadFailed) as exc:
            if put.done():
                failure = None if put.cancelled() else put.exception()
                raise _UploadFailed(str(failure or exc)) from None
            self._item_error(f"{group_resource} {namespace + '/' if namespace else ''}{name}: {exc}")

    def _item_error(self, message: str) -> None:
        self.item_errors.append(message)
        self.log.error(message)

    # -- finalising ----------------------------------------------------------------------------------
    async def _finalize(self, config: ArkConfig, outcome: _Outcome) -> None:
        ctx = self.ctx
        store = config.store
        errors = [*self.volume_errors, *self.item_errors]
        if outcome.tarball_uploaded:
            try:
                await store.put(podvolumebackups_key(self.name), gzip_json(outcome.pvbs))
            except StorageError as exc:
                message = f"cannot upload the PodVolumeBackup list: {exc}"
                errors.append(message)
                self.log.error(message)
        fatal = outcome.fatal
        phase = BackupPhase.FAILED if fatal else BackupPhase.PARTIALLY_FAILED if errors else BackupPhase.COMPLETED
        completion = ctx.clock.wall().replace(microsecond=0)
        status: Obj = {
            "phase": phase.value,
            "completionTimestamp": format_time(completion),
            "warnings": len(self.log.warnings),
            "errors": len(errors) + (1 if fatal else 0),
            "failureReason": fatal or (summarize(errors) if errors else None),
            "warningMessages": self.log.warnings[:MAX_STATUS_MESSAGES] or None,
            "errorMessages": ([fatal] if fatal else [])[:1] + errors[: MAX_STATUS_MESSAGES - (1 if fatal else 0)]
            or None,
        }
        if fatal:
            self.log.error("backup failed", reason=fatal)
        self.log.info(
            "backup finished", phase=phase.value, items=outcome.items, errors=status["errors"],
            warnings=status["warnings"],
        )
        try:
            await store.put(backup_log_key(self.name), gzip_bytes(self.log.text()))
        except StorageError as exc:
            log.warning("cannot upload the backup log", extra={"error": str(exc)})
        if outcome.tarball_uploaded:
            try:
                await store.put(backup_metadata_key(self.name), self._metadata(status))
            except StorageError as exc:
                phase = BackupPhase.FAILED
                status["phase"] = phase.value
                status["errors"] = int(status["errors"]) + 1
                status["failureReason"] = fatal = f"cannot upload ark-backup.json to {store.location}: {exc}"
                log.error("backup failed", extra={"reason": fatal})
        written = await self._patch_final(status)
        if written:
            self._observe(phase, status, outcome)

    def _metadata(self, status: Obj) -> bytes:
        current = self.deps.backups.cache.get(self.key)
        if current is None or (current.get("metadata") or {}).get("uid") != self.uid:
            current = self.obj
        body = without_managed_fields(current)
        body["status"] = {**(current.get("status") or {}), **{k: v for k, v in status.items() if v is not None}}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    async def _patch_final(self, status: Obj) -> bool:
        """Write the final status (read, check, patch; a conflict with an unrelated change retries)."""
        client = self.ctx.client
        for _ in range(_FINAL_PATCH_ATTEMPTS):
            try:
                current = await client.get(BACKUPS, self.name, self.namespace)
            except NotFound:
                log.info("backup deleted while it ran; nothing to record")
                return False
            meta = current.get("metadata") or {}
            current_phase = (current.get("status") or {}).get("phase")
            if meta.get("uid") != self.uid or current_phase != BackupPhase.IN_PROGRESS:
                log.info("backup changed hands while it ran; not recording", extra={"phase": current_phase})
                return False
            try:
                updated = await client.patch(
                    BACKUPS, self.name, status_merge_patch(current, status), self.namespace,
                    subresource="status",
                )
            except Conflict:
                continue
            rv = str((updated.get("metadata") or {}).get("resourceVersion") or "")
            self.final_resource_version = rv
            if rv:
                await self.deps.backups.cache.wait_for(self.key, at_least_version(rv), _CACHE_CATCH_UP_SECONDS)
            return True
        raise Conflict(409, "Conflict", f"backup {self.key} kept changing; could not record its final status")

    def _observe(self, phase: BackupPhase, status: Obj, outcome: _Outcome) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        schedule = self.schedule
        event_obj = self.deps.backups.cache.get(self.key) or self.obj
        started = _parse_time((self.obj.get("status") or {}).get("startTimestamp"))
        finished = _parse_time(status["completionTimestamp"])
        if started is not None and finished is not None:
            metrics.backup_duration.labels(schedule=schedule).observe(max(0.0, (finished - started).total_seconds()))
        if outcome.tarball_uploaded:
            metrics.backup_tarball_size.labels(schedule=schedule).set(outcome.tarball_size)
            metrics.backup_items.labels(schedule=schedule).set(outcome.items)
        for warning in self.log.warnings[:MAX_WARNING_EVENTS]:
            ctx.recorder.record(event_obj, "Warning", "BackupWarning", warning)
        if phase == BackupPhase.COMPLETED:
            metrics.backup_success.labels(schedule=schedule).inc()
            if finished is not None:
                metrics.backup_last_success.labels(schedule=schedule).set(finished.timestamp())
            ctx.recorder.record(
                event_obj, "Normal", "BackupCompleted",
                f"backed up {outcome.items} items ({outcome.tarball_size} bytes compressed)",
            )
        elif phase == BackupPhase.PARTIALLY_FAILED:
            metrics.backup_partial_failure.labels(schedule=schedule).inc()
            ctx.recorder.record(event_obj, "Warning", "BackupPartiallyFailed", str(status["failureReason"]))
        else:
            metrics.backup_failure.labels(schedule=schedule).inc()
            ctx.recorder.record(event_obj, "Warning", "BackupFailed", str(status["failureReason"]))
