"""restic failures as one exception type with a machine-readable reason.

restic 0.14 exits 1 for nearly every failure (0.17 added codes 10/11/12), so the reason comes
mostly from the stderr text. The rules were checked against restic 0.14's real messages; order
matters because one failure can print several of the phrases (an unreachable S3 endpoint also
prints "Is there a repository at the following location?").
"""

from __future__ import annotations

import enum
import re


class Reason(enum.StrEnum):
    WRONG_PASSWORD = "WrongPassword"
    REPOSITORY_NOT_FOUND = "RepositoryNotFound"
    ALREADY_INITIALIZED = "AlreadyInitialized"
    LOCKED = "Locked"
    UNREACHABLE = "Unreachable"
    PERMISSION_DENIED = "PermissionDenied"
    ID_NOT_FOUND = "IdNotFound"
    KEY_IN_USE = "KeyInUse"
    INCOMPLETE = "Incomplete"
    INTERRUPTED = "Interrupted"
    BINARY_NOT_FOUND = "BinaryNotFound"
    UNKNOWN = "Unknown"


# Exit codes restic gives a meaning to (doc/075_scripting.rst); 10-12 exist only since 0.17.
_EXIT_CODE_REASONS = {
    3: Reason.INCOMPLETE,
    10: Reason.REPOSITORY_NOT_FOUND,
    11: Reason.LOCKED,
    12: Reason.WRONG_PASSWORD,
    130: Reason.INTERRUPTED,
}

_TEXT_RULES: tuple[tuple[Reason, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        (Reason.WRONG_PASSWORD, r"wrong password or no key found"),
        (Reason.LOCKED, r"repository is already locked"),
        (
            Reason.UNREACHABLE,
            r"connection refused|no such host|i/o timeout|network is unreachable|no route to host"
            r"|connection reset by peer|tls handshake timeout|server misbehaving|dial tcp",
        ),
        (
            Reason.PERMISSION_DENIED,
            r"permission denied|access ?denied|invalidaccesskeyid|signaturedoesnotmatch"
            r"|authorizationheadermalformed|403 forbidden",
        ),
        (Reason.ALREADY_INITIALIZED, r"config file already exists|already initialized"),
        (Reason.KEY_IN_USE, r"refusing to remove key currently used"),
        (Reason.ID_NOT_FOUND, r"no matching id found|could not find snapshot|no snapshot found"),
        (
            Reason.REPOSITORY_NOT_FOUND,
            r"is there a repository at the following location|repository does not exist"
            r"|unable to open config file|specified bucket does not exist|nosuchbucket",
        ),
    )
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """restic prefixes some lines with a clear-line escape even when stderr is not a terminal."""
    return _ANSI.sub("", text)


def classify(exit_code: int | None, stderr: str) -> Reason:
    """Best-effort reason for a failed restic run, from its exit code and stderr text."""
    by_code = _EXIT_CODE_REASONS.get(exit_code) if exit_code is not None else None
    if by_code is not None:
        return by_code
    for reason, pattern in _TEXT_RULES:
        if pattern.search(stderr):
            return reason
    return Reason.UNKNOWN


def _detail(text: str, reason: Reason, count: int) -> str:
    """The last `count` lines of stderr, led by the line that gave the reason if it is older.

    restic explains a failure first and adds hints after it: "repository is already locked
    exclusively by PID 812 on node-3" is followed by three lines about the lock's age and `unlock`.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    shown = lines[-count:]
    pattern = next((p for r, p in _TEXT_RULES if r is reason), None)
    cause = next((line for line in lines if pattern.search(line)), None) if pattern is not None else None
    if cause is not None and cause not in shown:
        shown = [cause, *shown]
    return " | ".join(shown)


class ResticError(Exception):
    """A restic run that failed.

    `exit_code` is None when restic never ran (binary missing). `command` is a summary such as
    "restic backup" that never contains secrets. `reason` is derived from the exit code and
    stderr unless given.
    """

    def __init__(
        self,
        exit_code: int | None,
        stderr_tail: str,
        command: str,
        *,
        reason: Reason | None = None,
        message: str | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.stderr_tail = strip_ansi(stderr_tail)
        self.command = command
        self.reason = reason if reason is not None else classify(exit_code, self.stderr_tail)
        if message is None:
            detail = _detail(self.stderr_tail, self.reason, 3) or "no error output"
            message = f"{command} exited with code {exit_code}: {detail}"
        self.message = message
        super().__init__(message)


class ResticOutputError(Exception):
    """restic succeeded but printed something other than the output its command promises."""
