"""Config: the server's singleton settings object `default`, with fields at the top level (no spec)."""

from __future__ import annotations

import datetime
from typing import ClassVar

from pydantic import Field

from arkd.api.constants import CONFIG_KIND, CONFIGS
from arkd.api.duration import format_duration, parse_duration
from arkd.api.meta import ArkModel, ArkObject, GoDuration, duration_or_none

DEFAULT_BACKUP_SYNC_PERIOD = datetime.timedelta(minutes=60)
DEFAULT_GC_SYNC_PERIOD = datetime.timedelta(minutes=60)
MIN_GC_SYNC_PERIOD = datetime.timedelta(minutes=1)
DEFAULT_SCHEDULE_SYNC_PERIOD = datetime.timedelta(minutes=1)
# Ark 0.9 used 60m; Velero raised it to 4h because large volumes routinely took longer.
DEFAULT_POD_VOLUME_OPERATION_TIMEOUT = datetime.timedelta(hours=4)
# pods last, so restic restores run before controllers adopt the restored pods.
DEFAULT_RESOURCE_PRIORITIES = (
    "namespaces",
    "persistentvolumes",
    "persistentvolumeclaims",
    "secrets",
    "configmaps",
    "serviceaccounts",
    "limitranges",
    "pods",
)


class CloudProviderConfig(ArkModel):
    name: str = Field(description="Provider name: aws, gcp, azure, local, or a plugin.")
    config: dict[str, str] | None = Field(None, description="Provider settings, e.g. region, s3Url.")


class ObjectStorageProviderConfig(CloudProviderConfig):
    bucket: str = Field(description="Bucket holding the backups.")
    restic_location: str | None = Field(
        None,
        description='Where restic repositories live: "bucket[/prefix]" (a bucket other than `bucket`), '
        "or a directory for the local provider. Empty disables restic.",
    )


class Config(ArkObject):
    """Ark server settings; the server reads the Config named `default` in its namespace."""

    KIND: ClassVar[str] = CONFIG_KIND
    PLURAL: ClassVar[str] = CONFIGS

    persistent_volume_provider: CloudProviderConfig | None = None
    backup_storage_provider: ObjectStorageProviderConfig
    backup_sync_period: GoDuration | None = Field(None, description="Default 60m.")
    gc_sync_period: GoDuration | None = Field(None, description="Default 60m, minimum 1m.")
    schedule_sync_period: GoDuration | None = Field(None, description="Default 1m.")
    pod_volume_operation_timeout: GoDuration | None = Field(None, description="Default 4h (arkd; Ark used 60m).")
    resource_priorities: list[str] | None = Field(None, description="Resources restored first, in order.")
    restore_only_mode: bool = False

    @property
    def backup_sync_period_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.backup_sync_period)

    @property
    def gc_sync_period_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.gc_sync_period)

    @property
    def schedule_sync_period_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.schedule_sync_period)

    @property
    def pod_volume_operation_timeout_timedelta(self) -> datetime.timedelta | None:
        return duration_or_none(self.pod_volume_operation_timeout)


def _positive_or(value: str | None, default: datetime.timedelta) -> datetime.timedelta:
    # Go checks for the zero Duration; a negative one would panic its tickers, so treat it as unset.
    parsed = parse_duration(value) if value is not None else datetime.timedelta(0)
    return parsed if parsed > datetime.timedelta(0) else default


def apply_config_defaults(cfg: Config) -> Config:
    """A copy of `cfg` with Ark's defaults for unset (or non-positive) settings, all explicitly set."""
    out = cfg.model_copy(deep=True)
    out.backup_sync_period = format_duration(_positive_or(cfg.backup_sync_period, DEFAULT_BACKUP_SYNC_PERIOD))
    out.gc_sync_period = format_duration(
        max(_positive_or(cfg.gc_sync_period, DEFAULT_GC_SYNC_PERIOD), MIN_GC_SYNC_PERIOD)
    )
    out.schedule_sync_period = format_duration(_positive_or(cfg.schedule_sync_period, DEFAULT_SCHEDULE_SYNC_PERIOD))
    out.pod_volume_operation_timeout = format_duration(
        _positive_or(cfg.pod_volume_operation_timeout, DEFAULT_POD_VOLUME_OPERATION_TIMEOUT)
    )
    out.resource_priorities = list(cfg.resource_priorities or DEFAULT_RESOURCE_PRIORITIES)
    out.restore_only_mode = cfg.restore_only_mode
    return out
