"""The registry of ark.heptio.com/v1 kinds: kind, plural resource name and model."""

from __future__ import annotations

from dataclasses import dataclass

from arkd.api.backup import Backup
from arkd.api.config import Config
from arkd.api.constants import API_VERSION, GROUP, VERSION
from arkd.api.delete_backup_request import DeleteBackupRequest
from arkd.api.download_request import DownloadRequest
from arkd.api.meta import ArkObject
from arkd.api.podvolume import PodVolumeBackup, PodVolumeRestore
from arkd.api.repository import ResticRepository
from arkd.api.restore import Restore
from arkd.api.schedule import Schedule


@dataclass(frozen=True)
class ArkResource:
    kind: str
    plural: str
    model: type[ArkObject]

    group: str = GROUP
    version: str = VERSION
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return API_VERSION

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


def _resource(model: type[ArkObject]) -> ArkResource:
    return ArkResource(kind=model.KIND, plural=model.PLURAL, model=model)


# Ark 0.9's order (register.go), which is also the order of the generated CRDs.
KINDS: tuple[ArkResource, ...] = tuple(
    _resource(m)
    for m in (
        Backup,
        Schedule,
        Restore,
        Config,
        DownloadRequest,
        DeleteBackupRequest,
        PodVolumeBackup,
        PodVolumeRestore,
        ResticRepository,
    )
)


def resource_for_kind(kind: str) -> ArkResource:
    for res in KINDS:
        if res.kind == kind:
            return res
    known = ", ".join(r.kind for r in KINDS)
    raise KeyError(f"{kind!r} is not an ark.heptio.com/v1 kind; known kinds: {known}")
