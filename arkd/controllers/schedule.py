"""The Schedule controller: Backups from a template on a cron schedule.

A Schedule is validated (New -> Enabled, or FailedValidation saying what is wrong with the cron
expression), then each due slot gets one Backup named `<schedule>-<YYYYMMDDHHMMSS>` (the slot's UTC
time) labelled `ark-schedule=<schedule>`, whose spec is the schedule's template, and
`status.lastBackup` records the slot. The next run is the first slot after `lastBackup` (or after the
schedule's creation): when several slots passed while the server was down, one backup is made, for
the latest of them. Naming by slot makes a retry after a crash find the backup it already made
(AlreadyExists) instead of making a second one.

Cron expressions are what Ark 0.9 accepted (robfig/cron's ParseStandard): five fields, the
descriptors @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly, or
`@every <Go duration>`. Times are UTC.
"""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from pydantic import ValidationError

from arkd.api.constants import API_VERSION, BACKUP_KIND, SCHEDULE_LABEL, SchedulePhase
from arkd.api.duration import DurationError, parse_duration
from arkd.api.meta import format_time, validation_messages
from arkd.api.schedule import Schedule
from arkd.controllers.deletion import label_value
from arkd.controllers.resources import BACKUPS, SCHEDULES
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import object_key
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.errors import AlreadyExists
from arkd.kube.patch import status_merge_patch
from arkd.kube.workqueue import WorkQueue

log = logging.getLogger("arkd.controllers.schedule")

Obj = dict[str, Any]

CRON_FIELDS = "minute hour day-of-month month day-of-week"
EXAMPLE = '"0 */6 * * *" (every 6 hours) or "@every 24h"'
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
MAX_NAME_LENGTH = 253 - 1 - len("20060102150405")
CONFIG_POLL_SECONDS = 5.0


class ScheduleError(ValueError):
    """The cron expression is not usable; the message says what is wrong and what to write."""


def _utc_seconds(t: datetime.datetime) -> datetime.datetime:
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.astimezone(datetime.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: a cron expression, or a fixed interval (`@every`)."""

    expression: str
    every: datetime.timedelta | None = None

    def next_after(self, t: datetime.datetime) -> datetime.datetime:
        """The first run strictly after `t` (whole seconds, UTC)."""
        base = _utc_seconds(t)
        if self.every is not None:
            return base + self.every
        nxt: datetime.datetime = croniter(self.expression, base).get_next(datetime.datetime)
        return nxt.astimezone(datetime.UTC)

    def due_slot(self, base: datetime.datetime, now: datetime.datetime) -> datetime.datetime | None:
        """The latest run time in (base, now], or None when nothing is due yet.

        Any number of missed runs collapse into this one slot.
        """
        base = _utc_seconds(base)
        first = self.next_after(base)
        if first > now:
            return None
        if self.every is not None:
            steps = math.floor((now - base) / self.every)
            return base + steps * self.every
        # get_prev is strictly before its base: start one second after `now` so `now` itself counts.
        start = _utc_seconds(now) + datetime.timedelta(seconds=1)
        latest: datetime.datetime = croniter(self.expression, start).get_prev(datetime.datetime)
        return max(first, latest.astimezone(datetime.UTC))


def parse_schedule(expression: str | None) -> CronSchedule:
    """Parse a Schedule's `spec.schedule`, or raise ScheduleError saying what is wrong."""
    text = (expression or "").strip()
    if not text:
        raise ScheduleError(f"spec.schedule is empty: set a cron expression ({CRON_FIELDS}), e.g. {EXAMPLE}")
    if text.startswith("@every"):
        return _parse_every(expression or "", text[len("@every") :].strip())
    if text.startswith("@"):
        if text.lower() not in DESCRIPTORS:
            raise ScheduleError(
                f"invalid schedule {expression!r}: unknown descriptor; use one of "
                f"{', '.join(DESCRIPTORS)} or @every <duration>"
            )
        text = text.lower()
    else:
        fields = text.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"invalid schedule {expression!r}: a cron expression has 5 fields ({CRON_FIELDS}), "
                f"got {len(fields)}; e.g. {EXAMPLE}"
            )
        text = " ".join(fields)
    try:
        # Also proves the expression ever matches (e.g. "0 0 31 2 *" never does).
        croniter(text, datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)).get_next(datetime.datetime)
    except CroniterBadDateError:
        raise ScheduleError(
            f"invalid schedule {expression!r}: it never matches any date (check day-of-month against month); "
            f"e.g. {EXAMPLE}"
        ) from None
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(
            f"invalid schedule {expression!r}: {exc}; use 5 fields ({CRON_FIELDS}), e.g. {EXAMPLE}"
        ) from None
    return CronSchedule(text)


def _parse_every(expression: str, value: str) -> CronSchedule:
    try:
        interval = parse_duration(value)
    except DurationError as exc:
        raise ScheduleError(f"invalid schedule {expression!r}: {exc}") from None
    # robfig/cron: whole seconds, at least one.
    interval = datetime.timedelta(seconds=max(1, int(interval.total_seconds())))
    return CronSchedule(f"@every {value}", every=interval)


def validate_schedule(obj: Obj) -> tuple[CronSchedule | None, list[str]]:
    """The parsed cron schedule of a Schedule object and everything wrong with the object."""
    errors: list[str] = []
    name = str((obj.get("metadata") or {}).get("name") or "")
    if len(name) > MAX_NAME_LENGTH:
        errors.append(
            f"the schedule name is {len(name)} characters long; its backups are named "
            f"<schedule>-<YYYYMMDDHHMMSS>, so it can have at most {MAX_NAME_LENGTH}"
        )
    cron: CronSchedule | None = None
    try:
        cron = parse_schedule((obj.get("spec") or {}).get("schedule"))
    except ScheduleError as exc:
        errors.append(str(exc))
    try:
        Schedule.from_obj(obj)
    except ValidationError as exc:
        errors.extend(validation_messages(exc, "Schedule"))
    return (cron if not errors else None), errors


def backup_name(schedule: str, slot: datetime.datetime) -> str:
    return f"{schedule}-{_utc_seconds(slot).strftime(TIMESTAMP_FORMAT)}"


def backup_for_slot(schedule_obj: Obj, slot: datetime.datetime) -> Obj:
    """The Backup a Schedule makes for `slot`: its template as the spec, labelled with the schedule."""
    meta = schedule_obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    template = (schedule_obj.get("spec") or {}).get("template") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": BACKUP_KIND,
        "metadata": {
            "name": backup_name(name, slot),
            "namespace": meta.get("namespace"),
            "labels": {SCHEDULE_LABEL: label_value(name)},
        },
        "spec": dict(template),
    }


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.UTC)
    except ValueError:
        return None


class ScheduleController:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.schedules = ctx.informers.get(SCHEDULES, ctx.namespace)
        self.queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "schedule", self.queue, self.reconcile, metrics=ctx.controller_metrics, clock=ctx.clock
        )
        # Schedule name -> the slot whose skipping (restore-only mode) was last reported.
        self._skipped: dict[str, datetime.datetime] = {}
        self.schedules.add_handler(on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new))
        # restoreOnlyMode or the sync period may have changed: look at every schedule again.
        ctx.config.subscribe(lambda _config: self._enqueue_all())

    async def run(self) -> None:
        await self.schedules.wait_synced()
        await self.controller.run()

    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_all(self) -> None:
        for obj in self.schedules.cache.list():
            self._enqueue(obj)

    async def reconcile(self, key: str) -> Result:
        obj = self.schedules.cache.get(key)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return Done()
        name = str(obj["metadata"]["name"])
        self.ctx.metrics.init_schedule(name)
        status = obj.get("status") or {}
        cron, errors = validate_schedule(obj)
        if cron is None:
            if status.get("phase") != SchedulePhase.FAILED_VALIDATION or status.get("validationErrors") != errors:
                updated = await self._patch_status(
                    obj, {"phase": SchedulePhase.FAILED_VALIDATION.value, "validationErrors": errors}
                )
                log.warning("schedule failed validation", extra={"schedule": name, "errors": errors})
                self.ctx.recorder.record(updated, "Warning", "FailedValidation", "; ".join(errors))
            return Done()
        if status.get("phase") != SchedulePhase.ENABLED or status.get("validationErrors"):
            obj = await self._patch_status(obj, {"phase": SchedulePhase.ENABLED.value, "validationErrors": None})
            log.info("schedule enabled", extra={"schedule": name, "cron": cron.expression})
            self.ctx.recorder.record(obj, "Normal", "Enabled", f"schedule {cron.expression!r} enabled")

        config = self.ctx.config.current
        if config is None:
            return RequeueAfter(CONFIG_POLL_SECONDS)
        resync = max(1.0, config.seconds("schedule_sync_period"))
        now = self.ctx.clock.wall()
        last = _time((obj.get("status") or {}).get("lastBackup"))
        base = last or _time(obj["metadata"].get("creationTimestamp")) or now
        slot = cron.due_slot(base, now)
        if slot is not None:
            if config.config.restore_only_mode:
                message = (
                    f"no backup made for the run due at {format_time(slot)}: the server is in restore-only "
                    "mode (Config restoreOnlyMode: true); set restoreOnlyMode to false to resume backups"
                )
                if self._skipped.get(name) != slot:
                    self._skipped[name] = slot
                    log.warning("scheduled backup skipped", extra={"schedule": name, "slot": format_time(slot)})
                    self.ctx.recorder.record(obj, "Warning", "BackupSkipped", message)
                # lastBackup stays: once backups are allowed again, the missed run is made (once).
                base = slot
            else:
                await self._create_backup(obj, slot)
                base = slot
        delay = (cron.next_after(base) - self.ctx.clock.wall()).total_seconds()
        return RequeueAfter(min(max(delay, 0.0), resync))

    async def _create_backup(self, obj: Obj, slot: datetime.datetime) -> None:
        body = backup_for_slot(obj, slot)
        bname = body["metadata"]["name"]
        try:
            await self.ctx.client.create(BACKUPS, body, self.ctx.namespace)
        except AlreadyExists:
            # Made by an earlier attempt that did not get to record lastBackup.
            log.info("scheduled backup already exists", extra={"backup": bname})
        else:
            log.info("scheduled backup created", extra={"backup": bname, "slot": format_time(slot)})
        updated = await self._patch_status(obj, {"lastBackup": format_time(slot)})
        self.ctx.recorder.record(updated, "Normal", "BackupCreated", f"created backup {bname}")

    async def _patch_status(self, obj: Obj, status: Obj) -> Obj:
        return await self.ctx.client.patch(
            SCHEDULES,
            str(obj["metadata"]["name"]),
            status_merge_patch(obj, status),
            self.ctx.namespace,
            subresource="status",
        )
