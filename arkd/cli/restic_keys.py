"""`ark restic init-repository` and `ark restic rotate-key`: the restic key of a volume namespace.

The key of namespace NS lives in Secret `ark-restic-credentials-NS` (data key `repository-password`,
label `ark.heptio.com/restic-key=NS`) in the Ark namespace. In these commands `-n/--namespace` is
the volume namespace, as in Ark's docs; the Ark namespace is `ark -n`, `--ark-namespace`,
$HEPTIO_ARK_NAMESPACE or heptio-ark. Keys are never printed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from arkd.api.constants import RESTIC_KEY_DATA_KEY, RESTIC_KEY_LABEL, restic_key_secret_name
from arkd.api.duration import DurationError, parse_duration
from arkd.cli.context import CliError, cli_context, kubeconfig_option, run_async, with_client
from arkd.controllers.restic_repository import (
    NEW_KEY_DATA_KEY,
    RETIRED_KEY_ANNOTATION,
    ROTATION_ERROR_ANNOTATION,
)
from arkd.kube.client import KubeClient
from arkd.kube.errors import AlreadyExists, ApiError, Conflict, NotFound
from arkd.kube.patch import guarded_merge_patch
from arkd.kube.resource import NAMESPACES, SECRETS
from arkd.podvolume.keys import DEFAULT_KEY_SIZE, key_secret

F = TypeVar("F", bound=Callable[..., Any])
Obj = dict[str, Any]

# A Secret holds at most 1 MiB, and the key is stored base64-encoded.
MAX_KEY_SIZE = 512 * 1024
POLL_SECONDS = 1.0


def key_options(f: F) -> F:
    for opt in reversed(
        [
            click.option(
                "-n",
                "--namespace",
                "volume_namespace",
                metavar="NS",
                help="The namespace whose pod volumes the key encrypts (required).",
            ),
            click.option(
                "--ark-namespace",
                metavar="NS",
                help="The namespace Ark runs in (default: `ark -n`, $HEPTIO_ARK_NAMESPACE, heptio-ark).",
            ),
            click.option("--key-data", metavar="KEY", help="The key itself."),
            click.option(
                "--key-file",
                metavar="PATH",
                help="A file whose contents are the key ('-' reads standard input).",
            ),
            click.option(
                "--key-size",
                type=int,
                default=DEFAULT_KEY_SIZE,
                show_default=True,
                help="Size in bytes of a random key, used when neither --key-data nor --key-file is given.",
            ),
        ]
    ):
        f = opt(f)
    return f


def _read_key_file(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --key-file {path}: {exc.strerror or exc}") from None


def resolve_key(key_data: str | None, key_file: str | None, key_size: int, size_given: bool) -> bytes:
    """The key the flags describe; CliError says what is wrong with them."""
    if key_data is not None and key_file is not None:
        raise CliError("--key-data and --key-file are mutually exclusive: give one of them")
    if size_given and (key_data is not None or key_file is not None):
        raise CliError("--key-size sets the size of a random key; it cannot be combined with --key-data or --key-file")
    if key_data is not None or key_file is not None:
        key = key_data.encode() if key_data is not None else _read_key_file(str(key_file))
        source = "--key-data" if key_data is not None else f"--key-file {key_file}"
        # restic ignores whitespace around a key, so a blank key would be no key at all.
        if not key.strip():
            raise CliError(f"the key given by {source} is empty (or only whitespace)")
        if len(key) > MAX_KEY_SIZE:
            raise CliError(
                f"the key given by {source} is {len(key)} bytes; at most {MAX_KEY_SIZE} bytes fit in a Secret"
            )
        return key
    if key_size < 1:
        raise CliError(f"--key-size must be at least 1 byte, got {key_size}")
    if key_size > MAX_KEY_SIZE:
        raise CliError(f"--key-size must be at most {MAX_KEY_SIZE} bytes (a Secret holds 1 MiB), got {key_size}")
    while True:
        key = secrets.token_bytes(key_size)
        if key.strip():
            return key


def _volume_namespace(value: str | None, command: str) -> str:
    if not value:
        raise CliError(
            f"--namespace is required: name the namespace whose pod volumes the key encrypts "
            f"(ark restic {command} --namespace NS)"
        )
    return value


def _ark_namespace(value: str | None) -> str:
    return value or cli_context().namespace


def _size_given() -> bool:
    source = click.get_current_context().get_parameter_source("key_size")
    return source is not None and source is not click.core.ParameterSource.DEFAULT


@click.command("init-repository")
@kubeconfig_option
@key_options
@run_async
async def init_repository(
    volume_namespace: str | None,
    ark_namespace: str | None,
    key_data: str | None,
    key_file: str | None,
    key_size: int,
) -> None:
    """Create the encryption key of a namespace's restic repository.

    The server creates the repository itself on the first backup of a pod volume in NS.
    """
    target = _volume_namespace(volume_namespace, "init-repository")
    key = resolve_key(key_data, key_file, key_size, _size_given())
    ark_ns = _ark_namespace(ark_namespace)
    name = restic_key_secret_name(target)

    async def body(client: KubeClient) -> None:
        try:
            await client.get(NAMESPACES, target)
        except NotFound:
            raise CliError(
                f"namespace {target} does not exist: the key is for the namespace whose pod volumes are backed up; "
                "check the name"
            ) from None
        except ApiError as exc:
            raise CliError(f"cannot check namespace {target}: {exc}") from None
        try:
            await client.create(SECRETS, key_secret(ark_ns, target, key), ark_ns)
        except AlreadyExists:
            raise CliError(
                f"namespace {target} already has a restic key (Secret {ark_ns}/{name}); it is never overwritten, "
                f"because existing backups need it: use `ark restic rotate-key --namespace {target}` to change it"
            ) from None
        except NotFound:
            raise CliError(
                f"the Ark namespace {ark_ns} does not exist: install Ark first, or name its namespace with "
                "--ark-namespace (or `ark -n`)"
            ) from None
        except ApiError as exc:
            raise CliError(f"cannot create Secret {ark_ns}/{name}: {exc}") from None

    await with_client(body)
    click.echo(f"Created the restic key of namespace {target} in Secret {ark_ns}/{name}.")
    click.echo(
        "Keep a copy of the key outside the cluster: without it the namespace's pod volume backups cannot be restored."
    )


@click.command("rotate-key")
@kubeconfig_option
@key_options
@click.option(
    "--timeout",
    default="10m",
    show_default=True,
    help="How long to wait for `ark server` to finish the rotation (Go duration).",
)
@run_async
async def rotate_key(
    volume_namespace: str | None,
    ark_namespace: str | None,
    key_data: str | None,
    key_file: str | None,
    key_size: int,
    timeout: str,
) -> None:
    """Replace the encryption key of a namespace's restic repository.

    The new key is stored beside the current one; `ark server` adds it to the repository, makes it
    the namespace's key and removes the old key from the repository. Old snapshots stay readable
    with the new key; the old key no longer opens the repository.
    """
    target = _volume_namespace(volume_namespace, "rotate-key")
    try:
        wait = parse_duration(timeout).total_seconds()
    except DurationError as exc:
        raise CliError(f"--timeout: {exc}") from None
    if wait <= 0:
        raise CliError(f"--timeout must be positive, got {timeout}")
    new_key = resolve_key(key_data, key_file, key_size, _size_given())
    ark_ns = _ark_namespace(ark_namespace)
    ref = f"{ark_ns}/{restic_key_secret_name(target)}"

    async def body(client: KubeClient) -> None:
        await _store_pending_key(client, ark_ns, target, ref, new_key)
        click.echo(f"Stored the new key in Secret {ref}; waiting for ark server to rotate the key...", err=True)
        await _wait_for_rotation(client, ark_ns, target, ref, new_key, wait, timeout)

    await with_client(body)
    click.echo(f"Rotated the restic key of namespace {target}: the old key no longer opens its repository.")


async def _store_pending_key(client: KubeClient, ark_ns: str, target: str, ref: str, new_key: bytes) -> None:
    try:
        secret = await client.get(SECRETS, restic_key_secret_name(target), ark_ns)
    except NotFound:
        raise CliError(
            f"namespace {target} has no restic key (Secret {ref} does not exist): create one with "
            f"`ark restic init-repository --namespace {target}`"
        ) from None
    except ApiError as exc:
        raise CliError(f"cannot read Secret {ref}: {exc}") from None
    data = secret.get("data") or {}
    if NEW_KEY_DATA_KEY in data:
        raise CliError(
            f"a key rotation for namespace {target} is already pending (Secret {ref} has data key "
            f"{NEW_KEY_DATA_KEY}); wait for `ark server` to finish it"
        )
    if _decode(data.get(RESTIC_KEY_DATA_KEY)) == new_key:
        raise CliError(f"the new key is the same as the current key of namespace {target}")
    # The label is how the server finds key Secrets; one made by hand may lack it.
    patch = {
        "metadata": {"labels": {RESTIC_KEY_LABEL: target}},
        "data": {NEW_KEY_DATA_KEY: base64.b64encode(new_key).decode()},
    }
    try:
        await client.patch(SECRETS, restic_key_secret_name(target), guarded_merge_patch(secret, patch), ark_ns)
    except Conflict:
        raise CliError(f"Secret {ref} changed while the new key was being stored; run the command again") from None
    except ApiError as exc:
        raise CliError(f"cannot store the new key in Secret {ref}: {exc}") from None


def _decode(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


async def _wait_for_rotation(
    client: KubeClient, ark_ns: str, target: str, ref: str, new_key: bytes, wait: float, timeout: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    reported = ""
    while True:
        try:
            secret: Obj | None = await client.get(SECRETS, restic_key_secret_name(target), ark_ns)
        except NotFound:
            raise CliError(f"Secret {ref} was deleted during the key rotation") from None
        except ApiError:
            secret = None  # a blip of the API server; try again until the deadline
        if secret is not None:
            data = secret.get("data") or {}
            annotations = (secret.get("metadata") or {}).get("annotations") or {}
            if NEW_KEY_DATA_KEY not in data:
                if _decode(data.get(RESTIC_KEY_DATA_KEY)) != new_key:
                    raise CliError(
                        f"the key rotation was cancelled ({NEW_KEY_DATA_KEY} was removed from Secret {ref} "
                        "before the server used it); the key is unchanged"
                    )
                if RETIRED_KEY_ANNOTATION not in annotations:
                    return
            error = str(annotations.get(ROTATION_ERROR_ANNOTATION) or "")
            if error and error != reported:
                click.echo(f"ark server: {error}", err=True)
                reported = error
        if loop.time() >= deadline:
            last = f" (last error: {reported})" if reported else ""
            raise CliError(
                f"the key rotation did not finish within {timeout}{last}: is `ark server` running in namespace "
                f"{ark_ns}? The new key stays pending in Secret {ref} and the server finishes the rotation when "
                f"it runs; to cancel instead, remove data key {NEW_KEY_DATA_KEY} from the Secret"
            )
        await asyncio.sleep(POLL_SECONDS)
