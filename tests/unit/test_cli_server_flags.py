"""Flags of the two long-running commands that are checked before anything connects to a cluster."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from arkd.cli.main import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lock-wait", "soon"], "Error: --lock-wait: "),
        (["--lock-wait", "-5m"], "Error: --lock-wait: -5m is negative; give 0s not to wait, or a duration such as 5m"),
    ],
)
def test_restic_server_refuses_a_bad_lock_wait(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["restic", "server", "--node-name", "n1", *args])
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_restic_server_documents_lock_wait() -> None:
    result = CliRunner().invoke(cli, ["restic", "server", "--help"])
    assert result.exit_code == 0
    assert "--lock-wait" in result.output and "[default: 5m]" in result.output
