"""What every `ark` command shares: where the cluster is, which namespace Ark lives in, how to fail."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

if TYPE_CHECKING:
    from arkd.kube.client import KubeClient
    from arkd.kube.resource import Resource

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class CliContext:
    kubeconfig: str | None = None
    namespace_flag: str | None = None

    @property
    def namespace(self) -> str:
        """-n/--namespace, else $HEPTIO_ARK_NAMESPACE, else heptio-ark."""
        if self.namespace_flag:
            return self.namespace_flag
        from arkd.api.constants import DEFAULT_NAMESPACE  # lazy: keeps `ark restic wait` light

        return os.environ.get("HEPTIO_ARK_NAMESPACE") or DEFAULT_NAMESPACE


class CliError(click.ClickException):
    """A user-facing failure: printed as one line, exit code 1, no traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _set_kubeconfig(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(CliContext).kubeconfig = value


def _set_namespace(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(CliContext).namespace_flag = value


def kubeconfig_option(f: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--kubeconfig",
        metavar="PATH",
        expose_value=False,
        callback=_set_kubeconfig,
        help="Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).",
    )(f)


def namespace_option(f: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "-n",
        "--namespace",
        metavar="NS",
        expose_value=False,
        callback=_set_namespace,
        help="The namespace in which Ark runs (env HEPTIO_ARK_NAMESPACE, default heptio-ark).",
    )(f)


def global_options(f: Callable[P, T]) -> Callable[P, T]:
    """--kubeconfig and -n/--namespace, accepted on every command as well as on `ark` itself."""
    return kubeconfig_option(namespace_option(f))


def cli_context() -> CliContext:
    return click.get_current_context().ensure_object(CliContext)


def run_async(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async command body, turning known failures into one-line errors."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            sys.exit(130)

    return wrapper


async def with_client(body: Callable[[Any], Awaitable[T]]) -> T:
    """Connect to the cluster named by the global options, run `body(client)`, and close."""
    from arkd.kube.client import KubeClient

    ctx = cli_context()
    try:
        client = await KubeClient.connect(ctx.kubeconfig)
    except Exception as exc:
        raise CliError(f"cannot connect to the cluster: {exc}") from exc
    try:
        return await body(client)
    finally:
        await client.close()


async def named_or_listed(
    client: KubeClient,
    resource: Resource,
    namespace: str,
    names: tuple[str, ...],
    selector: str | None,
    *,
    what: str | None = None,
) -> list[dict[str, Any]]:
    """`get NAME...` (each must exist) or `get [-l SELECTOR]` (every match, by name). `what` names
    the kind in the not-found message (default: the kind in lower case)."""
    from arkd.kube.errors import NotFound

    if names:
        found = []
        for name in names:
            try:
                found.append(await client.get(resource, name, namespace))
            except NotFound:
                label = what or resource.kind.lower()
                raise CliError(f"{label} {name!r} not found in namespace {namespace}") from None
        return found
    listed = await client.list(resource, namespace, label_selector=selector)
    return sorted(listed, key=lambda o: str(o["metadata"]["name"]))
