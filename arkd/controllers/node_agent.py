"""`ark restic server`: the node agent, one per node (DaemonSet).

Builds the informers the two node controllers read (PodVolumeBackups and PodVolumeRestores in the
Ark namespace; this node's pods; PersistentVolumeClaims; the restic key Secrets in the Ark
namespace), waits for them to sync, then runs the PodVolumeBackup and PodVolumeRestore controllers
until cancelled. Both share one semaphore: at most `max_concurrent` restic processes per node.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry

from arkd.api.constants import RESTIC_KEY_LABEL
from arkd.config import NodeAgentSettings
from arkd.controllers.pod_volume_backup import NodeContext, PodVolumeBackupController
from arkd.controllers.pod_volume_restore import PodVolumeRestoreController
from arkd.controllers.resources import PODVOLUMEBACKUPS, PODVOLUMERESTORES
from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.events import EventRecorder
from arkd.kube.informer import Informer
from arkd.kube.resource import PODS, PVCS, SECRETS
from arkd.log import bind
from arkd.metrics import PodVolumeMetrics
from arkd.podvolume.keys import RepositoryKeys
from arkd.restic.runner import ResticRunner, sweep_stale_sessions

log = logging.getLogger("arkd.controllers.node_agent")


def restic_cache_dir(scratch_dir: str | None) -> str | None:
    """Ark GA's restic cache location, `<scratch>/.cache/restic`, when a scratch directory is set."""
    return str(Path(scratch_dir) / ".cache" / "restic") if scratch_dir else None


class NodeAgent:
    def __init__(
        self,
        client: KubeClient,
        settings: NodeAgentSettings,
        registry: CollectorRegistry,
        recorder: EventRecorder,
        clock: Clock,
        *,
        runner: ResticRunner | None = None,
        controller_metrics: ControllerMetrics | None = None,
    ) -> None:
        if not settings.node_name:
            raise ValueError(
                "the node agent needs its node name: set NODE_NAME (downward API spec.nodeName) "
                "or --node-name"
            )
        if settings.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1 (got {settings.max_concurrent})")
        self.settings = settings
        self.recorder = recorder
        self.metrics = PodVolumeMetrics.create(registry)
        ns = settings.namespace
        self.pvbs = Informer(client, PODVOLUMEBACKUPS, ns, clock=clock)
        self.pvrs = Informer(client, PODVOLUMERESTORES, ns, clock=clock)
        on_node = f"spec.nodeName={settings.node_name}"
        self.pods = Informer(client, PODS, None, field_selector=on_node, clock=clock)
        self.pvcs = Informer(client, PVCS, None, clock=clock)
        self.secrets = Informer(client, SECRETS, ns, label_selector=RESTIC_KEY_LABEL, clock=clock)
        self.informers = (self.pvbs, self.pvrs, self.pods, self.pvcs, self.secrets)
        ctx = NodeContext(
            client=client,
            namespace=ns,
            node_name=settings.node_name,
            host_pods_dir=settings.host_pods_dir,
            pods=self.pods.cache,
            pvcs=self.pvcs.cache,
            keys=RepositoryKeys(client, ns, cache=self.secrets.cache),
            runner=runner or ResticRunner(cache_dir=restic_cache_dir(settings.scratch_dir)),
            recorder=recorder,
            clock=clock,
            metrics=self.metrics,
            semaphore=asyncio.Semaphore(settings.max_concurrent),
            progress_interval=settings.progress_interval,
            lock_wait=settings.lock_wait,
            controller_metrics=controller_metrics or ControllerMetrics(registry),
        )
        self.backups = PodVolumeBackupController(ctx, self.pvbs)
        self.restores = PodVolumeRestoreController(ctx, self.pvrs, self.pods, self.pvbs)
        self._running = False

    @property
    def ready(self) -> bool:
        """True once every informer has synced and the controllers run (for /readyz)."""
        return self._running and all(i.has_synced for i in self.informers)

    async def run(self) -> None:
        """Run until cancelled; on cancellation restic is interrupted and objects stay InProgress."""
        node = self.settings.node_name
        with bind(node=node):
            if not await asyncio.to_thread(Path(self.settings.host_pods_dir).is_dir):
                log.error(
                    "host pods directory missing: pod volumes cannot be found until the kubelet's pods "
                    "directory is mounted there",
                    extra={"host_pods_dir": self.settings.host_pods_dir},
                )
            # A killed predecessor may have left password files behind: remove them before any work.
            await asyncio.to_thread(sweep_stale_sessions, tempfile.gettempdir())
            self.recorder.start()
            try:
                async with asyncio.TaskGroup() as group:
                    for informer in self.informers:
                        group.create_task(informer.run(), name=f"informer:{informer.res.plural}")
                    await asyncio.gather(*(i.wait_synced() for i in self.informers))
                    log.info(
                        "node agent started",
                        extra={
                            "namespace": self.settings.namespace,
                            "max_concurrent": self.settings.max_concurrent,
                            "host_pods_dir": self.settings.host_pods_dir,
                        },
                    )
                    self._running = True
                    group.create_task(self.backups.run(), name="pod-volume-backup")
                    group.create_task(self.restores.run(), name="pod-volume-restore")
            finally:
                self._running = False
