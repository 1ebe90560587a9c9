"""restic argv building: pure functions, no I/O.

Argument order follows Ark GA's command factory: subcommand, --repo, --password-file, --cache-dir,
positional arguments, flags. The runner supplies the password file and cache directory; secrets
a command needs besides the repository password (a new key) travel as `secret_flags`, written to
files by the runner so they never appear in argv.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_HEX_ID = re.compile(r"[0-9a-f]{1,64}")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f]")
_STATS_MODES = ("restore-size", "files-by-contents", "blobs-per-file", "raw-data")


@dataclass(frozen=True)
class Command:
    subcommand: tuple[str, ...]
    repository: str
    positional: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    # (flag, secret) pairs such as ("--new-password-file", b"..."); repr=False keeps them out of logs.
    secret_flags: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    # Whether restic takes a repository lock for this command (so an interrupted run may leave one).
    locks_repository: bool = True

    @property
    def summary(self) -> str:
        """Secret-free description for messages and logs, e.g. "restic key add"."""
        return "restic " + " ".join(self.subcommand)

    def argv(
        self,
        binary: str,
        password_file: str,
        *,
        cache_dir: str | None = None,
        secret_files: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Full argv; `secret_files` maps each secret flag to the file holding its secret."""
        files = secret_files or {}
        missing = [flag for flag, _ in self.secret_flags if flag not in files]
        if missing:
            raise ValueError(f"{self.summary}: no file given for secret flag(s) {', '.join(missing)}")
        argv = [binary, *self.subcommand, f"--repo={self.repository}", f"--password-file={password_file}"]
        if cache_dir:
            argv.append(f"--cache-dir={cache_dir}")
        argv.extend(self.positional)
        argv.extend(self.flags)
        argv.extend(f"{flag}={files[flag]}" for flag, _ in self.secret_flags)
        return argv


def validate_repository(identifier: str) -> str:
    if not identifier or not identifier.strip():
        raise ValueError("restic repository identifier is empty; pass e.g. s3:http://host:9000/bucket/ns")
    if _FORBIDDEN_CHARS.search(identifier):
        raise ValueError(f"restic repository identifier {identifier!r} contains control characters")
    return identifier


def validate_id(value: str, what: str = "snapshot ID") -> str:
    """restic IDs (full or prefix) are lowercase hex; anything else could be read as a flag."""
    if not _HEX_ID.fullmatch(value):
        raise ValueError(f"invalid restic {what} {value!r}: expected 1-64 lowercase hex characters")
    return value


def _single_line(value: str, what: str) -> str:
    if not value or not value.strip() or _FORBIDDEN_CHARS.search(value):
        raise ValueError(f"invalid restic {what} {value!r}: must be a non-empty single-line string")
    return value


def validate_host(host: str) -> str:
    return _single_line(host, "host name")


def format_tags(tags: Mapping[str, str]) -> list[str]:
    """`k=v` tag strings, sorted so argv is deterministic.

    restic splits --tag values on commas and we split tags on the first "=", so keys may contain
    neither and values no commas.
    """
    out = []
    for key, value in sorted(tags.items()):
        if not key or "=" in key or "," in key or _FORBIDDEN_CHARS.search(key):
            raise ValueError(f"invalid restic tag key {key!r}: must be non-empty without '=', ',' or newlines")
        if "," in value or _FORBIDDEN_CHARS.search(value):
            raise ValueError(f"invalid value {value!r} for restic tag {key!r}: must not contain ',' or newlines")
        out.append(f"{key}={value}")
    return out


def init_command(repository: str) -> Command:
    # init creates the repository, so there is nothing to lock.
    return Command(("init",), validate_repository(repository), locks_repository=False)


def cat_config_command(repository: str) -> Command:
    # --no-lock: an existence probe must work while prune holds the exclusive lock.
    return Command(("cat", "config"), validate_repository(repository), flags=("--no-lock",), locks_repository=False)


def check_command(repository: str) -> Command:
    return Command(("check",), validate_repository(repository))


def unlock_command(repository: str) -> Command:
    # Plain unlock removes only stale locks; --remove-all would break running operations.
    return Command(("unlock",), validate_repository(repository), locks_repository=False)


def list_locks_command(repository: str) -> Command:
    return Command(("list", "locks"), validate_repository(repository), flags=("--no-lock",), locks_repository=False)


def prune_command(repository: str) -> Command:
    return Command(("prune",), validate_repository(repository))


def forget_command(repository: str, snapshot_ids: Sequence[str]) -> Command:
    if not snapshot_ids:
        raise ValueError("restic forget needs at least one snapshot ID")
    ids = tuple(validate_id(i) for i in snapshot_ids)
    return Command(("forget",), validate_repository(repository), positional=ids)


def snapshots_command(
    repository: str,
    *,
    tags: Mapping[str, str] | None = None,
    latest: int | None = None,
    host: str | None = None,
) -> Command:
    flags = ["--json", "--no-lock"]
    if latest is not None:
        if latest < 1:
            raise ValueError(f"latest must be at least 1, got {latest}")
        # restic 0.14 deprecates --last in favour of --latest N.
        flags.append(f"--latest={latest}")
    if host is not None:
        flags.append(f"--host={validate_host(host)}")
    if tags:
        # One --tag with comma-joined tags means "has all of them".
        flags.append("--tag=" + ",".join(format_tags(tags)))
    return Command(("snapshots",), validate_repository(repository), flags=tuple(flags), locks_repository=False)


def key_list_command(repository: str) -> Command:
    return Command(("key", "list"), validate_repository(repository), flags=("--json",))


def key_add_command(
    repository: str, new_password: bytes, *, user: str | None = None, host: str | None = None
) -> Command:
    if not new_password.strip():
        raise ValueError("new restic key password is empty")
    flags = []
    if user is not None:
        flags.append(f"--user={_single_line(user, 'key user name')}")
    if host is not None:
        flags.append(f"--host={validate_host(host)}")
    return Command(
        ("key", "add"),
        validate_repository(repository),
        flags=tuple(flags),
        secret_flags=(("--new-password-file", new_password),),
    )


def key_remove_command(repository: str, key_id: str) -> Command:
    return Command(("key", "remove"), validate_repository(repository), positional=(validate_id(key_id, "key ID"),))


def backup_command(repository: str, *, tags: Mapping[str, str], host: str, parent: str | None = None) -> Command:
    """Back up "." so, run with cwd = the volume directory, snapshot contents are volume-relative."""
    flags = ["--json", *(f"--tag={t}" for t in format_tags(tags)), f"--host={validate_host(host)}"]
    if parent is not None:
        flags.append(f"--parent={validate_id(parent, 'parent snapshot ID')}")
    return Command(("backup",), validate_repository(repository), positional=(".",), flags=tuple(flags))


def restore_command(repository: str, snapshot_id: str) -> Command:
    """Restore into "." so, run with cwd = the target volume directory, files land in place."""
    return Command(
        ("restore",),
        validate_repository(repository),
        positional=(validate_id(snapshot_id),),
        flags=("--target=.",),
    )


def stats_command(repository: str, snapshot_id: str, mode: str = "restore-size") -> Command:
    if mode not in _STATS_MODES:
        raise ValueError(f"unknown restic stats mode {mode!r}: use one of {', '.join(_STATS_MODES)}")
    return Command(
        ("stats",),
        validate_repository(repository),
        positional=(validate_id(snapshot_id),),
        flags=("--json", f"--mode={mode}"),
    )
