"""`ark restore create|get|describe`."""

from __future__ import annotations

import datetime
from typing import Any

import click

from arkd.api import constants as c
from arkd.cli.backup import parse_bool, selector_from_cli, split_list
from arkd.cli.context import CliError, cli_context, global_options, named_or_listed, run_async, with_client
from arkd.cli.output import human_bytes, human_time, output_option, phase, print_objects
from arkd.cli.wait import wait_for_phase
from arkd.controllers.resources import BACKUPS, PODVOLUMERESTORES, RESTORES
from arkd.kube.client import KubeClient
from arkd.kube.errors import AlreadyExists, NotFound

TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}


def parse_mappings(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in split_list(values):
        src, sep, dst = item.partition(":")
        if not sep or not src or not dst:
            raise CliError(f"--namespace-mappings entry {item!r} must be source:target, e.g. app:app2")
        out[src] = dst
    return out


@click.group()
def restore() -> None:
    """Work with restores."""


async def volume_progress(client: KubeClient, obj: dict[str, Any]) -> str:
    uid = obj["metadata"].get("uid", "")
    pvrs = await client.list(
        PODVOLUMERESTORES, obj["metadata"]["namespace"], label_selector=f"{c.RESTORE_UID_LABEL}={uid}"
    )
    if not pvrs:
        return ""
    done = sum(1 for p in pvrs if phase(p) in ("Completed", "Failed"))
    moved = sum(int(((p.get("status") or {}).get("progress") or {}).get("bytesDone") or 0) for p in pvrs)
    return f"{done}/{len(pvrs)} pod volumes, {human_bytes(moved)}"


@restore.command()
@click.argument("name", required=False)
@click.option("--from-backup", required=True, help="The backup to restore from.")
@click.option(
    "--namespace-mappings", multiple=True, help="Restore namespaces under new names: src1:dst1,src2:dst2."
)
@click.option(
    "--include-namespaces", multiple=True, help="Namespaces to restore (default all in the backup)."
)
@click.option("--exclude-namespaces", multiple=True, help="Namespaces not to restore.")
@click.option("--include-resources", multiple=True, help="Resources to restore (default all).")
@click.option("--exclude-resources", multiple=True, help="Resources not to restore.")
@click.option("-l", "--selector", default=None, help="Only restore objects matching this label selector.")
@click.option("--restore-volumes", default=None, metavar="true|false", help="Restore persistent volumes.")
@click.option(
    "--include-cluster-resources",
    default=None,
    metavar="true|false",
    help="Restore cluster-scoped resources.",
)
@click.option(
    "--wait", is_flag=True, help="Wait for the restore to finish; exit non-zero unless it Completed."
)
@global_options
@run_async
async def create(
    name: str | None,
    from_backup: str,
    namespace_mappings: tuple[str, ...],
    include_namespaces: tuple[str, ...],
    exclude_namespaces: tuple[str, ...],
    include_resources: tuple[str, ...],
    exclude_resources: tuple[str, ...],
    selector: str | None,
    restore_volumes: str | None,
    include_cluster_resources: str | None,
    wait: bool,
) -> None:
    """Create a restore from a backup (NAME defaults to <backup>-<timestamp>)."""
    ns = cli_context().namespace
    restore_name = name or f"{from_backup}-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}"
    spec: dict[str, Any] = {
        "backupName": from_backup,
        "includedNamespaces": split_list(include_namespaces) or ["*"],
        "excludedNamespaces": split_list(exclude_namespaces),
        "includedResources": split_list(include_resources),
        "excludedResources": split_list(exclude_resources),
        "namespaceMapping": parse_mappings(namespace_mappings),
        "labelSelector": selector_from_cli(selector),
    }
    rv = parse_bool("--restore-volumes", restore_volumes)
    if rv is not None:
        spec["restorePVs"] = rv
    icr = parse_bool("--include-cluster-resources", include_cluster_resources)
    if icr is not None:
        spec["includeClusterResources"] = icr
    body = {
        "apiVersion": c.API_VERSION,
        "kind": "Restore",
        "metadata": {"name": restore_name, "namespace": ns},
        "spec": spec,
    }

    async def go(client: KubeClient) -> None:
        try:
            await client.get(BACKUPS, from_backup, ns)
        except NotFound:
            raise CliError(
                f"backup {from_backup!r} not found in namespace {ns} (`ark backup get` lists the backups)"
            ) from None
        try:
            await client.create(RESTORES, body, ns)
        except AlreadyExists:
            raise CliError(f"restore {restore_name!r} already exists in namespace {ns}") from None
        click.echo(f'Restore request "{restore_name}" submitted successfully.')
        if not wait:
            click.echo(f"Run `ark restore describe {restore_name}` for more details.")
            return
        obj = await wait_for_phase(client, RESTORES, ns, restore_name, TERMINAL, volume_progress)
        final = phase(obj)
        click.echo(
            f"Restore {restore_name} finished: {final}. "
            f"Run `ark restore describe {restore_name}` for more details."
        )
        if final != "Completed":
            status = obj.get("status") or {}
            for reason in [status.get("failureReason"), *(status.get("validationErrors") or [])]:
                if reason:
                    click.echo(f"  {reason}")
            raise click.exceptions.Exit(1)

    await with_client(go)


def restore_row(obj: dict[str, Any]) -> list[str]:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    return [
        meta.get("name", ""),
        spec.get("backupName", ""),
        phase(obj),
        str(status.get("warnings") or 0),
        str(status.get("errors") or 0),
        human_time(meta.get("creationTimestamp")),
    ]


@restore.command()
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None, help="Only show restores matching this label selector.")
@output_option
@global_options
@run_async
async def get(names: tuple[str, ...], selector: str | None, output: str) -> None:
    """Get restores."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        objs = await named_or_listed(client, RESTORES, ns, names, selector)
        print_objects(
            objs,
            output,
            ["NAME", "BACKUP", "STATUS", "WARNINGS", "ERRORS", "CREATED"],
            restore_row,
            "RestoreList",
        )

    await with_client(go)


@restore.command()
@click.argument("name")
@click.option("--details", is_flag=True, help="List every pod volume restore.")
@global_options
@run_async
async def describe(name: str, details: bool) -> None:
    """Describe a restore, its status and its pod volume restores."""
    ns = cli_context().namespace

    async def go(client: KubeClient) -> None:
        try:
            obj = await client.get(RESTORES, name, ns)
        except NotFound:
            raise CliError(f"restore {name!r} not found in namespace {ns}") from None
        uid = obj["metadata"].get("uid", "")
        pvrs = await client.list(PODVOLUMERESTORES, ns, label_selector=f"{c.RESTORE_UID_LABEL}={uid}")
        click.echo(describe_restore(obj, pvrs, details))

    await with_client(go)


def describe_restore(obj: dict[str, Any], pvrs: list[dict[str, Any]], details: bool) -> str:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    mapping = ", ".join(f"{k}:{v}" for k, v in (spec.get("namespaceMapping") or {}).items()) or "<none>"
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        "",
        f"Backup:  {spec.get('backupName')}",
        f"Phase:   {phase(obj)}",
    ]
    if status.get("failureReason"):
        lines.append(f"Reason:  {status['failureReason']}")
    if status.get("validationErrors"):
        lines.append("Validation errors:")
        lines.extend(f"  {e}" for e in status["validationErrors"])
    lines += [
        "",
        "Namespaces:",
        f"  Included:  {', '.join(spec.get('includedNamespaces') or ['*'])}",
        f"  Excluded:  {', '.join(spec.get('excludedNamespaces') or []) or '<none>'}",
        f"  Mappings:  {mapping}",
        "",
        "Resources:",
        f"  Included:  {', '.join(spec.get('includedResources') or ['*'])}",
        f"  Excluded:  {', '.join(spec.get('excludedResources') or []) or '<none>'}",
        "",
        f"Restore PVs:  {spec.get('restorePVs', 'auto')}",
        "",
        f"Started:    {human_time(status.get('startTimestamp'))}",
        f"Completed:  {human_time(status.get('completionTimestamp'))}",
        "",
        f"Warnings:  {status.get('warnings') or 0}",
        f"Errors:    {status.get('errors') or 0}",
        "  (`ark restore logs` and the results file list them)",
        "",
    ]
    if not pvrs:
        lines.append("Restic Restores:  <none included>")
        return "\n".join(lines)
    by_phase: dict[str, int] = {}
    for p in pvrs:
        by_phase[phase(p)] = by_phase.get(phase(p), 0) + 1
    lines.append("Restic Restores:")
    lines += [f"  {ph}:  {n}" for ph, n in sorted(by_phase.items())]
    if not details:
        lines.append("  (use --details to list every pod volume)")
        return "\n".join(lines)
    for p in pvrs:
        pspec, st = p.get("spec") or {}, p.get("status") or {}
        pod = pspec.get("pod") or {}
        prog = st.get("progress") or {}
        lines.append(f"  {pod.get('namespace')}/{pod.get('name')}: {pspec.get('volume')}")
        lines.append(f"    Phase:     {phase(p)}")
        lines.append(f"    Snapshot:  {pspec.get('snapshotID')}")
        lines.append(
            f"    Progress:  {human_bytes(prog.get('bytesDone'))} of {human_bytes(prog.get('totalBytes'))}"
        )
        if st.get("message"):
            lines.append(f"    Message:   {st['message']}")
    return "\n".join(lines)


def _add_log_command() -> None:
    from arkd.cli.backup_lifecycle import restore_logs

    restore.add_command(restore_logs)


_add_log_command()
