"""The controller harness: N workers take keys from a WorkQueue and call a reconcile function.

Backoff lives in the queue only (DESIGN convention 4). reconcile(key) returns Done() or
RequeueAfter(seconds), or raises: an exception retries with rate-limited backoff and is logged once
here; a Conflict (409) is normal under optimistic concurrency, so it retries quickly and quietly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from arkd.kube.clock import Clock, RealClock
from arkd.kube.errors import Conflict
from arkd.kube.workqueue import ShutDown, WorkQueue
from arkd.log import bind

log = logging.getLogger("arkd.kube.controller")


@dataclass(frozen=True)
class Done:
    """Reconciled; nothing to do until the key is added again."""


@dataclass(frozen=True)
class RequeueAfter:
    """Reconciled for now; look again after `seconds` (e.g. a schedule's next run, a TTL expiry)."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"RequeueAfter needs seconds >= 0 (got {self.seconds})")


Result = Done | RequeueAfter
Reconcile = Callable[[str], Awaitable[Result]]

# Values of the `result` label of reconcile_total.
SUCCESS = "success"
REQUEUE_AFTER = "requeue_after"
CONFLICT = "conflict"
ERROR = "error"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControllerMetrics:
    """Controller and queue metrics on an injected registry; one instance serves many controllers."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "arkd") -> None:
        labels = ["controller"]
        self.reconcile_total = Counter(
            "controller_reconcile_total",
            "Reconciles by result (success, requeue_after, conflict, error).",
            [*labels, "result"],
            namespace=namespace,
            registry=registry,
        )
        self.reconcile_errors_total = Counter(
            "controller_reconcile_errors_total",
            "Reconciles that raised an error (conflicts excluded).",
            labels,
            namespace=namespace,
            registry=registry,
        )
        self.reconcile_duration_seconds = Histogram(
            "controller_reconcile_duration_seconds",
            "Time spent in one reconcile call.",
            labels,
            namespace=namespace,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.queue_depth = Gauge(
            "workqueue_depth",
            "Keys ready to be reconciled.",
            labels,
            namespace=namespace,
            registry=registry,
        )
        self.retries_total = Counter(
            "workqueue_retries_total",
            "Keys re-queued with rate-limited backoff after a failed reconcile.",
            labels,
            namespace=namespace,
            registry=registry,
        )
        self.active_workers = Gauge(
            "controller_active_workers",
            "Workers currently running a reconcile.",
            labels,
            namespace=namespace,
            registry=registry,
        )


class Controller:
    def __init__(
        self,
        name: str,
        queue: WorkQueue,
        reconcile: Reconcile,
        *,
        workers: int = 1,
        metrics: ControllerMetrics | None = None,
        clock: Clock | None = None,
        shutdown_grace: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"controller {name!r} needs workers >= 1 (got {workers})")
        self.name = name
        self.queue = queue
        self.reconcile = reconcile
        self.workers = workers
        self.metrics = metrics
        self._clock = clock or RealClock()
        self.shutdown_grace = shutdown_grace

    async def run(self) -> None:
        """Run the workers until cancelled (or until the queue is shut down elsewhere).

        On cancellation the queue is shut down, so idle workers exit at once; reconciles in flight
        get `shutdown_grace` seconds to finish and are cancelled after that.
        """
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set_function(self.queue.len)
        tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(self.workers)
        ]
        try:
            # asyncio.wait, unlike gather, does not cancel the workers when run() itself is cancelled.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.queue.shutdown()
            await self._stop(tasks)
        for task in tasks:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        pending: set[asyncio.Future[None]] = {t for t in tasks if not t.done()}
        timer = asyncio.ensure_future(self._clock.sleep(self.shutdown_grace))
        try:
            while pending and not timer.done():
                _, pending = await asyncio.wait({*pending, timer}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(timer)
        finally:
            # Past the grace period (or cancelled again while waiting): cancel what is still running.
            timer.cancel()
            for task in tasks:
                task.cancel()
            # Collect every worker's outcome so none is left as an un-retrieved exception.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                await self.process(key)
            finally:
                self.queue.done(key)

    async def process(self, key: str) -> None:
        """Reconcile one key and decide what the queue does with it next."""
        metrics = self.metrics
        if metrics is not None:
            metrics.active_workers.labels(self.name).inc()
        start = self._clock.now()
        result_label: str | None = None  # stays None when the reconcile is cancelled (shutdown)
        try:
            with bind(controller=self.name, key=key):
                result = await self.reconcile(key)
            if isinstance(result, Done):
                self.queue.forget(key)
                result_label = SUCCESS
            elif isinstance(result, RequeueAfter):
                self.queue.forget(key)
                self.queue.add_after(key, result.seconds)
                result_label = REQUEUE_AFTER
            else:
                raise TypeError(
                    f"reconcile of controller {self.name!r} returned {result!r}; "
                    "return Done() or RequeueAfter(seconds), or raise to retry"
                )
        except Conflict as exc:
            result_label = CONFLICT
            self._retry(key)
            log.debug(
                "reconcile conflict, requeued",
                extra={"controller": self.name, "key": key, "error": str(exc)},
            )
        except Exception as exc:
            result_label = ERROR
            self._retry(key)
            if metrics is not None:
                metrics.reconcile_errors_total.labels(self.name).inc()
            log.error(
                "reconcile failed",
                exc_info=True,
                extra={
                    "controller": self.name,
                    "key": key,
                    "error": f"{type(exc).__name__}: {exc}",
                    "requeues": self.queue.num_requeues(key),
                },
            )
        finally:
            if metrics is not None:
                metrics.active_workers.labels(self.name).dec()
                if result_label is not None:
                    metrics.reconcile_duration_seconds.labels(self.name).observe(self._clock.now() - start)
                    metrics.reconcile_total.labels(self.name, result_label).inc()

    def _retry(self, key: str) -> None:
        self.queue.add_rate_limited(key)
        if self.metrics is not None:
            self.metrics.retries_total.labels(self.name).inc()
