"""`ark restic wait RESTORE_UID`: the restic-wait init container of restored pods.

Every second it checks that `<restores>/<volume>/.ark/<restore uid>` exists for every volume
directory mounted under /restores, says which volumes it still waits for, and exits 0 once all
are restored, removing the done files it consumed. The node agent writes those files after
`restic restore` finished, so the pod's own containers start only when their data is back.
Imports only the standard library and click: it runs under a 128Mi limit.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

UID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")


def pending_volumes(restores: Path, restore_uid: str) -> list[str]:
    """Volume directories under `restores` whose done file for this restore is not there yet."""
    return sorted(
        d.name for d in restores.iterdir() if d.is_dir() and not (d / ".ark" / restore_uid).exists()
    )


def consume_done_files(restores: Path, restore_uid: str) -> None:
    for d in restores.iterdir():
        done = d / ".ark" / restore_uid
        try:
            done.unlink()
            (d / ".ark").rmdir()  # only when empty: other restores' files stay
        except OSError:
            pass


@click.command()
@click.argument("restore_uid")
@click.option(
    "--restores-dir",
    default="/restores",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the restored volumes are mounted.",
)
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05))
@click.option(
    "--timeout",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Give up after this many seconds (0: wait forever, as the kubelet restarts a failed init container).",
)
def wait(restore_uid: str, restores_dir: Path, interval: float, timeout: float) -> None:
    """Wait until restic has restored every volume of this pod (the restic-wait init container)."""
    if not UID_RE.match(restore_uid):
        raise click.UsageError(f"RESTORE_UID {restore_uid!r} is not a restore UID (a UUID such as 1b4e28ba-...)")
    if not restores_dir.is_dir():
        raise click.UsageError(f"{restores_dir} does not exist: mount each restored volume at {restores_dir}/<volume>")
    deadline = time.monotonic() + timeout if timeout else None
    last: list[str] | None = None
    while True:
        waiting = pending_volumes(restores_dir, restore_uid)
        if not waiting:
            consume_done_files(restores_dir, restore_uid)
            click.echo("All restic restores are done")
            return
        if waiting != last:
            click.echo(f"Waiting for restic to restore volumes: {', '.join(waiting)}", err=False)
            last = waiting
        if deadline is not None and time.monotonic() > deadline:
            raise click.ClickException(
                f"timed out after {timeout:.0f}s waiting for volumes {', '.join(waiting)}: check the "
                "PodVolumeRestores (`ark restore describe --details`) and that the node agent runs on this node"
            )
        time.sleep(interval)
