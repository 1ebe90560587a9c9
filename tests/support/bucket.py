"""A backup bucket for tests: what the Config names, and the same bucket opened for the test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arkd.controllers.resources import CONFIGS
from arkd.kube.client import KubeClient
from arkd.storage import ObjectStore

Obj = dict[str, Any]


@dataclass
class Bucket:
    provider: Obj  # Config backupStorageProvider
    store: ObjectStore  # the same bucket, for the test to write and read

    async def config(self, kube: KubeClient, namespace: str, **settings: Any) -> None:
        """Create Config `default` in `namespace` for this bucket, with top-level `settings`."""
        body = {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Config",
            "metadata": {"name": "default", "namespace": namespace},
            "backupStorageProvider": self.provider,
            **settings,
        }
        await kube.create(CONFIGS, body, namespace)
