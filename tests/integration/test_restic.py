"""arkd.restic against the real restic binary on real files (local and S3 repositories).

No apiserver is needed. S3 repositories live on moto_server. Tests run as root, and root reads
files whatever their mode; restic is therefore started under `setpriv` with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped from its bounding set where a test needs an unreadable file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from arkd.restic import Progress, Reason, Repository, ResticError, ResticRunner
from arkd.restic import command as cmd
from tests.support.moto import MotoServer, free_port

PASSWORD = b"correct horse battery staple 7f3a"
TAGS = {
    "backup": "nightly-1",
    "backup-uid": "6c2b6a1e-0000-4000-8000-000000000001",
    "ns": "shop",
    "pod": "db-0",
    "pod-uid": "0b8e7f52-0000-4000-8000-000000000002",
    "volume": "data",
}
# Drop root's permission-bypass capabilities so mode 000 files are unreadable to restic.
NO_DAC_OVERRIDE = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def password_files(base: Path) -> list[Path]:
    """What a run may leave behind: nothing but its session's lock file."""
    return [p for p in base.rglob("*") if p.is_file() and p.name != ".lock"]


@pytest.fixture(scope="module", autouse=True)
def restic_installed() -> None:
    if shutil.which("restic") is None:
        pytest.fail("restic is not installed: apt-get install -y restic", pytrace=False)


@pytest.fixture
def secrets_base(tmp_path: Path) -> Path:
    path = tmp_path / "secrets"
    path.mkdir()
    return path


@pytest.fixture
def runner(tmp_path: Path, secrets_base: Path) -> ResticRunner:
    return ResticRunner(temp_dir=str(secrets_base), cache_dir=str(tmp_path / "cache"))


@pytest.fixture
async def repo(tmp_path: Path, runner: ResticRunner) -> Repository:
    repository = Repository(str(tmp_path / "repo"), PASSWORD, runner)
    await repository.init()
    return repository


def make_volume(root: Path, *, big: int = 3 * 1024 * 1024) -> None:
    (root / "nested" / "deep").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(big))
    (root / "nested" / "b.txt").write_text("hello from the volume\n" * 100)
    (root / "nested" / "deep" / "c.bin").write_bytes(os.urandom(300 * 1024))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("a.bin")
    (root / "nested" / "b.txt").chmod(0o640)


def tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every entry under root: kind, content (file bytes or link target) and permission bits."""
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), 0)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", b"", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def restic_processes(repository: str) -> list[int]:
    """PIDs of live restic processes working on `repository`, found through /proc."""
    marker = f"--repo={repository}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv and b"restic" in Path(argv[0].decode()).name.encode():
            pids.append(int(entry.name))
    return pids


async def test_exists_tells_missing_repository_from_wrong_password(tmp_path: Path, runner: ResticRunner) -> None:
    repository = Repository(str(tmp_path / "repo"), PASSWORD, runner)
    assert await repository.exists() is False
    assert await repository.ensure() is True
    assert await repository.exists() is True
    assert await repository.ensure() is False

    with pytest.raises(ResticError) as wrong:
        await repository.with_password(b"not the password").exists()
    assert wrong.value.reason is Reason.WRONG_PASSWORD
    assert str(wrong.value) == "restic cat config exited with code 1: Fatal: wrong password or no key found"

    with pytest.raises(ResticError) as again:
        await repository.init()
    assert again.value.reason is Reason.ALREADY_INITIALIZED
    await repository.check()


async def test_unreachable_storage_is_not_reported_as_missing_repository(runner: ResticRunner) -> None:
    port = free_port()  # nothing listens there
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAARKDTESTKEY00001",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    repository = Repository(f"s3:http://127.0.0.1:{port}/bucket/ns", PASSWORD, runner, env=env)
    with pytest.raises(ResticError) as err:
        await repository.exists()
    assert err.value.reason is Reason.UNREACHABLE
    assert "connection refused" in str(err.value)


async def test_permission_denied_on_the_repository_is_classified(tmp_path: Path, secrets_base: Path) -> None:
    runner = ResticRunner(temp_dir=str(secrets_base), launcher=NO_DAC_OVERRIDE if os.geteuid() == 0 else ())
    repository = Repository(str(tmp_path / "repo"), PASSWORD, runner)
    await repository.init()
    (tmp_path / "repo").chmod(0)
    try:
        with pytest.raises(ResticError) as err:
            await repository.exists()
    finally:
        (tmp_path / "repo").chmod(0o700)
    assert err.value.reason is Reason.PERMISSION_DENIED


async def test_backup_then_restore_gives_identical_files(tmp_path: Path, repo: Repository) -> None:
    volume = tmp_path / "pods" / "uid-1" / "volumes" / "kubernetes.io~empty-dir" / "data"
    volume.mkdir(parents=True)
    make_volume(volume)
    seen: list[Progress] = []

    summary = await repo.backup(volume, tags=TAGS, host="ark", progress=seen.append)

    assert not summary.incomplete
    assert (summary.files_new, summary.dirs_new) == (4, 2)  # restic 0.14 does not count the symlink
    assert summary.total_bytes_processed == sum(
        p.stat().st_size for p in volume.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert seen[-1].percent == 100.0
    assert seen[-1].bytes_done == seen[-1].total_bytes == summary.total_bytes_processed
    assert any((tmp_path / "cache").iterdir()), "restic used the configured cache directory"

    found = await repo.snapshots(tags=TAGS)
    assert [s.short_id for s in found] == [summary.snapshot_id]
    snapshot = found[0]
    assert snapshot.tags == TAGS
    assert snapshot.hostname == "ark"
    assert snapshot.paths == (str(volume),)
    assert await repo.snapshots(tags={**TAGS, "volume": "other"}) == []
    assert [s.short_id for s in await repo.snapshots(tags={"pod": "db-0"}, last=True, host="ark")] == [
        summary.snapshot_id
    ]

    target = tmp_path / "pods" / "uid-2" / "volumes" / "kubernetes.io~empty-dir" / "data"
    target.mkdir(parents=True)
    restored: list[Progress] = []
    polled = Repository(repo.identifier, PASSWORD, repo.runner, restore_poll_interval=0.05)
    result = await polled.restore(summary.snapshot_id, target, progress=restored.append)

    assert tree(target) == tree(volume)  # contents land directly in the target, byte for byte
    assert result.total_bytes == summary.total_bytes_processed
    assert restored[0].bytes_done == 0
    assert all(p.percent < 100 and p.bytes_done <= p.total_bytes for p in restored[:-1])
    entries = len(tree(volume))
    assert restored[-1] == Progress(result.total_bytes, result.total_bytes, entries, entries, 100.0)
    assert result.total_files == entries
    stats = await repo.stats(summary.snapshot_id)
    assert stats["total_size"] == result.total_bytes


async def test_second_backup_with_parent_adds_almost_no_data(tmp_path: Path, repo: Repository) -> None:
    volume = tmp_path / "v1"
    volume.mkdir()
    make_volume(volume, big=8 * 1024 * 1024)
    first = await repo.backup(volume, tags=TAGS, host="ark")
    assert first.data_added > 8 * 1024 * 1024

    # The pod was recreated: same data under a new path, so restic's own parent lookup (by host
    # and path) finds nothing and only the explicit parent lets it skip unchanged files.
    moved = tmp_path / "v2"
    volume.rename(moved)
    second = await repo.backup(moved, tags={**TAGS, "backup": "nightly-2"}, host="ark", parent=first.snapshot_id)

    assert second.snapshot_id != first.snapshot_id
    assert (second.files_unmodified, second.files_changed, second.files_new) == (4, 0, 0)
    assert second.data_added < 64 * 1024  # only metadata for the new snapshot
    assert len(await repo.snapshots()) == 2


async def test_unreadable_file_gives_incomplete_snapshot_naming_it(tmp_path: Path, secrets_base: Path) -> None:
    runner = ResticRunner(temp_dir=str(secrets_base), launcher=NO_DAC_OVERRIDE if os.geteuid() == 0 else ())
    repository = Repository(str(tmp_path / "repo"), PASSWORD, runner)
    await repository.init()
    volume = tmp_path / "volume"
    volume.mkdir()
    make_volume(volume)
    secret = volume / "nested" / "locked.db"
    secret.write_bytes(b"x" * 1000)
    secret.chmod(0)

    summary = await repository.backup(volume, tags=TAGS, host="ark")

    assert summary.incomplete
    assert summary.unreadable_paths == ("nested/locked.db",)
    assert summary.error_count == 1
    target = tmp_path / "target"
    target.mkdir()
    await repository.restore(summary.snapshot_id, target)
    assert (target / "a.bin").read_bytes() == (volume / "a.bin").read_bytes()
    assert (target / "nested" / "deep" / "c.bin").read_bytes() == (volume / "nested" / "deep" / "c.bin").read_bytes()


def sparse_volume(root: Path, size: int = 4 * 1024**3) -> Path:
    """A volume restic needs many seconds to read (4 GiB of holes) without using disk space."""
    root.mkdir()
    with (root / "disk.img").open("wb") as f:
        f.truncate(size)
    return root


async def test_cancelled_backup_is_interrupted_cleanly_and_never_exposes_the_password(
    tmp_path: Path, repo: Repository, secrets_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "leaked-from-the-environment")
    volume = sparse_volume(tmp_path / "volume")
    moving = asyncio.Event()

    def progress(p: Progress) -> None:
        if p.bytes_done > 0:
            moving.set()

    task = asyncio.create_task(repo.backup(volume, tags=TAGS, host="ark", progress=progress))
    await asyncio.wait_for(moving.wait(), 60)

    [pid] = restic_processes(repo.identifier)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert PASSWORD not in b"\0".join(argv)
    assert PASSWORD not in environ
    assert b"RESTIC_PASSWORD" not in environ
    [password_flag] = [a.decode() for a in argv if a.startswith(b"--password-file=")]
    password_file = Path(password_flag.split("=", 1)[1])
    assert password_file.parent.parent.parent == secrets_base  # <base>/<session>/<run>/password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
    assert password_file.read_bytes() == PASSWORD

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not Path(f"/proc/{pid}").exists(), "restic was reaped"
    assert password_files(secrets_base) == []
    assert await repo.locks() == []
    assert await repo.snapshots() == []
    await repo.check()


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.45, 0.6, 0.8])
async def test_cancel_at_any_moment_leaves_no_lock(
    tmp_path: Path, repo: Repository, secrets_base: Path, delay: float
) -> None:
    # restic 0.14 leaks its lock when SIGINT lands while it is still creating it; arkd cleans up.
    volume = sparse_volume(tmp_path / "volume")
    task = asyncio.create_task(repo.backup(volume, tags=TAGS, host="ark"))
    await asyncio.sleep(delay)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restic_processes(repo.identifier) == []
    assert password_files(secrets_base) == []
    assert await repo.locks() == []


async def test_a_raising_progress_callback_stops_restic(tmp_path: Path, repo: Repository, secrets_base: Path) -> None:
    volume = sparse_volume(tmp_path / "volume")

    def progress(p: Progress) -> None:
        if p.bytes_done > 0:
            raise RuntimeError("status update failed")

    with pytest.raises(RuntimeError, match="status update failed"):
        await repo.backup(volume, tags=TAGS, host="ark", progress=progress)
    assert restic_processes(repo.identifier) == []
    assert password_files(secrets_base) == []
    assert await repo.locks() == []


async def test_a_child_that_ignores_sigint_is_killed_after_the_grace_period(tmp_path: Path, secrets_base: Path) -> None:
    # Stands in for a restic hung in its cleanup (e.g. removing a lock on a dead backend).
    stubborn = tmp_path / "stubborn"
    stubborn.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    stubborn.chmod(0o755)
    runner = ResticRunner(str(stubborn), temp_dir=str(secrets_base), interrupt_grace=0.5)
    pids: list[int] = []
    started = asyncio.Event()

    def on_line(line: str) -> None:
        pids.append(int(line))
        started.set()

    task = asyncio.create_task(runner.run(cmd.check_command(str(tmp_path / "r")), PASSWORD, on_stdout=on_line))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert password_files(secrets_base) == []


async def test_key_rotation(tmp_path: Path, repo: Repository) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    make_volume(volume)
    old = await repo.backup(volume, tags=TAGS, host="ark")
    [old_key] = await repo.key_list()

    new_password = os.urandom(64)  # binary keys, like `ark restic init-repository --key-size`
    new_key_id = await repo.key_add(new_password)
    rotated = repo.with_password(new_password)
    keys = await rotated.key_list()
    assert {k.id for k in keys} == {old_key.id, new_key_id}
    assert [k.id for k in keys if k.current] == [new_key_id]

    with pytest.raises(ResticError) as in_use:
        await rotated.key_remove(new_key_id)
    assert in_use.value.reason is Reason.KEY_IN_USE
    await rotated.key_remove(old_key.id)

    target = tmp_path / "target"
    target.mkdir()
    await rotated.restore(old.snapshot_id, target)
    assert tree(target) == tree(volume)
    with pytest.raises(ResticError) as wrong:
        await repo.snapshots()
    assert wrong.value.reason is Reason.WRONG_PASSWORD
    with pytest.raises(ResticError) as gone:
        await rotated.key_remove(old_key.id)
    assert gone.value.reason is Reason.ID_NOT_FOUND


def repository_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def test_forget_then_prune_reclaims_space(tmp_path: Path, repo: Repository) -> None:
    first_volume = tmp_path / "one"
    first_volume.mkdir()
    (first_volume / "unique.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    second_volume = tmp_path / "two"
    second_volume.mkdir()
    (second_volume / "other.bin").write_bytes(os.urandom(1024 * 1024))
    first = await repo.backup(first_volume, tags={**TAGS, "volume": "one"}, host="ark")
    second = await repo.backup(second_volume, tags={**TAGS, "volume": "two"}, host="ark")
    size_before = repository_bytes(Path(repo.identifier))

    await repo.forget([first.snapshot_id])
    await repo.forget([first.snapshot_id])  # forgetting twice is harmless
    await repo.forget([])
    assert [s.short_id for s in await repo.snapshots()] == [second.snapshot_id]
    await repo.prune()

    assert repository_bytes(Path(repo.identifier)) < size_before - 5 * 1024 * 1024
    await repo.check()
    target = tmp_path / "target"
    target.mkdir()
    await repo.restore(second.snapshot_id, target)
    assert (target / "other.bin").read_bytes() == (second_volume / "other.bin").read_bytes()


@pytest.fixture
async def live_lock(repo: Repository, tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A restic process that holds a lock: `backup --stdin` waits for input with the lock taken."""
    password_file = tmp_path / "helper-password"
    password_file.write_bytes(PASSWORD)
    proc = await asyncio.create_subprocess_exec(
        "restic", "backup", f"--repo={repo.identifier}", f"--password-file={password_file}",
        "--stdin", "--stdin-filename=dump.sql", "--no-cache",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        if await repo.locks():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("helper restic never took its lock")
    yield proc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_unlock_removes_only_stale_locks(repo: Repository, live_lock: asyncio.subprocess.Process) -> None:
    [lock] = await repo.locks()
    await repo.unlock()
    assert await repo.locks() == [lock], "a live process keeps its lock"
    with pytest.raises(ResticError) as locked:
        await repo.prune()
    assert locked.value.reason is Reason.LOCKED
    assert await repo.exists(), "the existence probe does not need the lock"

    live_lock.send_signal(signal.SIGKILL)  # the holder dies without cleaning up: a stale lock
    await live_lock.wait()
    assert await repo.locks() == [lock]
    await repo.unlock()
    assert await repo.locks() == []
    await repo.prune()


async def test_restore_of_unknown_snapshot_and_bad_directories(tmp_path: Path, repo: Repository) -> None:
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ResticError) as err:
        await repo.restore("deadbeef", target)
    assert err.value.reason is Reason.ID_NOT_FOUND
    assert "snapshot deadbeef not found" in str(err.value)
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        await repo.restore("deadbeef", tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        await repo.backup(tmp_path / "missing", tags=TAGS, host="ark")


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    repository = Repository(str(tmp_path / "repo"), PASSWORD, ResticRunner("/nonexistent/restic"))
    with pytest.raises(ResticError) as err:
        await repository.exists()
    assert err.value.reason is Reason.BINARY_NOT_FOUND
    assert err.value.exit_code is None
    assert "install restic" in str(err.value)


def test_password_and_environment_input_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty password"):
        Repository(str(tmp_path / "repo"), b"")
    with pytest.raises(ValueError, match="refusing to pass RESTIC_PASSWORD"):
        ResticRunner(env={"RESTIC_PASSWORD": "x"})


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[MotoServer]:
    with MotoServer(iam_auth=True) as server:
        yield server


async def test_s3_repository_on_moto(tmp_path: Path, s3: MotoServer, runner: ResticRunner) -> None:
    s3.make_bucket("ark-restic")
    repository = Repository(f"s3:{s3.endpoint}/ark-restic/shop", PASSWORD, runner, env=s3.env())
    assert await repository.exists() is False
    assert await Repository(f"s3:{s3.endpoint}/no-such-bucket/shop", PASSWORD, runner, env=s3.env()).exists() is False
    await repository.init()
    assert await repository.exists()

    volume = tmp_path / "volume"
    volume.mkdir()
    make_volume(volume)
    summary = await repository.backup(volume, tags=TAGS, host="ark")
    [snapshot] = await repository.snapshots(tags=TAGS, last=True)
    assert snapshot.short_id == summary.snapshot_id
    target = tmp_path / "target"
    target.mkdir()
    await repository.restore(summary.snapshot_id, target)
    assert tree(target) == tree(volume)
    keys = s3.client().list_objects_v2(Bucket="ark-restic", Prefix="shop/")["Contents"]
    assert any(k["Key"] == "shop/config" for k in keys)


async def test_s3_wrong_credentials_are_permission_denied(
    iam_s3: MotoServer, runner: ResticRunner, tmp_path: Path
) -> None:
    iam_s3.make_bucket("ark-restic")
    good = Repository(f"s3:{iam_s3.endpoint}/ark-restic/shop", PASSWORD, runner, env=iam_s3.env())
    await good.init()
    bad_credentials = iam_s3.write_credentials_file(iam_s3.access_key, "wrong-secret", str(tmp_path / "bad"))
    bad = Repository(
        good.identifier,
        PASSWORD,
        runner,
        env={**iam_s3.env(), "AWS_SHARED_CREDENTIALS_FILE": bad_credentials},
    )
    with pytest.raises(ResticError) as err:
        await bad.exists()
    assert err.value.reason is Reason.PERMISSION_DENIED
