"""The restic repository identifier (`--repo`) of a volume namespace, from the Ark Config (GA forms)."""

from __future__ import annotations

from arkd.api.config import Config

SUPPORTED_PROVIDERS = ("aws", "azure", "gcp", "local")


def _split_location(location: str) -> tuple[str, str]:
    bucket, _, prefix = location.partition("/")
    return bucket, prefix


def repo_identifier(config: Config, namespace: str) -> str:
    """The `restic --repo` value for the repository of `namespace`.

    aws: `s3:<s3Url>/<resticLocation>/<ns>` with config.s3Url, else
    `s3:s3-<region>.amazonaws.com/<resticLocation>/<ns>` (plain `s3.amazonaws.com` without a region
    or in us-east-1, whose endpoint has no dashed form); azure: `azure:<bucket>:/<prefix>/<ns>`;
    gcp: `gs:<bucket>:/<prefix>/<ns>`; local: `<resticLocation>/<ns>` (a directory).
    """
    provider = config.backup_storage_provider
    if not namespace:
        raise ValueError("a restic repository identifier needs the volume namespace, got an empty string")
    raw = (provider.restic_location or "").strip()
    # A local location is a path: keep its leading "/" (absolute); elsewhere it is bucket[/prefix].
    location = raw.rstrip("/") if provider.name == "local" else raw.strip("/")
    if not location:
        raise ValueError(
            "restic is disabled: Config backupStorageProvider.resticLocation is empty; set it to "
            '"bucket[/prefix]" (a bucket other than the backup bucket), or a directory for the local provider'
        )
    settings = provider.config or {}
    if provider.name == "aws":
        s3_url = settings.get("s3Url", "").rstrip("/")
        if s3_url:
            prefix = f"s3:{s3_url}/{location}"
        else:
            region = settings.get("region", "")
            host = f"s3-{region}.amazonaws.com" if region and region != "us-east-1" else "s3.amazonaws.com"
            prefix = f"s3:{host}/{location}"
    elif provider.name == "azure":
        bucket, path = _split_location(location)
        prefix = f"azure:{bucket}:/{path}"
    elif provider.name == "gcp":
        bucket, path = _split_location(location)
        prefix = f"gs:{bucket}:/{path}"
    elif provider.name == "local":
        prefix = location
    else:
        raise ValueError(
            f"restic repositories are not supported for backupStorageProvider.name {provider.name!r}; "
            f"use one of {', '.join(SUPPORTED_PROVIDERS)}"
        )
    return f"{prefix.rstrip('/')}/{namespace}"
