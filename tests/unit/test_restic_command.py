"""restic argv building: the exact command lines arkd hands to restic, and input it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from arkd.restic import cache_dir_from_env
from arkd.restic import command as cmd

REPO = "s3:http://127.0.0.1:9000/ark-restic/ns1"


def test_backup_argv_follows_ark_ga_order_with_sorted_tags() -> None:
    command = cmd.backup_command(
        REPO,
        tags={"volume": "data", "backup": "b1", "pod-uid": "u-1", "ns": "ns1"},
        host="ark",
        parent="0123abcd",
    )
    argv = command.argv("restic", "/tmp/p/password", cache_dir="/scratch/.cache/restic")
    assert argv == [
        "restic",
        "backup",
        f"--repo={REPO}",
        "--password-file=/tmp/p/password",
        "--cache-dir=/scratch/.cache/restic",
        ".",
        "--json",
        "--tag=backup=b1",
        "--tag=ns=ns1",
        "--tag=pod-uid=u-1",
        "--tag=volume=data",
        "--host=ark",
        "--parent=0123abcd",
    ]
    assert command.summary == "restic backup"


def test_backup_without_parent_or_cache_dir() -> None:
    argv = cmd.backup_command(REPO, tags={"backup": "b1"}, host="ark").argv("/usr/bin/restic", "/p")
    assert argv == [
        "/usr/bin/restic",
        "backup",
        f"--repo={REPO}",
        "--password-file=/p",
        ".",
        "--json",
        "--tag=backup=b1",
        "--host=ark",
    ]
    assert not any(a.startswith("--parent") or a.startswith("--cache-dir") for a in argv)


def test_restore_targets_working_directory() -> None:
    argv = cmd.restore_command(REPO, "6dbd62aa").argv("restic", "/p")
    assert argv == ["restic", "restore", f"--repo={REPO}", "--password-file=/p", "6dbd62aa", "--target=."]


def test_snapshots_filter_joins_all_tags_in_one_flag_and_never_locks() -> None:
    command = cmd.snapshots_command(REPO, tags={"pod": "p", "backup": "b1"}, latest=1, host="ark")
    argv = command.argv("restic", "/p")
    assert argv[4:] == ["--json", "--no-lock", "--latest=1", "--host=ark", "--tag=backup=b1,pod=p"]
    assert command.locks_repository is False


def test_snapshots_without_filters_lists_everything() -> None:
    assert cmd.snapshots_command(REPO).argv("restic", "/p")[4:] == ["--json", "--no-lock"]
    with pytest.raises(ValueError, match="latest must be at least 1"):
        cmd.snapshots_command(REPO, latest=0)


def test_existence_probe_does_not_lock() -> None:
    command = cmd.cat_config_command(REPO)
    assert command.argv("restic", "/p") == [
        "restic",
        "cat",
        "config",
        f"--repo={REPO}",
        "--password-file=/p",
        "--no-lock",
    ]
    assert not command.locks_repository


def test_unlock_never_removes_live_locks() -> None:
    argv = cmd.unlock_command(REPO).argv("restic", "/p")
    assert argv == ["restic", "unlock", f"--repo={REPO}", "--password-file=/p"]
    assert "--remove-all" not in argv


def test_maintenance_commands() -> None:
    assert cmd.init_command(REPO).argv("restic", "/p")[1] == "init"
    assert not cmd.init_command(REPO).locks_repository
    assert cmd.check_command(REPO).argv("restic", "/p")[1] == "check"
    assert cmd.prune_command(REPO).argv("restic", "/p")[1] == "prune"
    assert cmd.prune_command(REPO).locks_repository
    assert cmd.forget_command(REPO, ["aaaa1111", "bbbb2222"]).argv("restic", "/p")[4:] == [
        "aaaa1111",
        "bbbb2222",
    ]
    assert cmd.key_list_command(REPO).argv("restic", "/p")[1:3] == ["key", "list"]
    assert cmd.key_remove_command(REPO, "16dfbcc3").argv("restic", "/p")[-1] == "16dfbcc3"
    stats = cmd.stats_command(REPO, "6dbd62aa").argv("restic", "/p")
    assert stats[4:] == ["6dbd62aa", "--json", "--mode=restore-size"]
    assert cmd.list_locks_command(REPO).argv("restic", "/p")[1:3] == ["list", "locks"]


def test_new_key_password_goes_through_a_file_never_argv_or_repr() -> None:
    secret = b"n3w-s3cret-passw0rd"
    command = cmd.key_add_command(REPO, secret, user="ark", host="node-1")
    argv = command.argv("restic", "/d/password", secret_files={"--new-password-file": "/d/secret-0"})
    assert argv == [
        "restic",
        "key",
        "add",
        f"--repo={REPO}",
        "--password-file=/d/password",
        "--user=ark",
        "--host=node-1",
        "--new-password-file=/d/secret-0",
    ]
    assert not any(secret.decode() in a for a in argv)
    assert secret.decode() not in repr(command)
    with pytest.raises(ValueError, match="no file given for secret flag"):
        command.argv("restic", "/d/password")
    with pytest.raises(ValueError, match="new restic key password is empty"):
        cmd.key_add_command(REPO, b"  \n")


@pytest.mark.parametrize("bad", ["", "--remove-all", "-x", "ABCDEF12", "6dbd62aa 1", "latest", "g" * 8, "a" * 65])
def test_snapshot_and_key_ids_must_be_hex_so_they_cannot_become_flags(bad: str) -> None:
    with pytest.raises(ValueError, match="expected 1-64 lowercase hex"):
        cmd.restore_command(REPO, bad)
    with pytest.raises(ValueError, match="expected 1-64 lowercase hex"):
        cmd.forget_command(REPO, ["aaaa1111", bad])
    with pytest.raises(ValueError, match="invalid restic key ID"):
        cmd.key_remove_command(REPO, bad)


def test_forget_needs_ids() -> None:
    with pytest.raises(ValueError, match="at least one snapshot ID"):
        cmd.forget_command(REPO, [])


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"": "v"}, "invalid restic tag key"),
        ({"a=b": "v"}, "invalid restic tag key"),
        ({"a,b": "v"}, "invalid restic tag key"),
        ({"k": "v1,v2"}, "must not contain ','"),
        ({"k": "line\nbreak"}, "must not contain ','"),
    ],
)
def test_tags_restic_would_misread_are_rejected(tags: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cmd.backup_command(REPO, tags=tags, host="ark")
    with pytest.raises(ValueError, match=message):
        cmd.snapshots_command(REPO, tags=tags)


def test_tag_values_may_contain_equals_and_dashes() -> None:
    argv = cmd.backup_command(REPO, tags={"k": "-a=b"}, host="ark").argv("restic", "/p")
    assert "--tag=k=-a=b" in argv


def test_host_and_repository_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid restic host name"):
        cmd.backup_command(REPO, tags={}, host="")
    with pytest.raises(ValueError, match="invalid restic host name"):
        cmd.backup_command(REPO, tags={}, host="a\nb")
    with pytest.raises(ValueError, match="identifier is empty"):
        cmd.init_command(" ")
    with pytest.raises(ValueError, match="control characters"):
        cmd.init_command("/repo\n--remove-all")


def test_stats_mode_is_validated() -> None:
    assert "--mode=raw-data" in cmd.stats_command(REPO, "abcd", "raw-data").argv("restic", "/p")
    with pytest.raises(ValueError, match="unknown restic stats mode 'bogus'"):
        cmd.stats_command(REPO, "abcd", "bogus")


def test_cache_dir_from_ark_scratch_dir() -> None:
    assert cache_dir_from_env({"ARK_SCRATCH_DIR": "/scratch"}) == "/scratch/.cache/restic"
    assert cache_dir_from_env({}) is None
    assert cache_dir_from_env({"ARK_SCRATCH_DIR": ""}) is None


def test_stale_password_directories_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import fcntl
    import os

    from arkd.restic.runner import SESSION_PREFIX, SecretsSession, sweep_stale_sessions

    live = SecretsSession(str(tmp_path))
    live_dir = live.directory()
    dead = tmp_path / f"{SESSION_PREFIX}dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "run-1").mkdir()
    (dead / "run-1" / "password").write_bytes(b"secret key")
    half_made = tmp_path / f"{SESSION_PREFIX}nolock"
    half_made.mkdir()
    unrelated = tmp_path / "other-dir"
    unrelated.mkdir()

    removed = sweep_stale_sessions(str(tmp_path))

    assert sorted(removed) == sorted([str(dead), str(half_made)])
    assert Path(live_dir).is_dir() and unrelated.is_dir()
    # The live session's lock is really held: nobody else can take it.
    fd = os.open(Path(live_dir, ".lock"), os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    live.close()
    assert not Path(live_dir).exists()
