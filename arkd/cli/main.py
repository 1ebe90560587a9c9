"""The `ark` command."""

from __future__ import annotations

import sys

import click

from arkd.cli.context import CliContext, CliError, global_options
from arkd.cli.lazy import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy={
        "backup": "arkd.cli.backup:backup",
        "install": "arkd.cli.install:install",
        "restic": "arkd.cli.main:restic",
        "restore": "arkd.cli.restore:restore",
        "schedule": "arkd.cli.schedule:schedule",
        "server": "arkd.cli.server:server",
        "version": "arkd.cli.version:version",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Back up and restore Kubernetes resources and pod volumes (Heptio Ark v0.9 compatible)."""
    ctx.ensure_object(CliContext)


@click.group(
    cls=LazyGroup,
    lazy={
        "init-repository": "arkd.cli.restic_keys:init_repository",
        "repo": "arkd.cli.restic_repo:repo",
        "rotate-key": "arkd.cli.restic_keys:rotate_key",
        "server": "arkd.cli.server:restic_server",
        "wait": "arkd.cli.restic_wait:wait",
    },
)
def restic() -> None:
    """Work with restic: the node agent, repositories and their keys."""


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
        message = str(exc) if isinstance(exc, CliError) else f"{type(exc).__name__}: {exc}"
        try:
            from arkd.kube.errors import ApiError

            if isinstance(exc, ApiError):
                message = str(exc)
        except ImportError:
            pass
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
