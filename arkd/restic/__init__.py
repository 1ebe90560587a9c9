"""restic as a typed subprocess: argv building, --json parsing, a cancellable runner, repository ops.

No Kubernetes knowledge; imports nothing from arkd outside this package.
"""

from arkd.restic.command import Command
from arkd.restic.errors import Reason, ResticError, ResticOutputError, classify
from arkd.restic.messages import (
    BackupSummary,
    Key,
    Progress,
    RestoreSummary,
    Snapshot,
    parse_line,
)
from arkd.restic.repository import Repository
from arkd.restic.runner import ResticRunner, RunResult, cache_dir_from_env

__all__ = [
    "BackupSummary",
    "Command",
    "Key",
    "Progress",
    "Reason",
    "Repository",
    "ResticError",
    "ResticOutputError",
    "ResticRunner",
    "RestoreSummary",
    "RunResult",
    "Snapshot",
    "cache_dir_from_env",
    "classify",
    "parse_line",
]
