"""Process settings for `ark server` and `ark restic server`, composed from flags and environment.

Cluster-side configuration (storage, periods, priorities) lives in the Config object `default`;
these are the per-process knobs a Deployment or DaemonSet sets on the command line.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from arkd.api.constants import DEFAULT_NAMESPACE

DEFAULT_RESTORE_HELPER_IMAGE = "arkd/ark:latest"


def default_namespace() -> str:
    """Ark's rule: the flag, else $HEPTIO_ARK_NAMESPACE, else the service account's, else heptio-ark."""
    env = os.environ.get("HEPTIO_ARK_NAMESPACE")
    if env:
        return env
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            ns = f.read().strip()
            if ns:
                return ns
    except OSError:
        pass
    return DEFAULT_NAMESPACE


class CommonSettings(BaseModel):
    kubeconfig: str | None = None
    namespace: str = Field(default_factory=default_namespace)
    metrics_address: str = ":8085"
    log_level: str = "info"
    log_format: str = "json"


class ServerSettings(CommonSettings):
    """`ark server`."""

    require_restic_keys: bool = False
    pod_volume_stall_timeout: float = 600.0
    restore_helper_image: str = DEFAULT_RESTORE_HELPER_IMAGE
    backup_workers: int = 2
    restore_workers: int = 2
    pod_concurrency: int = 16
    restore_concurrency: int = 16
    lease_name: str = "ark-server"
    leader_elect: bool = True
    identity: str = Field(default_factory=lambda: os.environ.get("POD_NAME") or os.uname().nodename)
    scratch_dir: str | None = Field(default_factory=lambda: os.environ.get("ARK_SCRATCH_DIR"))


class NodeAgentSettings(CommonSettings):
    """`ark restic server` (the DaemonSet)."""

    node_name: str = Field(default_factory=lambda: os.environ.get("NODE_NAME", ""))
    host_pods_dir: str = "/host_pods"
    max_concurrent: int = 4
    metrics_address: str = ":8086"
    scratch_dir: str | None = Field(default_factory=lambda: os.environ.get("ARK_SCRATCH_DIR"))
    progress_interval: float = 5.0
    lock_wait: float = 300.0
