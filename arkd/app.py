"""Composition root: the only module that wires clients, informers, queues and controllers.

`run_server` is `ark server` (the Deployment); `run_node_agent` is `ark restic server` (the
DaemonSet). Both stop on SIGTERM/SIGINT: no new work is taken, in-flight work checkpoints
(restic gets SIGINT and the objects stay resumable), the Lease is released, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable
from typing import Protocol

from prometheus_client import CollectorRegistry

from arkd.config import DEFAULT_RESTORE_HELPER_IMAGE, NodeAgentSettings, ServerSettings
from arkd.controllers.config import ConfigHolder
from arkd.controllers.resources import CONFIGS
from arkd.controllers.runtime import Informers, ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.errors import ApiError
from arkd.kube.events import EventRecorder
from arkd.kube.leader import LeaderElector
from arkd.kube.resource import PODS
from arkd.metrics import HttpEndpoint, ServerMetrics

log = logging.getLogger("arkd.app")


class Runnable(Protocol):
    async def run(self) -> None: ...


class LostLeadership(RuntimeError):
    """The Lease was lost: exit so the Deployment restarts us as a follower."""


def server_controllers(ctx: ServerContext) -> list[Runnable]:
    """Every controller of `ark server`, sharing one set of informers."""
    from arkd.controllers.backup import BackupController
    from arkd.controllers.deletion import DeletionController
    from arkd.controllers.download import DownloadRequestController
    from arkd.controllers.gc import GCController
    from arkd.controllers.restic_forget import ResticSnapshotForgetter
    from arkd.controllers.restic_repository import ResticRepositoryController
    from arkd.controllers.restore import RestoreController
    from arkd.controllers.schedule import ScheduleController
    from arkd.controllers.sync import BackupSyncController

    repositories = ResticRepositoryController(ctx)
    return [
        repositories,
        BackupController(ctx),
        RestoreController(ctx),
        ScheduleController(ctx),
        GCController(ctx),
        DeletionController(ctx, ResticSnapshotForgetter(ctx, repositories.locks)),
        BackupSyncController(ctx),
        DownloadRequestController(ctx),
    ]


async def own_image(client: KubeClient, settings: ServerSettings) -> str:
    """The image of this server's `ark` container, so `kubectl set image` also moves restic-wait."""
    pod = os.environ.get("POD_NAME")
    if pod:
        try:
            obj = await client.get(PODS, pod, settings.namespace)
            for container in obj.get("spec", {}).get("containers", []):
                if container.get("name") == "ark" and container.get("image"):
                    return str(container["image"])
        except ApiError as exc:
            log.warning("cannot read this server's pod for its image", extra={"pod": pod, "error": str(exc)})
    return DEFAULT_RESTORE_HELPER_IMAGE


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _run_until_stopped(main: Awaitable[None], stop: asyncio.Event) -> None:
    task = asyncio.ensure_future(main)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("shutting down: signal received")
    stopper.cancel()
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def run_server(settings: ServerSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    client = await KubeClient.connect(settings.kubeconfig)
    registry = CollectorRegistry()
    clock = RealClock()
    recorder = EventRecorder(client, "ark-server", clock=clock)
    recorder.start()
    state = {"leading": False, "synced": False}
    endpoint = HttpEndpoint(registry, settings.metrics_address, ready=lambda: state["synced"])
    metrics = ServerMetrics.create(registry)
    controller_metrics = ControllerMetrics(registry)

    async def lead() -> None:
        state["leading"] = True
        nonlocal settings
        if not settings.restore_helper_image:
            settings = settings.model_copy(update={"restore_helper_image": await own_image(client, settings)})
        informers = Informers(client, clock)
        config = ConfigHolder(informers.get(CONFIGS, settings.namespace), settings.namespace, recorder)
        ctx = ServerContext(
            client=client,
            settings=settings,
            informers=informers,
            recorder=recorder,
            registry=registry,
            metrics=metrics,
            controller_metrics=controller_metrics,
            clock=clock,
            config=config,
        )
        controllers = server_controllers(ctx)
        informers.start()
        try:
            await informers.wait_synced()
            state["synced"] = True
            log.info("caches synced; controllers starting", extra={"namespace": settings.namespace})
            async with asyncio.TaskGroup() as tg:
                for c in controllers:
                    tg.create_task(c.run())
        finally:
            state["synced"] = False
            await informers.stop()
            await config.close()

    async def main() -> None:
        if not settings.leader_elect:
            await lead()
            return
        elector = LeaderElector(client, settings.namespace, settings.lease_name, settings.identity, clock=clock)
        await elector.run(lead)
        if not stop.is_set():
            raise LostLeadership("lost the ark-server Lease; exiting so a new leader can take over")

    try:
        await endpoint.start()
        log.info("ark server starting", extra={"namespace": settings.namespace, "identity": settings.identity})
        await _run_until_stopped(main(), stop)
    finally:
        await recorder.close()
        await endpoint.stop()
        await client.close()
        log.info("ark server stopped")


async def run_node_agent(settings: NodeAgentSettings, stop: asyncio.Event | None = None) -> None:
    from arkd.controllers.node_agent import NodeAgent

    if not settings.node_name:
        raise ValueError("the node agent needs its node name: set NODE_NAME (downward API spec.nodeName)")
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    client = await KubeClient.connect(settings.kubeconfig)
    registry = CollectorRegistry()
    clock = RealClock()
    recorder = EventRecorder(client, "ark-restic", host=settings.node_name, clock=clock)
    recorder.start()
    agent = NodeAgent(client, settings, registry, recorder, clock)
    endpoint = HttpEndpoint(registry, settings.metrics_address, ready=lambda: agent.ready)
    try:
        await endpoint.start()
        log.info("ark restic server starting", extra={"node": settings.node_name, "namespace": settings.namespace})
        await _run_until_stopped(agent.run(), stop)
    finally:
        await recorder.close()
        await endpoint.stop()
        await client.close()
        log.info("ark restic server stopped", extra={"node": settings.node_name})
