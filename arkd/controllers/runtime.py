"""What every server-side controller is given: one shared set of informers and the process services."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from arkd.config import ServerSettings
from arkd.controllers.config import ConfigHolder
from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.events import EventRecorder
from arkd.kube.informer import Informer
from arkd.kube.resource import Resource
from arkd.metrics import ServerMetrics


class Informers:
    """One informer per (resource, namespace, selectors), shared by every controller that asks."""

    def __init__(self, client: KubeClient, clock: Clock | None = None) -> None:
        self.client = client
        self.clock = clock
        self._informers: dict[tuple[Resource, str | None, str | None, str | None], Informer] = {}
        self._started: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def get(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        key = (res, namespace, label_selector, field_selector)
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(
                self.client,
                res,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                clock=self.clock,
            )
            self._informers[key] = informer
            if self._tasks:  # created after start(): run it too
                self._start(informer)
        return informer

    def _start(self, informer: Informer) -> None:
        if id(informer) in self._started:
            return
        self._started.add(id(informer))
        self._tasks.append(asyncio.create_task(informer.run(), name=f"informer:{informer.res}"))

    def start(self) -> None:
        for informer in list(self._informers.values()):
            self._start(informer)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        results = await asyncio.gather(*(i.wait_synced(timeout) for i in self._informers.values()))
        return all(results)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._started.clear()


@dataclass
class ServerContext:
    client: KubeClient
    settings: ServerSettings
    informers: Informers
    recorder: EventRecorder
    registry: CollectorRegistry
    metrics: ServerMetrics
    controller_metrics: ControllerMetrics
    clock: Clock
    config: ConfigHolder

    @property
    def namespace(self) -> str:
        return self.settings.namespace
