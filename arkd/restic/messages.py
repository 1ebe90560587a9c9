"""Parsing restic's machine-readable output (restic 0.14 `--json`).

Every parser here is total: a truncated line, a non-JSON line or an unexpected shape yields an
`InvalidLine` / a default instead of an exception, because restic interleaves plain text with
JSON and a progress reader must never take a backup down.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arkd.restic.errors import ResticOutputError


@dataclass(frozen=True)
class Progress:
    """Progress of one backup or restore; percent is 0-100."""

    total_bytes: int
    bytes_done: int
    files_done: int
    total_files: int
    percent: float


@dataclass(frozen=True)
class StatusMessage:
    percent_done: float
    total_files: int
    files_done: int
    total_bytes: int
    bytes_done: int
    error_count: int
    seconds_elapsed: int
    seconds_remaining: int
    current_files: tuple[str, ...]

    def to_progress(self) -> Progress:
        percent = self.percent_done * 100
        if percent <= 0 and self.total_bytes > 0:
            percent = self.bytes_done * 100 / self.total_bytes
        return Progress(
            total_bytes=self.total_bytes,
            bytes_done=self.bytes_done,
            files_done=self.files_done,
            total_files=self.total_files,
            percent=max(0.0, min(100.0, percent)),
        )


@dataclass(frozen=True)
class SummaryMessage:
    snapshot_id: str | None
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs_new: int
    dirs_changed: int
    dirs_unmodified: int
    data_blobs: int
    tree_blobs: int
    data_added: int
    total_files_processed: int
    total_bytes_processed: int
    total_duration: float


@dataclass(frozen=True)
class ErrorMessage:
    error: str
    during: str
    item: str


@dataclass(frozen=True)
class VerboseStatusMessage:
    """Per-item line of `backup -v --json`; restic 0.14 also sends "scan_finished" this way."""

    action: str
    item: str
    data_size: int
    total_files: int


@dataclass(frozen=True)
class OtherMessage:
    """Valid JSON restic sent that we do not interpret (a newer message type, say)."""

    message_type: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class InvalidLine:
    """A line that is not a JSON object: plain text, or a line cut short."""

    text: str


Message = StatusMessage | SummaryMessage | ErrorMessage | VerboseStatusMessage | OtherMessage | InvalidLine


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error_text(value: Any) -> str:
    """restic marshals a Go error value: often {} or {"Op","Path","Err"}; 0.17+ {"message"}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("message"), str):
            return str(value["message"])
        op, path, errno = value.get("Op"), value.get("Path"), value.get("Err")
        if isinstance(op, str) and isinstance(path, str):
            reason = os.strerror(errno) if isinstance(errno, int) and not isinstance(errno, bool) else "failed"
            return f"{op} {path}: {reason}"
        if value:
            return json.dumps(value, sort_keys=True)
    return "unknown error"


def _load_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_line(line: str) -> Message:
    """Interpret one line of `restic backup --json` stdout or stderr."""
    data = _load_object(line)
    if data is None:
        return InvalidLine(line.rstrip("\r\n"))
    kind = _str(data.get("message_type"))
    if kind == "status" and "action" not in data:
        files = data.get("current_files")
        return StatusMessage(
            percent_done=_float(data.get("percent_done")),
            total_files=_int(data.get("total_files")),
            files_done=_int(data.get("files_done")),
            total_bytes=_int(data.get("total_bytes")),
            bytes_done=_int(data.get("bytes_done")),
            error_count=_int(data.get("error_count")),
            seconds_elapsed=_int(data.get("seconds_elapsed")),
            seconds_remaining=_int(data.get("seconds_remaining")),
            current_files=tuple(f for f in files if isinstance(f, str)) if isinstance(files, list) else (),
        )
    if kind in {"status", "verbose_status"}:
        return VerboseStatusMessage(
            action=_str(data.get("action")),
            item=_str(data.get("item")),
            data_size=_int(data.get("data_size")),
            total_files=_int(data.get("total_files")),
        )
    if kind == "summary":
        return SummaryMessage(
            snapshot_id=_str(data.get("snapshot_id")) or None,
            files_new=_int(data.get("files_new")),
            files_changed=_int(data.get("files_changed")),
            files_unmodified=_int(data.get("files_unmodified")),
            dirs_new=_int(data.get("dirs_new")),
            dirs_changed=_int(data.get("dirs_changed")),
            dirs_unmodified=_int(data.get("dirs_unmodified")),
            data_blobs=_int(data.get("data_blobs")),
            tree_blobs=_int(data.get("tree_blobs")),
            data_added=_int(data.get("data_added")),
            total_files_processed=_int(data.get("total_files_processed")),
            total_bytes_processed=_int(data.get("total_bytes_processed")),
            total_duration=_float(data.get("total_duration")),
        )
    if kind == "error":
        return ErrorMessage(
            error=_error_text(data.get("error")), during=_str(data.get("during")), item=_str(data.get("item"))
        )
    return OtherMessage(message_type=kind, data=data)


@dataclass(frozen=True)
class BackupSummary:
    """Result of one `restic backup`.

    `incomplete` is True when restic exited 3: the snapshot exists but some files could not be
    read; `unreadable_paths` names them relative to the backed-up directory (bounded list).
    """

    snapshot_id: str
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_added: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0
    incomplete: bool = False
    unreadable_paths: tuple[str, ...] = ()
    error_count: int = 0


@dataclass(frozen=True)
class RestoreSummary:
    snapshot_id: str
    total_bytes: int
    total_files: int
    duration: float


class BackupOutput:
    """Consumes the stdout and stderr lines of `restic backup --json` as they arrive.

    restic 0.14 writes status and summary to stdout and per-file errors as JSON to stderr.
    Errors are kept up to `max_errors` (a volume with a million unreadable files must not
    exhaust memory) while `error_count` keeps counting.
    """

    def __init__(
        self,
        progress: Callable[[Progress], None] | None = None,
        *,
        source_dir: str | None = None,
        max_errors: int = 1000,
    ) -> None:
        self._progress = progress
        self._roots = _roots(source_dir)
        self._max_errors = max_errors
        self.summary: SummaryMessage | None = None
        self.errors: list[ErrorMessage] = []
        self.error_count = 0
        self.last_progress: Progress | None = None

    def on_line(self, line: str) -> None:
        message = parse_line(line)
        if isinstance(message, StatusMessage):
            self.last_progress = message.to_progress()
            if self._progress is not None:
                self._progress(self.last_progress)
        elif isinstance(message, SummaryMessage):
            self.summary = message
        elif isinstance(message, ErrorMessage):
            self.error_count += 1
            if len(self.errors) < self._max_errors:
                self.errors.append(message)

    def unreadable_paths(self) -> tuple[str, ...]:
        paths: list[str] = []
        for err in self.errors:
            path = self._relative(err.item) if err.item else _path_from_error(err.error)
            if path and path not in paths:
                paths.append(path)
        return tuple(paths)

    def _relative(self, item: str) -> str:
        for root in self._roots:
            if item == root:
                return "."
            if item.startswith(root.rstrip("/") + "/"):
                return item[len(root.rstrip("/")) + 1 :]
        return item.lstrip("/") if self._roots else item

    def final_progress(self) -> Progress | None:
        """Progress at 100% from the summary, so a caller sees completion even between ticks."""
        if self.summary is None:
            return None
        s = self.summary
        return Progress(
            total_bytes=s.total_bytes_processed,
            bytes_done=s.total_bytes_processed,
            files_done=s.total_files_processed,
            total_files=s.total_files_processed,
            percent=100.0,
        )


def _roots(source_dir: str | None) -> tuple[str, ...]:
    if not source_dir:
        return ()
    absolute = os.path.normpath(Path(source_dir).absolute())
    real = str(Path(source_dir).resolve())
    return (absolute,) if absolute == real else (absolute, real)


def _path_from_error(text: str) -> str:
    match = re.match(r"\w+ (\S.*?): ", text)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    hostname: str
    paths: tuple[str, ...]
    tags: Mapping[str, str]
    raw_tags: tuple[str, ...]
    username: str = ""
    tree: str = ""
    parent: str | None = None


@dataclass(frozen=True)
class Key:
    id: str
    current: bool
    username: str
    hostname: str
    created: str


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: str) -> datetime:
    """RFC 3339 with up to nanoseconds (Go's format); Python keeps microseconds."""
    text = _FRACTION.sub(r"\1", value.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_tags(raw: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Ark-style `key=value` tags; a tag without "=" maps to an empty value."""
    tags: dict[str, str] = {}
    for tag in raw:
        key, _, value = tag.partition("=")
        tags[key] = value
    return tags


def _load_array(text: str, what: str) -> list[Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResticOutputError(f"restic {what} output is not valid JSON: {exc}: {text[:200]!r}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise ResticOutputError(f"restic {what} output is not a JSON array: {text[:200]!r}")
    return data


def parse_snapshots(text: str) -> list[Snapshot]:
    """Parse `restic snapshots --json` (one JSON array, oldest first)."""
    snapshots = []
    for item in _load_array(text, "snapshots"):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ResticOutputError(f"restic snapshots output has an entry without an id: {item!r}")
        raw_tags = tuple(t for t in item.get("tags") or [] if isinstance(t, str))
        snapshot_id = item["id"]
        try:
            when = parse_time(_str(item.get("time")))
        except ValueError as exc:
            raise ResticOutputError(f"snapshot {snapshot_id} has an unparseable time {item.get('time')!r}") from exc
        snapshots.append(
            Snapshot(
                id=snapshot_id,
                short_id=_str(item.get("short_id")) or snapshot_id[:8],
                time=when,
                hostname=_str(item.get("hostname")),
                paths=tuple(p for p in item.get("paths") or [] if isinstance(p, str)),
                tags=parse_tags(raw_tags),
                raw_tags=raw_tags,
                username=_str(item.get("username")),
                tree=_str(item.get("tree")),
                parent=_str(item.get("parent")) or None,
            )
        )
    return snapshots


def parse_keys(text: str) -> list[Key]:
    """Parse `restic key list --json`."""
    keys = []
    for item in _load_array(text, "key list"):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ResticOutputError(f"restic key list output has an entry without an id: {item!r}")
        keys.append(
            Key(
                id=item["id"],
                current=item.get("current") is True,
                username=_str(item.get("userName")),
                hostname=_str(item.get("hostName")),
                created=_str(item.get("created")),
            )
        )
    return keys


def parse_object(text: str, what: str) -> dict[str, Any]:
    """Parse a command that prints one JSON object (`stats --json`)."""
    for line in reversed(text.strip().splitlines()):
        data = _load_object(line)
        if data is not None:
            return data
    raise ResticOutputError(f"restic {what} printed no JSON object: {text[:200]!r}")


_INIT_ID = re.compile(r"created restic repository ([0-9a-f]+) at")


def parse_init(text: str) -> str:
    """Repository id from `restic init`; restic 0.14 ignores --json there, so it is in the text."""
    match = _INIT_ID.search(text)
    return match.group(1) if match else ""
