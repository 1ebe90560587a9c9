"""Schedules make Backups on time, once per due slot, on the real apiserver; the `ark schedule` commands."""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from arkd.api.meta import format_time
from arkd.cli.schedule import schedule as schedule_cli
from arkd.controllers.resources import BACKUPS, CONFIGS, SCHEDULES
from arkd.controllers.runtime import ServerContext
from arkd.controllers.schedule import ScheduleController
from arkd.kube.client import KubeClient
from tests.support.server import ArkServer, Runnable, events_for, eventually, run_cli

T = TypeVar("T")
Obj = dict[str, Any]
BUCKET = "ark-backups"
UTC = datetime.UTC


# -- a server with the controllers under test (wired as arkd.app wires them) ---------------------------


async def create_config(kube: KubeClient, namespace: str, storage_dir: Path, **settings: Any) -> None:
    (storage_dir / BUCKET).mkdir(parents=True, exist_ok=True)
    body = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": {"name": "local", "bucket": BUCKET, "config": {"path": str(storage_dir)}},
        **settings,
    }
    await kube.create(CONFIGS, body, namespace)


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


# -- helpers -------------------------------------------------------------------------------------------
class FastClock:
    """Starts at the real time and runs `speed` times faster: a minute passes every 60/speed seconds."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._wall0 = datetime.datetime.now(UTC)

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def wall(self) -> datetime.datetime:
        return self._wall0 + datetime.timedelta(seconds=self.now())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def schedule_body(sched: str, cron: str, **template: Any) -> Obj:
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Schedule",
        "metadata": {"name": sched},
        "spec": {"schedule": cron, "template": template},
    }


async def schedule_backups(kube: KubeClient, namespace: str, sched: str) -> list[Obj]:
    return sorted(
        await kube.list(BACKUPS, namespace, label_selector=f"ark-schedule={sched}"), key=lambda b: b["metadata"]["name"]
    )


def schedules(ctx: ServerContext) -> list[Runnable]:
    return [ScheduleController(ctx)]


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


# -- tests -------------------------------------------------------------------------------------------
async def test_an_every_minute_schedule_makes_named_labelled_backups(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir)
    sched = name("minutely")
    template = {"includedNamespaces": ["app"], "excludedResources": ["secrets"], "ttl": "1h0m0s"}
    # One schedule minute every 2 real seconds.
    async with ArkServer(kube, namespace, schedules, clock=FastClock(speed=30)) as server:
        created = await kube.create(SCHEDULES, schedule_body(sched, "* * * * *", **template), namespace)
        backups = await eventually(
            lambda: _at_least(3, schedule_backups(kube, namespace, sched)), "three scheduled backups", 60
        )
        obj = await kube.get(SCHEDULES, sched, namespace)
        attempts = server.ctx.registry.get_sample_value("ark_backup_attempt_total", {"schedule": sched})

    first_slot = parse(created["metadata"]["creationTimestamp"]).replace(second=0) + datetime.timedelta(minutes=1)
    slots = []
    for backup in backups:
        bname = backup["metadata"]["name"]
        slot = datetime.datetime.strptime(bname.removeprefix(f"{sched}-"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        assert slot.second == 0, bname
        slots.append(slot)
        assert backup["metadata"]["labels"] == {"ark-schedule": sched}
        assert backup["spec"] == template
        assert (backup.get("status") or {}).get("phase", "New") == "New"  # for the backup controller to run
    assert slots[0] == first_slot
    assert len(set(slots)) == len(slots)
    assert obj["status"]["phase"] == "Enabled"
    assert parse(obj["status"]["lastBackup"]) >= slots[-1]
    # The schedule's counters exist from the start (at 0: no backup controller runs here).
    assert attempts == 0.0


async def _at_least(n: int, items: Awaitable[list[Obj]]) -> list[Obj] | None:
    got = await items
    return got if len(got) >= n else None


def daily_cron_at(moment: datetime.datetime) -> str:
    return f"{moment.minute} {moment.hour} * * *"


async def test_runs_missed_while_the_server_was_down_make_one_backup(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir)
    sched = name("daily")
    slot = (datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)).replace(second=0, microsecond=0)
    await kube.create(SCHEDULES, schedule_body(sched, daily_cron_at(slot), ttl="720h0m0s"), namespace)
    # The last backup was three days ago: three daily runs were missed.
    await kube.patch(
        SCHEDULES,
        sched,
        {"status": {"phase": "Enabled", "lastBackup": format_time(slot - datetime.timedelta(days=3))}},
        namespace,
        subresource="status",
    )
    async with ArkServer(kube, namespace, schedules):
        obj = await eventually(
            lambda: _last_backup_at(kube, namespace, sched, slot), "lastBackup moving to the latest slot"
        )
        backups = await schedule_backups(kube, namespace, sched)
        created = await eventually(lambda: events_for(kube, namespace, sched, "BackupCreated"), "a BackupCreated event")
    assert [b["metadata"]["name"] for b in backups] == [f"{sched}-{slot:%Y%m%d%H%M%S}"]
    assert obj["status"]["phase"] == "Enabled"
    assert created[0]["message"] == f"created backup {sched}-{slot:%Y%m%d%H%M%S}"


async def _last_backup_at(kube: KubeClient, namespace: str, sched: str, slot: datetime.datetime) -> Obj | None:
    obj = await kube.get(SCHEDULES, sched, namespace)
    last = (obj.get("status") or {}).get("lastBackup")
    return obj if last and parse(last) == slot else None


async def test_a_backup_made_just_before_a_crash_is_not_made_twice(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir)
    sched = name("daily")
    slot = (datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)).replace(second=0, microsecond=0)
    await kube.create(SCHEDULES, schedule_body(sched, daily_cron_at(slot)), namespace)
    await kube.patch(
        SCHEDULES,
        sched,
        {"status": {"phase": "Enabled", "lastBackup": format_time(slot - datetime.timedelta(days=1))}},
        namespace,
        subresource="status",
    )
    # The previous server created this slot's backup and died before recording lastBackup.
    bname = f"{sched}-{slot:%Y%m%d%H%M%S}"
    await kube.create(
        BACKUPS,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Backup",
            "metadata": {"name": bname, "labels": {"ark-schedule": sched}},
        },
        namespace,
    )
    async with ArkServer(kube, namespace, schedules):
        await eventually(lambda: _last_backup_at(kube, namespace, sched, slot), "lastBackup recorded")
    assert [b["metadata"]["name"] for b in await schedule_backups(kube, namespace, sched)] == [bname]


async def test_an_invalid_cron_expression_fails_validation_and_a_fix_enables_it(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir)
    sched = name("bad")
    async with ArkServer(kube, namespace, schedules):
        await kube.create(SCHEDULES, schedule_body(sched, "0 25 * * *"), namespace)
        obj = await eventually(lambda: _phase(kube, namespace, sched, "FailedValidation"), "FailedValidation")
        assert len(obj["status"]["validationErrors"]) == 1
        message = obj["status"]["validationErrors"][0]
        assert message.startswith("invalid schedule '0 25 * * *':")
        assert "out of range" in message
        assert "5 fields (minute hour day-of-month month day-of-week)" in message
        event = await eventually(lambda: events_for(kube, namespace, sched, "FailedValidation"), "a Warning event")
        assert event[0]["type"] == "Warning"

        await kube.patch(SCHEDULES, sched, {"spec": {"schedule": "0 3 * * *"}}, namespace)
        obj = await eventually(lambda: _phase(kube, namespace, sched, "Enabled"), "the fixed schedule enabled")
        assert not obj["status"].get("validationErrors")
    assert await schedule_backups(kube, namespace, sched) == []


async def _phase(kube: KubeClient, namespace: str, sched: str, phase: str) -> Obj | None:
    obj = await kube.get(SCHEDULES, sched, namespace)
    return obj if (obj.get("status") or {}).get("phase") == phase else None


async def test_restore_only_mode_makes_no_scheduled_backups_and_says_why(
    kube: KubeClient, namespace: str, storage_dir: Path
) -> None:
    await create_config(kube, namespace, storage_dir, restoreOnlyMode=True)
    sched = name("daily")
    slot = (datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)).replace(second=0, microsecond=0)
    await kube.create(SCHEDULES, schedule_body(sched, daily_cron_at(slot)), namespace)
    await kube.patch(
        SCHEDULES,
        sched,
        {"status": {"phase": "Enabled", "lastBackup": format_time(slot - datetime.timedelta(days=1))}},
        namespace,
        subresource="status",
    )
    async with ArkServer(kube, namespace, schedules):
        skipped = await eventually(lambda: events_for(kube, namespace, sched, "BackupSkipped"), "a BackupSkipped event")
    assert "restore-only mode (Config restoreOnlyMode: true)" in skipped[0]["message"]
    assert await schedule_backups(kube, namespace, sched) == []


async def test_the_schedule_commands(kube: KubeClient, namespace: str, storage_dir: Path) -> None:
    await create_config(kube, namespace, storage_dir)
    sched = name("six-hourly")
    ns = ["-n", namespace]
    async with ArkServer(kube, namespace, schedules):
        bad = await run_cli(schedule_cli, "create", sched, "--schedule", "0 */6 * *", *ns)
        assert bad.exit_code == 1
        assert "--schedule: invalid schedule '0 */6 * *': a cron expression has 5 fields" in bad.stderr

        made = await run_cli(
            schedule_cli,
            "create",
            sched,
            "--schedule",
            "0 */6 * * *",
            "--include-namespaces",
            "app",
            "--ttl",
            "48h",
            *ns,
        )
        assert made.exit_code == 0, made.output
        assert made.stdout == f'Schedule "{sched}" created successfully.\n'
        await eventually(lambda: _phase(kube, namespace, sched, "Enabled"), "the schedule enabled")

        got = await run_cli(schedule_cli, "get", sched, "-o", "json", *ns)
        obj = json.loads(got.stdout)
        assert obj["spec"]["schedule"] == "0 */6 * * *"
        assert obj["spec"]["template"]["includedNamespaces"] == ["app"]
        assert obj["spec"]["template"]["ttl"] == "48h0m0s"

        table = await run_cli(schedule_cli, "get", *ns)
        header, row = table.stdout.splitlines()
        assert header.split()[:3] == ["NAME", "STATUS", "CREATED"]
        assert row.startswith(sched) and "Enabled" in row and "0 */6 * * *" in row and "<never>" in row

        described = await run_cli(schedule_cli, "describe", sched, *ns)
        assert "Phase:  Enabled" in described.stdout
        assert "Schedule:     0 */6 * * * (UTC)" in described.stdout
        assert "Backups:  <none yet>" in described.stdout

        deleted = await run_cli(schedule_cli, "delete", sched, *ns)
        assert deleted.exit_code == 0
        assert "Its backups are kept" in deleted.stdout
        missing = await run_cli(schedule_cli, "describe", sched, *ns)
        assert missing.exit_code == 1
        assert f"schedule '{sched}' not found in namespace {namespace}" in missing.stderr
