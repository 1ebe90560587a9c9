"""`ark restic init-repository` and `ark restic rotate-key` on the real kube-apiserver (no server running).

The commands run in-process through `arkd.cli.main:cli`; the cluster is read back with kubectl.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from arkd.api.constants import RESTIC_KEY_DATA_KEY, RESTIC_KEY_LABEL
from arkd.cli.main import cli, restic
from arkd.controllers.restic_repository import NEW_KEY_DATA_KEY
from tests.envtest.harness import Envtest

COMMANDS = {
    "init-repository": "arkd.cli.restic_keys:init_repository",
    "rotate-key": "arkd.cli.restic_keys:rotate_key",
    "repo": "arkd.cli.restic_repo:repo",
}


@pytest.fixture(autouse=True)
def restic_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands as `ark restic` lists them (a no-op once arkd/cli/main.py registers them)."""
    for name, target in COMMANDS.items():
        if name not in restic.lazy:
            monkeypatch.setitem(restic.lazy, name, target)


@pytest.fixture
def volume_ns(envtest: Envtest) -> Iterator[str]:
    name = f"vol-{secrets.token_hex(4)}"
    envtest.kubectl("create", "namespace", name)
    yield name
    envtest.kubectl("delete", "namespace", name, "--wait=false", check=False)


def ark(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=stdin)


def secret_of(envtest: Envtest, ark_ns: str, volume_ns: str) -> dict[str, Any] | None:
    proc = envtest.kubectl(
        "get", "secret", "-n", ark_ns, f"ark-restic-credentials-{volume_ns}", "-o", "json", check=False
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def stored_key(secret: dict[str, Any], data_key: str = RESTIC_KEY_DATA_KEY) -> bytes:
    return base64.b64decode(secret["data"][data_key])


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """The command failed with exactly one line saying why, the last thing it printed."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert errors == [len(lines) - 1], f"expected a one-line error at the end, got {result.stderr!r}"
    for fragment in fragments:
        assert fragment in lines[-1]
    return lines[-1]


def test_init_repository_stores_the_key_in_a_labelled_secret_in_the_ark_namespace(
    envtest: Envtest, namespace: str, volume_ns: str
) -> None:
    key = f"my-key-{secrets.token_hex(8)}"
    result = ark("-n", namespace, "restic", "init-repository", "--namespace", volume_ns, "--key-data", key)

    assert result.exit_code == 0, result.output
    assert f"Secret {namespace}/ark-restic-credentials-{volume_ns}" in result.stdout
    assert key not in result.output
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"][RESTIC_KEY_LABEL] == volume_ns
    assert stored_key(secret) == key.encode()
    # Nothing is written into the application namespace: losing it must not lose the key.
    in_volume_ns = envtest.kubectl("get", "secrets", "-n", volume_ns, "-o", "name").stdout
    assert "ark-restic-credentials" not in in_volume_ns


def test_the_ark_namespace_comes_from_ark_namespace_or_the_environment(
    envtest: Envtest, namespace: str, volume_ns: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(bytes(range(256)))  # any bytes, stored exactly
    result = ark(
        "restic", "init-repository", "-n", volume_ns, "--key-file", str(key_file), "--ark-namespace", namespace
    )
    assert result.exit_code == 0, result.output
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None and stored_key(secret) == bytes(range(256))

    envtest.kubectl("delete", "secret", "-n", namespace, f"ark-restic-credentials-{volume_ns}")
    result = ark("restic", "init-repository", "--namespace", volume_ns, env={"HEPTIO_ARK_NAMESPACE": namespace})
    assert result.exit_code == 0, result.output
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None


@pytest.mark.parametrize(("args", "size"), [((), 1024), (("--key-size", "16"), 16)])
def test_a_generated_key_has_the_requested_number_of_random_bytes(
    envtest: Envtest, namespace: str, volume_ns: str, args: tuple[str, ...], size: int
) -> None:
    result = ark("-n", namespace, "restic", "init-repository", "--namespace", volume_ns, *args)

    assert result.exit_code == 0, result.output
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None
    key = stored_key(secret)
    assert len(key) == size
    assert key.strip()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--key-data", "a", "--key-file", "/etc/hostname"), ("--key-data and --key-file are mutually exclusive",)),
        (("--key-size", "0"), ("--key-size must be at least 1", "got 0")),
        (("--key-data", "abc", "--key-size", "32"), ("--key-size", "cannot be combined")),
        (("--key-data", "   "), ("empty",)),
        (("--key-file", "/nonexistent/key"), ("cannot read --key-file /nonexistent/key",)),
    ],
)
def test_bad_key_flags_give_a_one_line_error_and_store_nothing(
    envtest: Envtest, namespace: str, volume_ns: str, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = ark("-n", namespace, "restic", "init-repository", "--namespace", volume_ns, *args)

    assert_one_line_error(result, *fragments)
    assert secret_of(envtest, namespace, volume_ns) is None


def test_a_missing_namespace_is_a_one_line_error(envtest: Envtest, namespace: str) -> None:
    missing = f"nope-{secrets.token_hex(4)}"
    result = ark("-n", namespace, "restic", "init-repository", "--namespace", missing, "--key-data", "k")

    assert_one_line_error(result, f"namespace {missing} does not exist")
    assert secret_of(envtest, namespace, missing) is None

    result = ark("-n", namespace, "restic", "init-repository", "--key-data", "k")
    assert_one_line_error(result, "--namespace is required")


def test_an_existing_key_is_never_overwritten(envtest: Envtest, namespace: str, volume_ns: str) -> None:
    assert ark("-n", namespace, "restic", "init-repository", "-n", volume_ns, "--key-data", "first").exit_code == 0

    result = ark("-n", namespace, "restic", "init-repository", "--namespace", volume_ns, "--key-data", "second")

    assert_one_line_error(result, "already has a restic key", "never overwritten", "ark restic rotate-key")
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None and stored_key(secret) == b"first"


def test_rotate_key_without_a_server_times_out_naming_the_server_and_keeps_the_key_pending(
    envtest: Envtest, namespace: str, volume_ns: str
) -> None:
    assert ark("-n", namespace, "restic", "init-repository", "-n", volume_ns, "--key-data", "old-key").exit_code == 0

    result = ark(
        "-n", namespace, "restic", "rotate-key", "--namespace", volume_ns, "--key-data", "new-key", "--timeout", "1s"
    )

    error = assert_one_line_error(result, "did not finish within 1s", "`ark server`", NEW_KEY_DATA_KEY)
    assert "new-key" not in error and "old-key" not in error
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None
    assert stored_key(secret) == b"old-key"  # the key in use is untouched until the server rotates it
    assert stored_key(secret, NEW_KEY_DATA_KEY) == b"new-key"

    again = ark("-n", namespace, "restic", "rotate-key", "--namespace", volume_ns, "--key-data", "newer")
    assert_one_line_error(again, "already pending", "ark server")
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None and stored_key(secret, NEW_KEY_DATA_KEY) == b"new-key"


def test_rotate_key_refuses_a_namespace_without_a_key_and_the_same_key(
    envtest: Envtest, namespace: str, volume_ns: str
) -> None:
    result = ark("-n", namespace, "restic", "rotate-key", "--namespace", volume_ns, "--key-data", "x")
    assert_one_line_error(result, "has no restic key", f"ark restic init-repository --namespace {volume_ns}")

    assert ark("-n", namespace, "restic", "init-repository", "-n", volume_ns, "--key-data", "same").exit_code == 0
    result = ark("-n", namespace, "restic", "rotate-key", "--namespace", volume_ns, "--key-data", "same")
    assert_one_line_error(result, "the same as the current key")
    secret = secret_of(envtest, namespace, volume_ns)
    assert secret is not None and NEW_KEY_DATA_KEY not in secret["data"]
