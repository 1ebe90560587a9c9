"""ResticRepository: the restic repository of one volume namespace (the object is named after it)."""

from __future__ import annotations

import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import RESTIC_REPOSITORIES, RESTIC_REPOSITORY_KIND, ResticRepositoryPhase
from arkd.api.meta import ArkModel, ArkObject, GoDuration, Time, duration_or_none, phase_schema

# arkd: weekly, as Velero settled on; Ark 0.9 pruned daily, which was costly and rarely useful.
DEFAULT_MAINTENANCE_FREQUENCY = datetime.timedelta(hours=168)

ResticRepositoryPhaseValue = Annotated[ResticRepositoryPhase | Literal[""], phase_schema(ResticRepositoryPhase)]


class ResticRepositorySpec(ArkModel):
    maintenance_frequency: GoDuration | None = Field(
        None, description="How often to check and prune, a Go duration (arkd default 168h)."
    )
    restic_identifier: str | None = Field(None, description="The restic --repo value; set by the server.")

    @property
    def maintenance_frequency_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.maintenance_frequency)


class ResticRepositoryStatus(ArkModel):
    phase: ResticRepositoryPhaseValue = ""
    message: str | None = None
    last_maintenance_time: Time | None = None


class ResticRepository(ArkObject):
    """The restic repository holding the pod volume snapshots of one namespace."""

    KIND: ClassVar[str] = RESTIC_REPOSITORY_KIND
    PLURAL: ClassVar[str] = RESTIC_REPOSITORIES

    spec: ResticRepositorySpec = Field(default_factory=ResticRepositorySpec)
    status: ResticRepositoryStatus = Field(default_factory=ResticRepositoryStatus)

    @property
    def phase(self) -> ResticRepositoryPhase:
        return ResticRepositoryPhase(self.status.phase or ResticRepositoryPhase.NEW)
