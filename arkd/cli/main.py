"""The `ark` command."""

from __future__ import annotations

import sys

import click

from arkd.cli.backup import backup
from arkd.cli.context import CliContext, CliError, global_options
from arkd.cli.install import install
from arkd.cli.restore import restore
from arkd.cli.server import restic_server, server
from arkd.cli.version import version


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Back up and restore Kubernetes resources and pod volumes (Heptio Ark v0.9 compatible)."""
    ctx.ensure_object(CliContext)


@click.group()
def restic() -> None:
    """Work with restic: the node agent, repositories and their keys."""


restic.add_command(restic_server)

for command in (backup, install, restic, restore, server, version):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="ark", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # last line of defence: a user never sees a traceback
        from arkd.kube.errors import ApiError

        message = str(exc) if isinstance(exc, ApiError | CliError) else f"{type(exc).__name__}: {exc}"
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
