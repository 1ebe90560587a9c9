"""`ark install --crds`: print the generated prerequisites (CRDs, namespace, service accounts, RBAC)."""

from __future__ import annotations

import click

from arkd.cli.context import CliError, global_options


@click.command()
@click.option("--crds", is_flag=True, help="Print the CustomResourceDefinitions and prerequisites as YAML.")
@global_options
def install(crds: bool) -> None:
    """Print the manifests arkd needs, for `kubectl apply -f -`."""
    if not crds:
        raise CliError(
            "nothing to print: pass --crds (for example `ark install --crds | kubectl apply -f -`)"
        )
    from arkd.api.crdgen import render_prereqs_yaml

    click.echo(render_prereqs_yaml(), nl=False)
