"""Schedule: creates Backups from a template on a cron schedule."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.backup import BackupSpec
from arkd.api.constants import SCHEDULE_KIND, SCHEDULES, SchedulePhase
from arkd.api.meta import ArkModel, ArkObject, Time, phase_schema

SchedulePhaseValue = Annotated[SchedulePhase | Literal[""], phase_schema(SchedulePhase)]


class ScheduleSpec(ArkModel):
    template: BackupSpec = Field(default_factory=BackupSpec, description="Spec of each Backup created.")
    schedule: str | None = Field(None, description='Cron expression, e.g. "0 1 * * *".')


class ScheduleStatus(ArkModel):
    phase: SchedulePhaseValue = ""
    last_backup: Time | None = None
    validation_errors: list[str] | None = None


class Schedule(ArkObject):
    """Backups on a cron schedule, named <schedule>-<YYYYMMDDHHMMSS>."""

    KIND: ClassVar[str] = SCHEDULE_KIND
    PLURAL: ClassVar[str] = SCHEDULES

    spec: ScheduleSpec = Field(default_factory=ScheduleSpec)
    status: ScheduleStatus = Field(default_factory=ScheduleStatus)

    @property
    def phase(self) -> SchedulePhase:
        return SchedulePhase(self.status.phase or SchedulePhase.NEW)
