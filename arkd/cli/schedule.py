"""`ark schedule create|get|describe|delete`."""

from __future__ import annotations

import datetime
from typing import Any

import click

from arkd.api import constants as c
from arkd.cli.backup import build_backup_spec, filter_options
from arkd.cli.context import CliError, cli_context, global_options, named_or_listed, run_async, with_client
from arkd.cli.output import human_time, output_option, parse_time, phase, print_objects
from arkd.controllers.deletion import label_value
from arkd.controllers.resources import BACKUPS, SCHEDULES
from arkd.controllers.schedule import ScheduleError, parse_schedule
from arkd.kube.client import KubeClient
from arkd.kube.errors import AlreadyExists, NotFound

RECENT_BACKUPS = 10


@click.group()
def schedule() -> None:
    """Work with schedules: backups made on a cron schedule."""


@schedule.command()
@click.argument("name")
@click.option(
    "--schedule",
    "cron",
    required=True,
    help='When to back up, as a cron expression in UTC ("0 */6 * * *") or "@every 24h".',
)
@filter_options
@global_options
@run_async
async def create(name: str, cron: str, **filters: Any) -> None:
    """Create a schedule."""
    try:
        parse_schedule(cron)
    except ScheduleError as exc:
        raise CliError(f"--schedule: {exc}") from None
    ns = cli_context().namespace
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.SCHEDULE_KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"schedule": cron, "template": build_backup_spec(**filters)},
    }

    async def go(client: KubeClient) -> None:
        try:
            await client.create(SCHEDULES, body, ns)
        except AlreadyExists:
            raise CliError(f"schedule {name!r} already exists in namespace {ns}") from None
        except NotFound as exc:
            raise CliError(
                f"cannot create the schedule: {exc} (are the Ark CRDs installed? `kubectl apply -f "
                "manifests/common/00-prereqs.yaml`)"
            ) from None
        click.echo(f'Schedule "{name}" created successfully.')

    await with_client(go)


def schedule_row(obj: dict[str, Any]) -> list[str]:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    template = spec.get("template") or {}
    selector = template.get("labelSelector") or {}
    sel = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()) or "<none>"
    return [
        meta.get("name", ""),
        phase(obj),
        human_time(meta.get("creationTimestamp")),
        str(spec.get("schedule") or ""),
        str(template.get("ttl") or "<none>"),
        human_time(status.get("lastBackup")) if status.get("lastBackup") else "<never>",
        sel,
    ]


@schedule.command()
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None, help="Only show schedules matching this label selector.")
@output_option
@global_options
@run_async
async def get(names: tuple[str, ...], selector: str | None, output: str) -> None:
    """Get schedules."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        objs = await named_or_listed(client, SCHEDULES, ns, names, selector)
        print_objects(
            objs,
            output,
            ["NAME", "STATUS", "CREATED", "SCHEDULE", "BACKUP TTL", "LAST BACKUP", "SELECTOR"],
            schedule_row,
            "ScheduleList",
        )

    await with_client(go)


async def _get_schedule(client: KubeClient, name: str, ns: str) -> dict[str, Any]:
    try:
        return await client.get(SCHEDULES, name, ns)
    except NotFound:
        raise CliError(f"schedule {name!r} not found in namespace {ns} (`ark schedule get` lists them)") from None


@schedule.command()
@click.argument("name")
@global_options
@run_async
async def describe(name: str) -> None:
    """Describe a schedule: its cron expression, state, next run and recent backups."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        obj = await _get_schedule(client, name, ns)
        backups = await client.list(BACKUPS, ns, label_selector=f"{c.SCHEDULE_LABEL}={label_value(name)}")
        click.echo(describe_schedule(obj, backups, datetime.datetime.now(datetime.UTC)))

    await with_client(go)


def next_run_text(obj: dict[str, Any], now: datetime.datetime) -> str:
    """When the server will next back up for this schedule, as it computes it."""
    if phase(obj) != c.SchedulePhase.ENABLED:
        return "<none: the schedule is not enabled>"
    try:
        cron = parse_schedule((obj.get("spec") or {}).get("schedule"))
    except ScheduleError:
        return "<none>"
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    base = parse_time(status.get("lastBackup")) or parse_time(meta.get("creationTimestamp")) or now
    nxt = cron.next_after(base)
    if nxt <= now:
        return "now (a run is due)"
    return human_time(nxt.isoformat())


def describe_schedule(obj: dict[str, Any], backups: list[dict[str, Any]], now: datetime.datetime) -> str:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    template = spec.get("template") or {}
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Labels:       {','.join(f'{k}={v}' for k, v in (meta.get('labels') or {}).items()) or '<none>'}",
        "",
        f"Phase:  {phase(obj)}",
    ]
    if status.get("validationErrors"):
        lines.append("Validation errors:")
        lines.extend(f"  {e}" for e in status["validationErrors"])
    lines += [
        "",
        f"Schedule:     {spec.get('schedule') or '<none>'} (UTC)",
        f"Last backup:  {human_time(status.get('lastBackup')) if status.get('lastBackup') else '<never>'}",
        f"Next backup:  {next_run_text(obj, now)}",
        "",
        "Backup template:",
        f"  Namespaces included:  {', '.join(template.get('includedNamespaces') or ['*'])}",
        f"  Namespaces excluded:  {', '.join(template.get('excludedNamespaces') or []) or '<none>'}",
        f"  Resources included:   {', '.join(template.get('includedResources') or ['*'])}",
        f"  Resources excluded:   {', '.join(template.get('excludedResources') or []) or '<none>'}",
        f"  TTL:                  {template.get('ttl') or '<none>'}",
        "",
    ]
    if not backups:
        lines.append("Backups:  <none yet>")
        return "\n".join(lines)
    recent = sorted(backups, key=lambda b: str(b["metadata"].get("name")), reverse=True)[:RECENT_BACKUPS]
    lines.append(f"Backups ({len(backups)}, newest first):")
    lines.extend(f"  {b['metadata']['name']}  {phase(b)}" for b in recent)
    return "\n".join(lines)


@schedule.command()
@click.argument("name")
@global_options
@run_async
async def delete(name: str) -> None:
    """Delete a schedule. Its backups are kept; `ark backup delete` deletes those."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        try:
            await client.delete(SCHEDULES, name, ns)
        except NotFound:
            raise CliError(f"schedule {name!r} not found in namespace {ns}") from None
        click.echo(f'Schedule "{name}" deleted. Its backups are kept (`ark backup get -l ark-schedule={name}`).')

    await with_client(go)
