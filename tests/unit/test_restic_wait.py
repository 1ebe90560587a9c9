"""`ark restic wait` as the real process the restic-wait init container runs."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

ARK = [sys.executable, "-m", "arkd"]


def run_wait(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ARK, "restic", "wait", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_waits_for_every_volume_then_exits_zero_and_consumes_done_files(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    for vol in ("data", "logs"):
        (tmp_path / vol).mkdir()
    (tmp_path / "data" / ".ark").mkdir()
    (tmp_path / "data" / ".ark" / uid).touch()
    proc = run_wait(uid, "--restores-dir", str(tmp_path), "--interval", "0.1")
    time.sleep(1.0)
    assert proc.poll() is None, "must keep waiting while a volume is not restored"
    (tmp_path / "logs" / ".ark").mkdir()
    (tmp_path / "logs" / ".ark" / uid).touch()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Waiting for restic to restore volumes: logs" in out
    assert "All restic restores are done" in out
    assert not (tmp_path / "data" / ".ark").exists()
    assert not (tmp_path / "logs" / ".ark").exists()


def test_other_restores_done_files_are_left_alone(tmp_path: Path) -> None:
    uid, other = str(uuid.uuid4()), str(uuid.uuid4())
    ark = tmp_path / "data" / ".ark"
    ark.mkdir(parents=True)
    (ark / uid).touch()
    (ark / other).touch()
    proc = run_wait(uid, "--restores-dir", str(tmp_path))
    proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert (ark / other).exists() and not (ark / uid).exists()


def test_bad_arguments_exit_nonzero_with_usage(tmp_path: Path) -> None:
    proc = run_wait()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "Usage: ark restic wait" in err and "RESTORE_UID" in err
    proc = run_wait("not a uid", "--restores-dir", str(tmp_path))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "is not a restore UID" in err
    proc = run_wait(str(uuid.uuid4()), "--restores-dir", str(tmp_path / "missing"))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "does not exist" in err


def test_timeout_names_the_volumes_still_missing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    proc = run_wait(str(uuid.uuid4()), "--restores-dir", str(tmp_path), "--interval", "0.1", "--timeout", "1")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "timed out after 1s waiting for volumes data" in err
