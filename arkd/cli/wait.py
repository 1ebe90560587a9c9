"""`--wait`: follow an object until its phase is terminal, showing progress on a terminal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from arkd.kube.client import KubeClient
from arkd.kube.errors import NotFound
from arkd.kube.resource import Resource

Progress = Callable[[KubeClient, dict[str, Any]], Awaitable[str]]


async def wait_for_phase(
    client: KubeClient,
    res: Resource,
    namespace: str,
    name: str,
    terminal: set[str],
    progress: Progress | None = None,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Poll until the object reaches a terminal phase; return it."""
    tty = sys.stdout.isatty()
    last = ""
    while True:
        try:
            obj = await client.get(res, name, namespace)
        except NotFound:
            raise click.ClickException(f"{res.kind} {namespace}/{name} was deleted while waiting") from None
        phase = str((obj.get("status") or {}).get("phase") or "New")
        line = f"{res.kind} {name}: {phase}"
        if progress is not None and phase not in terminal:
            extra = await progress(client, obj)
            if extra:
                line += f" ({extra})"
        if line != last:
            if tty:
                click.echo(f"\r\033[K{line}", nl=False)
            else:
                click.echo(line)
            last = line
        if phase in terminal:
            if tty:
                click.echo()
            return obj
        await asyncio.sleep(interval)
