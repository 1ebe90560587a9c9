"""`ark restic repo get`: the restic repositories the server manages, one per volume namespace."""

from __future__ import annotations

from typing import Any

import click

from arkd.cli.context import CliError, cli_context, global_options, named_or_listed, run_async, with_client
from arkd.cli.output import human_time, output_option, phase, print_objects
from arkd.controllers.resources import RESTICREPOSITORIES
from arkd.kube.client import KubeClient
from arkd.kube.errors import ApiError

Obj = dict[str, Any]

HEADERS = ("NAME", "STATUS", "LAST MAINTENANCE", "MESSAGE")


def repository_row(obj: Obj) -> list[str]:
    status = obj.get("status") or {}
    last = status.get("lastMaintenanceTime")
    return [
        str((obj.get("metadata") or {}).get("name") or ""),
        phase(obj),
        human_time(last) if last else "<never>",
        " ".join(str(status.get("message") or "").split()),
    ]


@click.group("repo")
def repo() -> None:
    """Work with restic repositories."""


@repo.command("get")
@global_options
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None, help="Only repositories whose labels match this selector.")
@output_option
@run_async
async def get(names: tuple[str, ...], selector: str | None, output: str) -> None:
    """Show restic repositories (all of them, or NAMES)."""
    if names and selector:
        raise CliError("give repository names or --selector, not both")
    ns = cli_context().namespace

    async def body(client: KubeClient) -> list[Obj]:
        try:
            return await named_or_listed(client, RESTICREPOSITORIES, ns, names, selector, what="restic repository")
        except ApiError as exc:
            raise CliError(f"cannot read restic repositories in namespace {ns}: {exc}") from None

    objs = await with_client(body)
    print_objects(objs, output, HEADERS, repository_row, "ResticRepositoryList")
