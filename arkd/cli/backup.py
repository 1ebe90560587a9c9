"""`ark backup create|get|describe`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from arkd.api import constants as c
from arkd.api.duration import DurationError, format_duration, parse_duration
from arkd.cli.context import CliError, cli_context, global_options, named_or_listed, run_async, with_client
from arkd.cli.output import human_age, human_bytes, human_time, output_option, phase, print_objects
from arkd.cli.wait import wait_for_phase
from arkd.controllers.resources import BACKUPS, PODVOLUMEBACKUPS
from arkd.kube.client import KubeClient
from arkd.kube.errors import AlreadyExists, NotFound

F = TypeVar("F", bound=Callable[..., Any])

TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable, comma-separated list flags, as in Ark."""
    out: list[str] = []
    for v in values:
        out.extend(p for p in v.split(",") if p)
    return out


def parse_bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise CliError(f"{name} must be true or false, got {value!r}")


def selector_from_cli(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    from arkd.backup.filters import parse_label_selector

    try:
        return parse_label_selector(text)
    except ValueError as exc:
        raise CliError(f"--selector {text!r} is not a valid label selector: {exc}") from exc


def filter_options(f: F) -> F:
    """The resource filters shared by `backup create` and `schedule create`."""
    for opt in reversed(
        [
            click.option(
                "--include-namespaces", multiple=True, help="Namespaces to include (default all, '*')."
            ),
            click.option("--exclude-namespaces", multiple=True, help="Namespaces to exclude."),
            click.option("--include-resources", multiple=True, help="Resources to include (default all)."),
            click.option("--exclude-resources", multiple=True, help="Resources to exclude."),
            click.option(
                "-l", "--selector", default=None, help="Only back up objects matching this label selector."
            ),
            click.option(
                "--ttl",
                default="720h0m0s",
                show_default=True,
                help="How long before the backup can be garbage collected (Go duration).",
            ),
            click.option(
                "--include-cluster-resources",
                default=None,
                metavar="true|false",
                help="Include cluster-scoped resources (default: those that included objects refer to).",
            ),
        ]
    ):
        f = opt(f)
    return f


def build_backup_spec(
    include_namespaces: tuple[str, ...],
    exclude_namespaces: tuple[str, ...],
    include_resources: tuple[str, ...],
    exclude_resources: tuple[str, ...],
    selector: str | None,
    ttl: str,
    include_cluster_resources: str | None,
) -> dict[str, Any]:
    try:
        ttl_text = format_duration(parse_duration(ttl))
    except DurationError as exc:
        raise CliError(f"--ttl: {exc}") from exc
    spec: dict[str, Any] = {
        "includedNamespaces": split_list(include_namespaces) or ["*"],
        "excludedNamespaces": split_list(exclude_namespaces),
        "includedResources": split_list(include_resources),
        "excludedResources": split_list(exclude_resources),
        "labelSelector": selector_from_cli(selector),
        "ttl": ttl_text,
    }
    icr = parse_bool("--include-cluster-resources", include_cluster_resources)
    if icr is not None:
        spec["includeClusterResources"] = icr
    return spec


@click.group()
def backup() -> None:
    """Work with backups."""


async def volume_progress(client: KubeClient, obj: dict[str, Any]) -> str:
    """Pod volumes done and bytes copied so far, for `--wait`."""
    uid = obj["metadata"].get("uid", "")
    pvbs = await client.list(
        PODVOLUMEBACKUPS, obj["metadata"]["namespace"], label_selector=f"{c.BACKUP_UID_LABEL}={uid}"
    )
    if not pvbs:
        return ""
    done = sum(1 for p in pvbs if phase(p) in ("Completed", "Failed"))
    moved = sum(int(((p.get("status") or {}).get("progress") or {}).get("bytesDone") or 0) for p in pvbs)
    return f"{done}/{len(pvbs)} pod volumes, {human_bytes(moved)}"


@backup.command()
@click.argument("name")
@filter_options
@click.option("--label", "labels", multiple=True, help="Labels for the backup, key=value (repeatable).")
@click.option(
    "--wait", is_flag=True, help="Wait for the backup to finish; exit non-zero unless it Completed."
)
@global_options
@run_async
async def create(name: str, labels: tuple[str, ...], wait: bool, **filters: Any) -> None:
    """Create a backup."""
    spec = build_backup_spec(**filters)
    ns = cli_context().namespace
    label_map: dict[str, str] = {}
    for item in split_list(labels):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--label {item!r} must be key=value")
        label_map[key] = value
    body: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": ns, **({"labels": label_map} if label_map else {})},
        "spec": spec,
    }

    async def go(client: KubeClient) -> None:
        try:
            await client.create(BACKUPS, body, ns)
        except AlreadyExists:
            raise CliError(f"backup {name!r} already exists in namespace {ns}") from None
        except NotFound as exc:
            raise CliError(
                f"cannot create the backup: {exc} (are the Ark CRDs installed? `kubectl apply -f "
                "manifests/common/00-prereqs.yaml`)"
            ) from None
        click.echo(f'Backup request "{name}" submitted successfully.')
        if not wait:
            click.echo(f"Run `ark backup describe {name}` for more details.")
            return
        obj = await wait_for_phase(client, BACKUPS, ns, name, TERMINAL, volume_progress)
        final = phase(obj)
        click.echo(f"Backup {name} finished: {final}. Run `ark backup describe {name}` for more details.")
        if final != "Completed":
            status = obj.get("status") or {}
            for reason in [status.get("failureReason"), *(status.get("validationErrors") or [])]:
                if reason:
                    click.echo(f"  {reason}")
            raise click.exceptions.Exit(1)

    await with_client(go)


def backup_row(obj: dict[str, Any]) -> list[str]:
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    selector = (obj.get("spec") or {}).get("labelSelector") or {}
    sel = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()) or "<none>"
    return [
        meta.get("name", ""),
        phase(obj),
        human_time(meta.get("creationTimestamp")),
        human_time(status.get("expiration")) if status.get("expiration") else "<never>",
        str(status.get("errors") or 0),
        str(status.get("warnings") or 0),
        sel,
    ]


@backup.command()
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None, help="Only show backups matching this label selector.")
@output_option
@global_options
@run_async
async def get(names: tuple[str, ...], selector: str | None, output: str) -> None:
    """Get backups."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        objs = await named_or_listed(client, BACKUPS, ns, names, selector)
        print_objects(
            objs,
            output,
            ["NAME", "STATUS", "CREATED", "EXPIRES", "ERRORS", "WARNINGS", "SELECTOR"],
            backup_row,
            "BackupList",
        )

    await with_client(go)


def _list_text(values: list[str] | None, empty: str = "*") -> str:
    return ", ".join(values) if values else empty


@backup.command()
@click.argument("name")
@click.option("--details", is_flag=True, help="List every pod volume backup.")
@global_options
@run_async
async def describe(name: str, details: bool) -> None:
    """Describe a backup, its status and its pod volume backups."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        try:
            obj = await client.get(BACKUPS, name, ns)
        except NotFound:
            raise CliError(f"backup {name!r} not found in namespace {ns}") from None
        uid = obj["metadata"].get("uid", "")
        pvbs = await client.list(PODVOLUMEBACKUPS, ns, label_selector=f"{c.BACKUP_UID_LABEL}={uid}")
        click.echo(describe_backup(obj, pvbs, details))

    await with_client(go)


def describe_backup(obj: dict[str, Any], pvbs: list[dict[str, Any]], details: bool) -> str:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    labels = ",".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items()) or "<none>"
    selector = spec.get("labelSelector")
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Labels:       {labels}",
        "",
        f"Phase:  {phase(obj)}",
    ]
    if status.get("failureReason"):
        lines.append(f"Reason: {status['failureReason']}")
    if status.get("validationErrors"):
        lines.append("Validation errors:")
        lines.extend(f"  {e}" for e in status["validationErrors"])
    lines += [
        "",
        "Namespaces:",
        f"  Included:  {_list_text(spec.get('includedNamespaces'))}",
        f"  Excluded:  {_list_text(spec.get('excludedNamespaces'), '<none>')}",
        "",
        "Resources:",
        f"  Included:        {_list_text(spec.get('includedResources'))}",
        f"  Excluded:        {_list_text(spec.get('excludedResources'), '<none>')}",
        f"  Cluster-scoped:  {_cluster_text(spec.get('includeClusterResources'))}",
        "",
        f"Label selector:  {_selector_text(selector)}",
        "",
        f"TTL:  {spec.get('ttl') or '<none>'}",
        "",
        f"Started:     {human_time(status.get('startTimestamp'))}",
        f"Completed:   {human_time(status.get('completionTimestamp'))}",
        f"Expiration:  {human_time(status.get('expiration'))}",
        "",
        f"Errors:    {status.get('errors') or 0}",
        *[f"    - {e}" for e in status.get("errorMessages") or []],
        f"Warnings:  {status.get('warnings') or 0}",
        *[f"    - {w}" for w in status.get("warningMessages") or []],
    ]
    shown = len(status.get("warningMessages") or []) + len(status.get("errorMessages") or [])
    if shown < (status.get("warnings") or 0) + (status.get("errors") or 0):
        lines.append(f"  (all of them: `ark backup logs {meta.get('name')}`)")
    lines += ["", *describe_pod_volume_backups(pvbs, details)]
    return "\n".join(lines)


def describe_pod_volume_backups(pvbs: list[dict[str, Any]], details: bool) -> list[str]:
    if not pvbs:
        return ["Restic Backups:  <none included>"]
    by_phase: dict[str, int] = {}
    for p in pvbs:
        by_phase[phase(p)] = by_phase.get(phase(p), 0) + 1
    lines = ["Restic Backups:"]
    lines += [f"  {ph}:  {n}" for ph, n in sorted(by_phase.items())]
    if any(phase(p) == "Completed" for p in pvbs):
        lines.append(
            "  Deleted backups free their restic data at the repository's next prune "
            "(`ark restic repo get` shows when maintenance last ran)."
        )
    if not details:
        lines.append("  (use --details to list every pod volume)")
        return lines
    lines.append("")
    for p in sorted(
        pvbs, key=lambda o: (o["spec"]["pod"]["namespace"], o["spec"]["pod"]["name"], o["spec"]["volume"])
    ):
        spec, st = p.get("spec") or {}, p.get("status") or {}
        pod = spec.get("pod") or {}
        prog = st.get("progress") or {}
        done, total = prog.get("bytesDone"), prog.get("totalBytes")
        duration = _duration(st.get("startTimestamp"), st.get("completionTimestamp"))
        lines.append(f"  {pod.get('namespace')}/{pod.get('name')}: {spec.get('volume')}")
        lines.append(f"    Phase:     {phase(p)}")
        lines.append(f"    Node:      {spec.get('node') or '<none>'}")
        lines.append(f"    Progress:  {human_bytes(done)} of {human_bytes(total)}")
        lines.append(f"    Snapshot:  {st.get('snapshotID') or '<none>'}")
        lines.append(f"    Duration:  {duration}")
        if st.get("message"):
            lines.append(f"    Message:   {st['message']}")
    return lines


def _duration(start: str | None, end: str | None) -> str:
    from arkd.cli.output import parse_time

    s, e = parse_time(start), parse_time(end)
    if s is None:
        return "<not started>"
    if e is None:
        return f"running for {human_age(start)}"
    return f"{(e - s).total_seconds():.1f}s"


def _cluster_text(value: bool | None) -> str:
    if value is None:
        return "auto"
    return "included" if value else "excluded"


def _selector_text(selector: dict[str, Any] | None) -> str:
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        values = ",".join(e.get("values") or [])
        parts.append(f"{e.get('key')} {e.get('operator')} ({values})")
    return ",".join(parts) or "<none>"


def _add_lifecycle_commands() -> None:
    from arkd.cli.backup_lifecycle import delete, download, logs

    for command in (delete, download, logs):
        backup.add_command(command)


_add_lifecycle_commands()
