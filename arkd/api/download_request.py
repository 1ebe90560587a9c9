"""DownloadRequest: asks the server for a signed URL to a backup's or restore's files."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from arkd.api.constants import (
    DOWNLOAD_REQUEST_KIND,
    DOWNLOAD_REQUESTS,
    DownloadRequestPhase,
    DownloadTargetKind,
)
from arkd.api.meta import ArkModel, ArkObject, Time, phase_schema

DownloadRequestPhaseValue = Annotated[DownloadRequestPhase | Literal[""], phase_schema(DownloadRequestPhase)]


class DownloadTarget(ArkModel):
    kind: DownloadTargetKind
    name: str = Field(description="Backup or Restore name.")


class DownloadRequestSpec(ArkModel):
    target: DownloadTarget


class DownloadRequestStatus(ArkModel):
    phase: DownloadRequestPhaseValue = ""
    download_url: str | None = Field(None, alias="downloadURL", description="Signed URL, valid 10 minutes.")
    expiration: Time | None = None


class DownloadRequest(ArkObject):
    """Asks the server for a signed URL to a backup's or restore's log, contents or results."""

    KIND: ClassVar[str] = DOWNLOAD_REQUEST_KIND
    PLURAL: ClassVar[str] = DOWNLOAD_REQUESTS

    spec: DownloadRequestSpec
    status: DownloadRequestStatus = Field(default_factory=DownloadRequestStatus)

    @property
    def phase(self) -> DownloadRequestPhase:
        return DownloadRequestPhase(self.status.phase or DownloadRequestPhase.NEW)
