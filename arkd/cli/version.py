"""`ark version`."""

from __future__ import annotations

import platform

import click

from arkd import __version__
from arkd.cli.context import global_options


@click.command()
@global_options
def version() -> None:
    """Print the arkd version."""
    click.echo(f"Version: {__version__}")
    click.echo(f"Python: {platform.python_version()}")
    click.echo("API: ark.heptio.com/v1")
