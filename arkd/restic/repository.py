"""One restic repository and the operations arkd needs on it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from arkd.restic import command as cmd
from arkd.restic.errors import Reason, ResticError, ResticOutputError
from arkd.restic.messages import (
    BackupOutput,
    BackupSummary,
    Key,
    Progress,
    RestoreSummary,
    Snapshot,
    parse_init,
    parse_keys,
    parse_object,
    parse_snapshots,
)
from arkd.restic.runner import LineCallback, ResticRunner, RunResult

logger = logging.getLogger("arkd.restic.repository")

ProgressCallback = Callable[[Progress], None]


class Repository:
    """A restic repository addressed by `identifier` (e.g. `s3:http://host:9000/bucket/ns`).

    `env` is added to the runner's environment for this repository only (cloud credentials).
    With `release_locks_on_cancel`, a locking command that had to be interrupted (cancellation,
    or a progress callback that raised) is followed by a plain `restic unlock`: restic 0.14 exits
    from its SIGINT handler while a freshly created lock file is still unregistered, leaking it.
    Plain unlock removes only stale locks (dead process on this host, or older than 30 minutes),
    never a live one.
    """

    def __init__(
        self,
        identifier: str,
        password: bytes,
        runner: ResticRunner | None = None,
        *,
        env: Mapping[str, str] | None = None,
        restore_poll_interval: float = 2.0,
        release_locks_on_cancel: bool = True,
    ) -> None:
        if not password or not password.strip():
            raise ValueError(f"empty password for restic repository {identifier}")
        self.identifier = cmd.validate_repository(identifier)
        self._password = password
        self.runner = runner if runner is not None else ResticRunner()
        self.env = dict(env or {})
        self.restore_poll_interval = restore_poll_interval
        self.release_locks_on_cancel = release_locks_on_cancel

    def __repr__(self) -> str:
        return f"Repository({self.identifier!r})"

    def with_password(self, password: bytes) -> Repository:
        """The same repository opened with another key's password (after key rotation)."""
        return Repository(
            self.identifier,
            password,
            self.runner,
            env=self.env,
            restore_poll_interval=self.restore_poll_interval,
            release_locks_on_cancel=self.release_locks_on_cancel,
        )

    async def _run(
        self,
        command: cmd.Command,
        *,
        cwd: str | os.PathLike[str] | None = None,
        on_stdout: LineCallback | None = None,
        on_stderr: LineCallback | None = None,
        ok_exit_codes: Collection[int] = (0,),
    ) -> RunResult:
        async def release_stale_locks() -> None:
            await self._release_stale_locks(command)

        hook = release_stale_locks if command.locks_repository and self.release_locks_on_cancel else None
        return await self.runner.run(
            command,
            self._password,
            cwd=cwd,
            env=self.env,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            ok_exit_codes=ok_exit_codes,
            after_interrupt=hook,
        )

    async def _release_stale_locks(self, interrupted: cmd.Command) -> None:
        try:
            async with asyncio.timeout(max(self.runner.interrupt_grace, 10.0)):
                await self.runner.run(cmd.unlock_command(self.identifier), self._password, env=self.env)
        except (ResticError, TimeoutError, OSError) as exc:
            logger.warning(
                "could not remove stale restic locks after an interrupted command",
                extra={"repository": self.identifier, "command": interrupted.summary, "error": str(exc)},
            )

    async def exists(self) -> bool:
        """True if a repository is initialised at the identifier, False if there is none.

        Raises ResticError when that cannot be told: wrong password (Reason.WRONG_PASSWORD),
        unreachable storage, permission denied. Callers must not `init` on those.
        """
        try:
            await self._run(cmd.cat_config_command(self.identifier))
        except ResticError as exc:
            if exc.reason is Reason.REPOSITORY_NOT_FOUND:
                return False
            raise
        return True

    async def init(self) -> str:
        """Create the repository; returns restic's repository id.

        Raises ResticError with Reason.ALREADY_INITIALIZED if one exists there.
        """
        result = await self._run(cmd.init_command(self.identifier))
        repo_id = parse_init(result.stdout)
        logger.info("restic repository initialised", extra={"repository": self.identifier, "repository_id": repo_id})
        return repo_id

    async def ensure(self) -> bool:
        """Initialise the repository unless it exists; True if this call created it."""
        if await self.exists():
            return False
        try:
            await self.init()
        except ResticError as exc:
            if exc.reason is Reason.ALREADY_INITIALIZED:  # another initialiser won the race
                return False
            raise
        return True

    async def check(self) -> None:
        await self._run(cmd.check_command(self.identifier))

    async def unlock(self) -> None:
        """Remove stale locks only (never --remove-all)."""
        await self._run(cmd.unlock_command(self.identifier))

    async def locks(self) -> list[str]:
        """IDs of the lock files currently in the repository."""
        result = await self._run(cmd.list_locks_command(self.identifier))
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    async def prune(self) -> None:
        await self._run(cmd.prune_command(self.identifier))

    async def forget(self, snapshot_ids: Sequence[str]) -> None:
        """Forget snapshots (data is reclaimed by the next prune). Unknown IDs are ignored by
        restic, so forgetting twice is harmless; no IDs is a no-op."""
        if not snapshot_ids:
            return
        await self._run(cmd.forget_command(self.identifier, snapshot_ids))

    async def snapshots(
        self, tags: Mapping[str, str] | None = None, last: bool = False, host: str | None = None
    ) -> list[Snapshot]:
        """Snapshots carrying all `tags` (and `host`), oldest first.

        `last` keeps only the newest snapshot per host and path group, like Ark's `--last`.
        """
        result = await self._run(
            cmd.snapshots_command(self.identifier, tags=tags, latest=1 if last else None, host=host)
        )
        return parse_snapshots(result.stdout)

    async def key_list(self) -> list[Key]:
        result = await self._run(cmd.key_list_command(self.identifier))
        return parse_keys(result.stdout)

    async def key_add(self, new_password: bytes, *, user: str | None = None, host: str | None = None) -> str:
        """Add a key for `new_password`; returns its key ID (the short form `key list` shows)."""
        await self._run(cmd.key_add_command(self.identifier, new_password, user=user, host=host))
        # restic 0.14 does not print the new ID; the key that opens with the new password is it.
        keys = await self.with_password(new_password).key_list()
        current = [k for k in keys if k.current]
        if len(current) != 1:
            raise ResticOutputError(
                f"restic key list for {self.identifier} marks {len(current)} keys as current after key add"
            )
        return current[0].id

    async def key_remove(self, key_id: str) -> None:
        """Remove a key. restic refuses to remove the key in use (Reason.KEY_IN_USE)."""
        await self._run(cmd.key_remove_command(self.identifier, key_id))

    async def stats(self, snapshot_id: str, mode: str = "restore-size") -> dict[str, Any]:
        """`restic stats --json` of one snapshot; raises ResticError (Reason.ID_NOT_FOUND) if
        the snapshot does not exist (restic 0.14 itself exits 0 with zero totals then)."""
        result = await self._run(cmd.stats_command(self.identifier, snapshot_id, mode))
        stats = parse_object(result.stdout, "stats")
        if stats.get("snapshots_count") == 0:
            raise ResticError(
                result.exit_code,
                result.stderr_tail,
                "restic stats",
                reason=Reason.ID_NOT_FOUND,
                message=f"snapshot {snapshot_id} not found in restic repository {self.identifier}",
            )
        return stats

    async def backup(
        self,
        cwd: str | os.PathLike[str],
        *,
        tags: Mapping[str, str],
        host: str,
        parent: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> BackupSummary:
        """Back up the directory `cwd` (as ".", so snapshot contents are relative to it).

        Exit code 3 (some files unreadable) returns a summary with `incomplete=True` and the
        unreadable paths instead of raising. `snapshot_id` is what restic reports (the short ID
        in 0.14); without a summary line it is looked up by tags and host.
        """
        source = os.fspath(cwd)
        output = BackupOutput(progress, source_dir=source)
        result = await self._run(
            cmd.backup_command(self.identifier, tags=tags, host=host, parent=parent),
            cwd=source,
            on_stdout=output.on_line,
            on_stderr=output.on_line,
            ok_exit_codes=(0, 3),
        )
        summary = output.summary
        snapshot_id = summary.snapshot_id if summary is not None else None
        if snapshot_id is None:
            snapshot_id = await self._find_backup_snapshot(tags, host)
        final = output.final_progress()
        if progress is not None and final is not None:
            progress(final)
        incomplete = result.exit_code == 3
        if incomplete:
            logger.warning(
                "restic backup could not read some files",
                extra={"repository": self.identifier, "snapshot": snapshot_id, "errors": output.error_count},
            )
        return BackupSummary(
            snapshot_id=snapshot_id,
            files_new=summary.files_new if summary else 0,
            files_changed=summary.files_changed if summary else 0,
            files_unmodified=summary.files_unmodified if summary else 0,
            dirs_new=summary.dirs_new if summary else 0,
            dirs_changed=summary.dirs_changed if summary else 0,
            dirs_unmodified=summary.dirs_unmodified if summary else 0,
            data_added=summary.data_added if summary else 0,
            total_files_processed=summary.total_files_processed if summary else 0,
            total_bytes_processed=summary.total_bytes_processed if summary else 0,
            total_duration=summary.total_duration if summary else 0.0,
            incomplete=incomplete,
            unreadable_paths=output.unreadable_paths(),
            error_count=output.error_count,
        )

    async def _find_backup_snapshot(self, tags: Mapping[str, str], host: str) -> str:
        if not tags:
            raise ResticOutputError(
                f"restic backup to {self.identifier} printed no summary, and without tags its snapshot "
                "cannot be identified"
            )
        found = await self.snapshots(tags=tags, last=True, host=host)
        if not found:
            raise ResticOutputError(
                f"restic backup to {self.identifier} printed no summary and no snapshot has tags {dict(tags)}"
            )
        return max(found, key=lambda s: s.time).short_id

    async def restore(
        self,
        snapshot_id: str,
        cwd: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        total_bytes: int | None = None,
    ) -> RestoreSummary:
        """Restore a snapshot into the directory `cwd` (`--target .`).

        With `total_bytes` known (the backup recorded it), `restic stats` is skipped: it costs a
        second repository open and snapshot walk, which measured as ~40% of a restore's time.

        restic 0.14 has no progress output for restore, so progress is measured: totals from
        `restic stats` (restore-size), done figures by polling the bytes and entries present under
        `cwd` every `restore_poll_interval` seconds. restic preallocates files, and files already
        in `cwd` count too, so mid-run figures are an upper bound; 100% is reported only after
        restic has exited successfully.
        """
        target = os.fspath(cwd)
        if not await asyncio.to_thread(Path(target).is_dir):
            raise NotADirectoryError(f"restore target {target} is not a directory")
        started = time.monotonic()
        if total_bytes is None:
            stats = await self.stats(snapshot_id)
            total_bytes = _as_int(stats.get("total_size"))
            total_files = _as_int(stats.get("total_file_count"))
        else:
            total_files = 0  # unknown: progress counts bytes
        poller: asyncio.Task[None] | None = None
        if progress is not None:
            progress(Progress(total_bytes, 0, 0, total_files, 0.0))
            poller = asyncio.create_task(
                _poll_directory(target, total_bytes, total_files, self.restore_poll_interval, progress)
            )
        try:
            await self._run(cmd.restore_command(self.identifier, snapshot_id), cwd=target)
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        if progress is not None:
            progress(Progress(total_bytes, total_bytes, total_files, total_files, 100.0))
        return RestoreSummary(
            snapshot_id=snapshot_id,
            total_bytes=total_bytes,
            total_files=total_files,
            duration=time.monotonic() - started,
        )


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def directory_usage(root: str) -> tuple[int, int]:
    """(bytes in regular files, entries) under root, hard links counted once, symlinks not followed."""
    total = 0
    entries = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if (st.st_dev, st.st_ino) not in seen:
                                seen.add((st.st_dev, st.st_ino))
                                total += st.st_size
                    except OSError:
                        continue  # vanished or unreadable mid-restore
        except OSError:
            continue
    return total, entries


async def _poll_directory(
    target: str, total_bytes: int, total_files: int, interval: float, progress: ProgressCallback
) -> None:
    while True:
        await asyncio.sleep(interval)
        used, entries = await asyncio.to_thread(directory_usage, target)
        done = min(used, total_bytes)
        files = min(entries, total_files)
        percent = 100.0 * done / total_bytes if total_bytes else 0.0
        # Never claim completion while restic still runs.
        progress(Progress(total_bytes, done, files, total_files, min(percent, 99.9)))
