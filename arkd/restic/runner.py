"""Running restic as a subprocess whose lifetime is bound to the awaiting task.

- argv only, never a shell; stdin is /dev/null so restic can never prompt.
- Secrets (the repository password, a new key's password) go into 0600 files inside a private
  0700 directory that is removed after the run, whatever happened. They never reach argv or the
  environment, and RESTIC_PASSWORD* is stripped from the inherited environment so an operator's
  shell variable cannot override the file.
- stdout is streamed line by line to a callback (or captured whole); stderr keeps a bounded tail.
- Cancelling the awaiting task sends SIGINT (restic then removes its lock), waits
  `interrupt_grace` seconds, then SIGKILLs the process group; the child is always reaped.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from arkd.restic.command import Command
from arkd.restic.errors import Reason, ResticError, strip_ansi

logger = logging.getLogger("arkd.restic.runner")

LineCallback = Callable[[str], None]
InterruptHook = Callable[[], Awaitable[None]]

_READ_CHUNK = 64 * 1024
_SECRET_ENV_PREFIX = "RESTIC_PASSWORD"


def cache_dir_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """Ark GA's restic cache location: `$ARK_SCRATCH_DIR/.cache/restic` when the variable is set."""
    scratch = (os.environ if environ is None else environ).get("ARK_SCRATCH_DIR")
    return str(Path(scratch) / ".cache" / "restic") if scratch else None


SESSION_PREFIX = "arkd-restic-session-"
_LOCK_NAME = ".lock"


class SecretsSession:
    """A private 0700 directory for this process's password files, marked live by an flock.

    A SIGKILLed or OOM-killed process cannot remove its password files; the kernel does drop its
    flock, so the next process (the restarted agent, with the same PID 1 in its container) removes
    every session directory whose lock nobody holds: the key does not stay on the node's disk.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.path: str | None = None
        self._lock_fd: int | None = None

    def directory(self) -> str:
        if self.path is None or not Path(self.path).is_dir():
            sweep_stale_sessions(self.base)
            path = tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=self.base)
            fd = os.open(Path(path, _LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path, self._lock_fd = path, fd
            atexit.register(self.close)  # a clean exit leaves nothing; a killed one is swept later
        return self.path

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self.path, self._lock_fd = None, None


def sweep_stale_sessions(base: str) -> list[str]:
    """Remove password directories left by processes that died without cleaning up; returns them."""
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(SESSION_PREFIX) and e.is_dir()]
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(Path(entry.path, _LOCK_NAME), os.O_RDWR)
        except OSError:
            fd = None  # no lock file: a session that died while being created
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live process holds it
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        logger.warning("removed password files left by a killed process", extra={"directories": len(removed)})
    return removed


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: str  # the whole stdout when no on_stdout callback was given, else ""
    stderr_tail: str


class StderrTail:
    """The last `max_lines` lines of stderr, at most `max_bytes` in total."""

    def __init__(self, max_lines: int = 64, max_bytes: int = 8192) -> None:
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes

    def add(self, line: str) -> None:
        line = strip_ansi(line)
        if len(line) > self._max_bytes:
            line = line[: self._max_bytes]
        self._lines.append(line)
        self._bytes += len(line) + 1
        # _bytes counts a separator per line; the joined text has one fewer.
        while len(self._lines) > self._max_lines or (len(self._lines) > 1 and self._bytes - 1 > self._max_bytes):
            self._bytes -= len(self._lines.popleft()) + 1

    def text(self) -> str:
        return "\n".join(self._lines)


class _LineSplitter:
    """Splits a byte stream into lines, cutting lines longer than `max_line` (the rest is dropped)."""

    def __init__(self, sink: LineCallback, max_line: int) -> None:
        self._sink = sink
        self._max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._discarding:
                self._discarding = False
            else:
                self._emit(line)
        if len(self._buf) > self._max_line:
            if not self._discarding:
                self._emit(bytes(self._buf[: self._max_line]))
                self._discarding = True
            self._buf.clear()

    def close(self) -> None:
        if self._buf and not self._discarding:
            self._emit(bytes(self._buf))
        self._buf.clear()

    def _emit(self, line: bytes) -> None:
        self._sink(line.decode("utf-8", errors="replace").rstrip("\r"))


def _build_env(inherit: bool, *overlays: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_ENV_PREFIX)} if inherit else {}
    for overlay in overlays:
        if not overlay:
            continue
        bad = sorted(k for k in overlay if k.startswith(_SECRET_ENV_PREFIX))
        if bad:
            raise ValueError(
                f"refusing to pass {', '.join(bad)} to restic: the password goes through --password-file only"
            )
        env.update(overlay)
    return env


def _write_secret(directory: str, name: str, secret: bytes) -> str:
    path = str(Path(directory) / name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return path


class ResticRunner:
    """Runs restic commands; one instance can serve many concurrent runs.

    `env` is added to the (optionally inherited) environment of every run, e.g. cloud
    credentials. `launcher` is an argv prefix such as ("nice", "-n", "10") that must exec restic.
    """

    def __init__(
        self,
        binary: str = "restic",
        *,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cache_dir: str | None = None,
        temp_dir: str | None = None,
        interrupt_grace: float = 10.0,
        launcher: Sequence[str] = (),
        stderr_tail_lines: int = 64,
        stderr_tail_bytes: int = 8192,
        max_line_bytes: int = 1024 * 1024,
    ) -> None:
        if interrupt_grace < 0:
            raise ValueError(f"interrupt_grace must be >= 0 seconds, got {interrupt_grace}")
        self.binary = binary
        self.env = dict(env or {})
        _build_env(False, self.env)  # validate now, not on the first run
        self.inherit_env = inherit_env
        self.cache_dir = cache_dir
        self.temp_dir = temp_dir
        self.interrupt_grace = interrupt_grace
        self.launcher = tuple(launcher)
        self._secrets: SecretsSession | None = None
        self._tail_lines = stderr_tail_lines
        self._tail_bytes = stderr_tail_bytes
        self._max_line = max_line_bytes

    async def run(
        self,
        command: Command,
        password: bytes,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        on_stdout: LineCallback | None = None,
        on_stderr: LineCallback | None = None,
        ok_exit_codes: Collection[int] = (0,),
        after_interrupt: InterruptHook | None = None,
    ) -> RunResult:
        """Run `command`; raise ResticError unless it exits with one of `ok_exit_codes`.

        Without `on_stdout`, stdout is captured whole into the result (for JSON documents);
        with it, each line is passed as it arrives. A callback that raises stops restic and the
        exception propagates. `after_interrupt` is awaited once restic had to be stopped
        (cancellation or a raising callback), before the exception propagates.
        """
        if not password or not password.strip():
            raise ValueError(f"{command.summary}: the repository password is empty")
        if cwd is not None and not await asyncio.to_thread(Path(cwd).is_dir):
            raise NotADirectoryError(f"{command.summary}: working directory {os.fspath(cwd)} is not a directory")
        run_env = _build_env(self.inherit_env, self.env, env)
        secrets_dir = tempfile.mkdtemp(prefix="run-", dir=self._session().directory())  # mode 0700
        try:
            password_file = _write_secret(secrets_dir, "password", password)
            secret_files = {
                flag: _write_secret(secrets_dir, f"secret-{i}", secret)
                for i, (flag, secret) in enumerate(command.secret_flags)
            }
            argv = [
                *self.launcher,
                *command.argv(self.binary, password_file, cache_dir=self.cache_dir, secret_files=secret_files),
            ]
            return await self._execute(
                command=command,
                argv=argv,
                cwd=cwd,
                env=run_env,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                ok_exit_codes=ok_exit_codes,
                after_interrupt=after_interrupt,
            )
        finally:
            shutil.rmtree(secrets_dir, ignore_errors=True)

    def _session(self) -> SecretsSession:
        if self._secrets is None:
            self._secrets = SecretsSession(self.temp_dir or tempfile.gettempdir())
        return self._secrets

    async def _execute(
        self,
        *,
        command: Command,
        argv: list[str],
        cwd: str | os.PathLike[str] | None,
        env: dict[str, str],
        on_stdout: LineCallback | None,
        on_stderr: LineCallback | None,
        ok_exit_codes: Collection[int],
        after_interrupt: InterruptHook | None,
    ) -> RunResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                # Own process group: a terminal's Ctrl-C reaches arkd only, and arkd decides.
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ResticError(
                None,
                "",
                command.summary,
                reason=Reason.BINARY_NOT_FOUND,
                message=f"cannot start {argv[0]!r} for {command.summary}: {exc.strerror}; "
                "install restic (Debian: apt-get install restic) or configure the restic binary path",
            ) from exc
        started = time.monotonic()
        logger.debug("restic started", extra={"command": command.summary, "pid": proc.pid})
        tail = StderrTail(self._tail_lines, self._tail_bytes)
        captured = bytearray()

        def stderr_line(line: str) -> None:
            tail.add(line)
            if on_stderr is not None:
                on_stderr(line)

        assert proc.stdout is not None and proc.stderr is not None
        out_sink: Callable[[bytes], None]
        out_close: Callable[[], None]
        if on_stdout is None:
            out_sink, out_close = captured.extend, lambda: None
        else:
            splitter = _LineSplitter(on_stdout, self._max_line)
            out_sink, out_close = splitter.feed, splitter.close
        err_splitter = _LineSplitter(stderr_line, self._max_line)
        readers = [
            asyncio.create_task(_pump(proc.stdout, out_sink, out_close)),
            asyncio.create_task(_pump(proc.stderr, err_splitter.feed, err_splitter.close)),
        ]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a raising callback stops restic via the except below
            exit_code = await proc.wait()
        except BaseException:
            interrupted = proc.returncode is None
            await self._stop(proc, command)
            await _finish_readers(readers)
            if interrupted and after_interrupt is not None:
                await after_interrupt()
            raise
        logger.debug(
            "restic finished",
            extra={
                "command": command.summary,
                "pid": proc.pid,
                "exit_code": exit_code,
                "duration_seconds": round(time.monotonic() - started, 3),
            },
        )
        if exit_code not in ok_exit_codes:
            raise ResticError(exit_code, tail.text(), command.summary)
        return RunResult(exit_code, captured.decode("utf-8", errors="replace"), tail.text())

    async def _stop(self, proc: asyncio.subprocess.Process, command: Command) -> None:
        """SIGINT, grace period, SIGKILL; returns only once the child is reaped."""
        try:
            if proc.returncode is None:
                logger.info("interrupting restic", extra={"command": command.summary, "pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), self.interrupt_grace)
                except TimeoutError:
                    logger.warning(
                        "restic ignored SIGINT, killing it",
                        extra={
                            "command": command.summary,
                            "pid": proc.pid,
                            "grace_seconds": self.interrupt_grace,
                        },
                    )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                # Shielded: a second cancellation must not leave the child unreaped.
                await asyncio.shield(proc.wait())


async def _pump(stream: asyncio.StreamReader, sink: Callable[[bytes], None], close: Callable[[], None]) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        sink(chunk)
    close()


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    # The pipes close when the child exits, so readers end by themselves; cancel any that hang.
    _, pending = await asyncio.wait(readers, timeout=1.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
