"""The log of one backup or restore run, uploaded beside it (text lines, like Ark's logrus output).

The run's own messages are recorded directly; records of other arkd modules emitted inside the
run's log context (its `<subject>_uid` field) are captured while the handler is attached.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

import orjson

from arkd.api.meta import format_time
from arkd.log import record_fields

MAX_LOG_LINES = 100_000
_OWN = "_arkd_run_log"


def quote(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class RunLog(logging.Handler):
    """`subject` is "backup" or "restore"; `key` names the object in every line."""

    def __init__(
        self,
        subject: str,
        key: str,
        uid: str,
        wall: Callable[[], datetime.datetime],
        logger: logging.Logger,
    ) -> None:
        super().__init__(level=logging.DEBUG)
        self.subject = subject
        self.key = key
        self.uid = uid
        self._uid_field = f"{subject}_uid"
        self._wall = wall
        self._logger = logger
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self.dropped = 0

    def _append(self, level: str, msg: str, fields: dict[str, Any], when: datetime.datetime) -> None:
        if len(self.lines) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        parts = [f'time="{format_time(when.replace(microsecond=0))}"', f"level={level}", f"msg={quote(msg)}"]
        parts.append(f"{self.subject}={self.key}")
        parts.extend(f"{k}={quote(v)}" for k, v in fields.items() if k not in (self.subject, self._uid_field))
        self.lines.append(" ".join(parts))

    def _own(self, level: int, msg: str, fields: dict[str, Any], process_level: int | None = None) -> None:
        self._append(logging.getLevelName(level).lower(), msg, fields, self._wall())
        process_level = level if process_level is None else process_level
        if self._logger.isEnabledFor(process_level):
            self._logger.log(process_level, msg, extra={**fields, _OWN: self})

    def detail(self, msg: str, **fields: Any) -> None:
        """A per-item line: info in the run's own log, debug in the server's (thousands per run)."""
        self._own(logging.INFO, msg, fields, logging.DEBUG)

    def info(self, msg: str, **fields: Any) -> None:
        self._own(logging.INFO, msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.warnings.append(msg)
        self._own(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._own(logging.ERROR, msg, fields)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, _OWN, None) is not None:
            return  # a run's own line, already recorded
        try:
            fields = record_fields(record)
            if fields.get(self._uid_field) != self.uid:
                return
            for noise in ("controller", "key"):
                fields.pop(noise, None)
            when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            self._append(record.levelname.lower(), record.getMessage(), fields, when)
        except Exception:
            self.handleError(record)

    def attach(self) -> None:
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)

    def text(self) -> str:
        lines = list(self.lines)
        if self.dropped:
            lines.append(f'level=warning msg="{self.dropped} more log lines were dropped" {self.subject}={self.key}')
        return "\n".join(lines) + "\n"
