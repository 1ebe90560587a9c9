"""An in-process `ark server` for controller tests, wired like arkd/app.py, and small polling helpers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from arkd.config import ServerSettings
from arkd.controllers.config import ConfigHolder
from arkd.controllers.resources import CONFIGS
from arkd.controllers.runtime import Informers, ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock, RealClock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.events import EventRecorder
from arkd.kube.resource import EVENTS
from arkd.metrics import ServerMetrics
from arkd.storage import ObjectStore, make_store

T = TypeVar("T")
C = TypeVar("C")
Obj = dict[str, Any]


class Runnable(Protocol):
    async def run(self) -> None: ...


class ArkServer:
    """The controllers `make(ctx)` returns, on shared informers, until the block ends or `stop()`."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        make: Callable[[ServerContext], Sequence[Runnable]],
        *,
        clock: Clock | None = None,
        store_factory: Callable[[str, str, dict[str, str]], ObjectStore] = make_store,
    ) -> None:
        self.kube, self.namespace, self.make = kube, namespace, make
        self.clock: Clock = clock or RealClock()
        self.store_factory = store_factory
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ArkServer:
        self.informers = Informers(self.kube, RealClock())
        self.recorder = EventRecorder(self.kube, "ark-server")
        self.recorder.start()
        self.config = ConfigHolder(
            self.informers.get(CONFIGS, self.namespace), self.namespace, self.recorder, self.store_factory
        )
        registry = CollectorRegistry()
        self.ctx = ServerContext(
            client=self.kube,
            settings=ServerSettings(namespace=self.namespace, leader_elect=False),
            informers=self.informers,
            recorder=self.recorder,
            registry=registry,
            metrics=ServerMetrics.create(registry),
            controller_metrics=ControllerMetrics(registry),
            clock=self.clock,
            config=self.config,
        )
        self.controllers = list(self.make(self.ctx))
        self.informers.start()
        await self.informers.wait_synced(timeout=30)
        await asyncio.wait_for(self.config.wait_ready(), 30)
        self.tasks = [asyncio.create_task(c.run()) for c in self.controllers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop like a killed process would: cancel everything wherever it is."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        await self.informers.stop()
        await self.recorder.close()
        await self.config.close()

    def controller(self, kind: type[C]) -> C:
        """The one running controller of this type."""
        [found] = [c for c in self.controllers if isinstance(c, kind)]
        return found

    def metric(self, name: str) -> float:
        return float(self.ctx.registry.get_sample_value(name) or 0.0)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy; fail saying `what` did not happen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def run_cli(command: Any, *args: str) -> Result:
    """Run a CLI command in a thread (it runs its own event loop), as a user would."""
    return await asyncio.to_thread(CliRunner().invoke, command, list(args))


async def events_for(kube: KubeClient, namespace: str, name: str, reason: str) -> list[Obj]:
    events = await kube.list(EVENTS, namespace, field_selector=f"involvedObject.name={name}")
    return [e for e in events if e.get("reason") == reason]


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"
