"""The controller harness: retries, requeues, conflicts, metrics, logging and shutdown (FakeClock)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from arkd.kube.clock import FakeClock
from arkd.kube.controller import Controller, ControllerMetrics, Done, RequeueAfter, Result
from arkd.kube.errors import Conflict
from arkd.kube.workqueue import WorkQueue


async def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Env:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = ControllerMetrics(self.registry)
        self.queue = WorkQueue(clock=self.clock)

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"controller": "test", **labels})
        return 0.0 if value is None else value

    @asynccontextmanager
    async def running(
        self, reconcile: Callable[[str], Awaitable[Result]], workers: int = 1, grace: float = 30.0
    ) -> AsyncIterator[Controller]:
        ctrl = Controller(
            "test",
            self.queue,
            reconcile,
            workers=workers,
            metrics=self.metrics,
            clock=self.clock,
            shutdown_grace=grace,
        )
        task = asyncio.create_task(ctrl.run())
        await settle()
        try:
            yield ctrl
        finally:
            task.cancel()
            await settle()
            # A test that left a reconcile hanging advances past the grace period.
            self.clock.advance(grace)
            await settle()
            assert task.done()


@pytest.fixture
def env() -> Env:
    return Env()


async def test_failing_reconcile_is_retried_with_backoff_until_done(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    async def reconcile(key: str) -> Result:
        calls.append(env.clock.now())
        if len(calls) <= 3:
            raise RuntimeError(f"transient failure {len(calls)}")
        return Done()

    caplog.set_level(logging.DEBUG, logger="arkd.kube.controller")
    async with env.running(reconcile):
        env.queue.add("ns/a")
        await settle()
        assert len(calls) == 1
        for backoff in (0.005, 0.01, 0.02):
            env.clock.advance(backoff / 2)
            await settle()
            assert len(calls) < 4 and calls[-1] < env.clock.now()  # not retried early
            before = len(calls)
            env.clock.advance(backoff / 2)
            await settle()
            assert len(calls) == before + 1
        assert len(calls) == 4
        # Done forgets the key's failures and nothing is scheduled any more.
        assert env.queue.num_requeues("ns/a") == 0
        env.clock.advance(5000)
        await settle()
        assert len(calls) == 4

    assert env.sample("arkd_controller_reconcile_total", result="error") == 3
    assert env.sample("arkd_controller_reconcile_total", result="success") == 1
    assert env.sample("arkd_controller_reconcile_errors_total") == 3
    assert env.sample("arkd_workqueue_retries_total") == 3
    assert env.sample("arkd_controller_reconcile_duration_seconds_count") == 4
    assert env.sample("arkd_controller_active_workers") == 0

    failures = [r for r in caplog.records if r.name == "arkd.kube.controller"]
    assert [r.getMessage() for r in failures] == ["reconcile failed"] * 3, "one line per failure"
    assert all(r.key == "ns/a" and r.controller == "test" for r in failures)  # type: ignore[attr-defined]
    assert "transient failure 2" in failures[1].error  # type: ignore[attr-defined]


async def test_done_does_not_requeue(env: Env) -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> Result:
        calls.append(key)
        return Done()

    async with env.running(reconcile, workers=2):
        env.queue.add("a")
        env.queue.add("b")
        await settle()
        env.clock.advance(10_000)
        await settle()
    assert sorted(calls) == ["a", "b"]
    assert env.sample("arkd_controller_reconcile_total", result="success") == 2
    assert env.sample("arkd_workqueue_retries_total") == 0


async def test_requeue_after_runs_again_at_that_time_without_backoff(env: Env) -> None:
    calls: list[float] = []

    async def reconcile(key: str) -> Result:
        calls.append(env.clock.now())
        return RequeueAfter(30) if len(calls) < 3 else Done()

    async with env.running(reconcile):
        env.queue.add("sched")
        await settle()
        env.clock.advance(29)
        await settle()
        assert len(calls) == 1
        env.clock.advance(1)
        await settle()
        env.clock.advance(30)
        await settle()
    assert [t - calls[0] for t in calls] == [0, 30, 60]
    assert env.sample("arkd_controller_reconcile_total", result="requeue_after") == 2
    assert env.queue.num_requeues("sched") == 0


async def test_conflict_requeues_quickly_and_is_not_logged_as_an_error(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def reconcile(key: str) -> Result:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Conflict(409, "Conflict", "the object has been modified; please apply your changes")
        return Done()

    caplog.set_level(logging.INFO, logger="arkd.kube.controller")
    async with env.running(reconcile):
        env.queue.add("ns/pvb")
        await settle()
        env.clock.advance(0.005)
        await settle()
        assert calls == 2
    assert env.sample("arkd_controller_reconcile_total", result="conflict") == 1
    assert env.sample("arkd_controller_reconcile_errors_total") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name == "arkd.kube.controller"]


async def test_wrong_return_value_is_reported_and_retried(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    async def reconcile(key: str) -> Result:
        return None  # type: ignore[return-value]

    async with env.running(reconcile):
        env.queue.add("k")
        await settle()
    assert env.sample("arkd_controller_reconcile_errors_total") == 1
    assert env.queue.num_requeues("k") == 1
    assert "return Done() or RequeueAfter" in caplog.records[0].error  # type: ignore[attr-defined]


async def test_one_key_is_never_reconciled_concurrently_but_keys_run_in_parallel(env: Env) -> None:
    running: dict[str, int] = {}
    max_per_key: dict[str, int] = {}
    release = asyncio.Event()
    runs: list[str] = []

    async def reconcile(key: str) -> Result:
        running[key] = running.get(key, 0) + 1
        max_per_key[key] = max(max_per_key.get(key, 0), running[key])
        runs.append(key)
        await release.wait()
        running[key] -= 1
        return Done()

    async with env.running(reconcile, workers=4):
        for key in ("a", "b", "c"):
            env.queue.add(key)
        await settle()
        assert env.sample("arkd_controller_active_workers") == 3
        env.queue.add("a")  # re-added while being reconciled
        for key in ("d", "e", "f"):
            env.queue.add(key)
        await settle()
        assert env.sample("arkd_workqueue_depth") == 2, "4 workers busy, e and f wait"
        release.set()
        await settle()
    assert max(max_per_key.values()) == 1
    assert sorted(runs) == ["a", "a", "b", "c", "d", "e", "f"]


async def test_cancel_lets_in_flight_reconciles_finish_within_grace(env: Env) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()
    finished: list[str] = []

    async def reconcile(key: str) -> Result:
        started.set()
        await finish.wait()
        finished.append(key)
        return Done()

    ctrl = Controller("test", env.queue, reconcile, workers=2, metrics=env.metrics, clock=env.clock)
    task = asyncio.create_task(ctrl.run())
    env.queue.add("busy")
    await started.wait()
    task.cancel()
    await settle()
    assert not task.done(), "run() must wait for the in-flight reconcile"
    assert env.queue.shutting_down
    finish.set()
    await settle()
    assert task.cancelled()
    assert finished == ["busy"]
    assert env.sample("arkd_controller_reconcile_total", result="success") == 1


async def test_cancel_cancels_reconciles_that_outlive_the_grace_period(env: Env) -> None:
    cancelled = asyncio.Event()

    async def reconcile(key: str) -> Result:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Done()

    ctrl = Controller("test", env.queue, reconcile, metrics=env.metrics, clock=env.clock, shutdown_grace=5)
    task = asyncio.create_task(ctrl.run())
    env.queue.add("stuck")
    await settle()
    task.cancel()
    await settle()
    env.clock.advance(4)
    await settle()
    assert not task.done()
    env.clock.advance(1)
    await settle()
    assert cancelled.is_set() and task.cancelled()
    assert env.sample("arkd_controller_active_workers") == 0
    assert env.sample("arkd_controller_reconcile_total", result="error") == 0


async def test_run_returns_when_the_queue_is_shut_down(env: Env) -> None:
    async def reconcile(key: str) -> Result:
        return Done()

    ctrl = Controller("test", env.queue, reconcile, workers=3, clock=env.clock)
    task = asyncio.create_task(ctrl.run())
    await settle()
    env.queue.shutdown()
    await settle()
    assert task.done() and task.exception() is None


def test_bad_settings_are_rejected(env: Env) -> None:
    async def reconcile(key: str) -> Result:
        return Done()

    with pytest.raises(ValueError, match="workers >= 1"):
        Controller("x", env.queue, reconcile, workers=0)
    with pytest.raises(ValueError, match="seconds >= 0"):
        RequeueAfter(-1)
