"""`ark server` and `ark restic server`: the two long-running processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from arkd.cli.context import CliError, cli_context, global_options

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
LOG_FORMATS = click.Choice(["json", "text"], case_sensitive=False)


def _common(f: F) -> F:
    f = click.option("--log-format", type=LOG_FORMATS, default="json", show_default=True)(f)
    f = click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True)(f)
    return cast(F, global_options(f))


@click.command()
@click.option(
    "--metrics-address", default=":8085", show_default=True, help="Address of /metrics, /healthz, /readyz."
)
@click.option(
    "--require-restic-keys",
    is_flag=True,
    help="Fail pod volume backups of namespaces without a key instead of generating one "
    "(keys come from `ark restic init-repository`).",
)
@click.option(
    "--pod-volume-stall-timeout",
    default="10m",
    show_default=True,
    help="Fail a PodVolumeBackup whose progress has not changed for this long (Go duration).",
)
@click.option(
    "--restore-helper-image",
    default="",
    help="Image of the restic-wait init container added to restored pods "
    "(default: this server's own image, read from its pod; else arkd/ark:latest).",
)
@click.option("--no-leader-elect", is_flag=True, help="Run without the Lease (only one replica may run).")
@_common
def server(
    metrics_address: str,
    require_restic_keys: bool,
    pod_volume_stall_timeout: str,
    restore_helper_image: str,
    no_leader_elect: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the Ark server: backup, restore, schedule, GC, deletion, sync and repository controllers."""
    from arkd import log
    from arkd.api.duration import DurationError, parse_duration
    from arkd.app import run_server
    from arkd.config import ServerSettings

    try:
        stall = parse_duration(pod_volume_stall_timeout).total_seconds()
    except DurationError as exc:
        raise CliError(f"--pod-volume-stall-timeout: {exc}") from exc
    ctx = cli_context()
    settings = ServerSettings(
        kubeconfig=ctx.kubeconfig,
        namespace=ctx.namespace,
        metrics_address=metrics_address,
        log_level=log_level,
        log_format=log_format,
        require_restic_keys=require_restic_keys,
        pod_volume_stall_timeout=stall,
        restore_helper_image=restore_helper_image,
        leader_elect=not no_leader_elect,
    )
    log.setup(log_level, log_format)
    asyncio.run(run_server(settings))


@click.command(name="server")
@click.option(
    "--host-pods-dir",
    default="/host_pods",
    show_default=True,
    help="hostPath mount of /var/lib/kubelet/pods.",
)
@click.option(
    "--max-concurrent",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="restic runs at once on this node.",
)
@click.option(
    "--lock-wait",
    default="5m",
    show_default=True,
    help="How long a pod volume backup or restore waits for a repository that an exclusive operation "
    "(prune, forget, key rotation) has locked, before it fails (Go duration; 0s: do not wait).",
)
@click.option(
    "--metrics-address", default=":8086", show_default=True, help="Address of /metrics, /healthz, /readyz."
)
@click.option("--node-name", envvar="NODE_NAME", default="", help="This node's name (env NODE_NAME).")
@_common
def restic_server(
    host_pods_dir: str,
    max_concurrent: int,
    lock_wait: str,
    metrics_address: str,
    node_name: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run the node agent: PodVolumeBackup and PodVolumeRestore controllers of this node."""
    from arkd import log
    from arkd.api.duration import DurationError, parse_duration
    from arkd.app import run_node_agent
    from arkd.config import NodeAgentSettings

    if not node_name:
        raise CliError("no node name: set NODE_NAME (downward API spec.nodeName) or pass --node-name")
    try:
        lock_wait_seconds = parse_duration(lock_wait).total_seconds()
    except DurationError as exc:
        raise CliError(f"--lock-wait: {exc}") from exc
    if lock_wait_seconds < 0:
        raise CliError(f"--lock-wait: {lock_wait} is negative; give 0s not to wait, or a duration such as 5m")
    ctx = cli_context()
    settings = NodeAgentSettings(
        kubeconfig=ctx.kubeconfig,
        namespace=ctx.namespace,
        metrics_address=metrics_address,
        log_level=log_level,
        log_format=log_format,
        node_name=node_name,
        host_pods_dir=host_pods_dir,
        max_concurrent=max_concurrent,
        lock_wait=lock_wait_seconds,
    )
    log.setup(log_level, log_format)
    asyncio.run(run_node_agent(settings))
