"""WorkQueue semantics (client-go's), driven by a FakeClock so every delay is exact."""

from __future__ import annotations

import asyncio

import pytest

from arkd.kube.clock import FakeClock
from arkd.kube.workqueue import ExponentialBackoff, MaxOf, ShutDown, TokenBucket, WorkQueue


async def settle(rounds: int = 20) -> None:
    """Let woken tasks run to their next await."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def take_ready(q: WorkQueue) -> list[str]:
    out: list[str] = []
    while q.len():
        out.append(await q.get())
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_duplicate_adds_are_stored_once(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    for key in ["a", "b", "a", "a", "c", "b"]:
        q.add(key)
    assert q.len() == 3
    assert await take_ready(q) == ["a", "b", "c"]


async def test_a_key_is_never_handed_to_two_workers_at_once(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # changed again while worker 1 is still busy with it
    second = asyncio.create_task(q.get())
    await settle()
    assert not second.done(), "a second worker received a key that is still being processed"
    assert q.len() == 0
    q.done("a")
    await settle()
    assert second.done() and second.result() == "a"


async def test_readding_during_processing_runs_exactly_once_more(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add("a")
    key = await q.get()
    for _ in range(5):
        q.add(key)
    q.done(key)
    assert await take_ready(q) == ["a"]
    q.done("a")
    assert q.len() == 0 and q.num_processing() == 0


async def test_done_without_get_is_a_clear_error(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    with pytest.raises(ValueError, match="not being processed"):
        q.done("never-got")


def test_per_key_backoff_doubles_from_5ms_and_caps_at_1000s() -> None:
    backoff = ExponentialBackoff()
    delays = [backoff.when("k") for _ in range(20)]
    assert delays[:5] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08])
    assert delays[17] == pytest.approx(655.36)
    assert delays[18] == 1000.0 and delays[19] == 1000.0
    # Many failures later still capped, no overflow.
    for _ in range(2000):
        last = backoff.when("k")
    assert last == 1000.0
    assert backoff.when("other") == pytest.approx(0.005), "backoff is per key"
    backoff.forget("k")
    assert backoff.num_requeues("k") == 0
    assert backoff.when("k") == pytest.approx(0.005)


async def test_rate_limited_key_becomes_ready_only_after_its_backoff(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    expected = [0.005, 0.01, 0.02, 0.04]
    for n, delay in enumerate(expected, start=1):
        q.add_rate_limited("k")
        assert q.num_requeues("k") == n
        clock.advance(delay * 0.99)
        assert await take_ready(q) == []
        clock.advance(delay * 0.02)
        assert await take_ready(q) == ["k"]
        q.done("k")
    q.forget("k")
    assert q.num_requeues("k") == 0
    q.add_rate_limited("k")
    clock.advance(0.005)
    assert await take_ready(q) == ["k"], "forget() resets the backoff to 5ms"


async def test_overall_token_bucket_limits_retries_across_keys(clock: FakeClock) -> None:
    """Burst 100 then 10 per second: the 101st retry waits 100ms although its own backoff is 5ms."""
    q = WorkQueue(clock=clock)
    for i in range(102):
        q.add_rate_limited(f"k{i}")
    clock.advance(0.005)
    assert len(await take_ready(q)) == 100
    clock.advance(0.09)  # t = 95ms
    assert await take_ready(q) == []
    clock.advance(0.01)  # t = 105ms
    assert await take_ready(q) == ["k100"]
    clock.advance(0.1)
    assert await take_ready(q) == ["k101"]


def test_max_of_limiters_takes_the_longer_delay(clock: FakeClock) -> None:
    bucket = TokenBucket(qps=10, burst=1, clock=clock)
    backoff = ExponentialBackoff(base_delay=0.05)
    limiter = MaxOf(backoff, bucket)
    assert limiter.when("a") == pytest.approx(0.05)  # token available: backoff wins
    assert limiter.when("b") == pytest.approx(0.1)  # bucket in debt by one token: 100ms wins
    assert limiter.when("a") == pytest.approx(0.2)  # 2nd failure of a: backoff 0.1, bucket 0.2
    clock.advance(10)  # bucket refills to its burst
    assert limiter.when("a") == pytest.approx(0.2)  # backoff alone now: 0.05 * 2**2
    assert limiter.num_requeues("a") == 3


def test_bad_limiter_settings_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="qps > 0"):
        TokenBucket(qps=0)
    with pytest.raises(ValueError, match="base_delay"):
        ExponentialBackoff(base_delay=0)


async def test_add_after_delays_and_wakes_a_waiting_worker(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    getter = asyncio.create_task(q.get())
    q.add_after("a", 5)
    await settle()
    assert q.len() == 0 and q.num_waiting() == 1
    clock.advance(4.5)
    await settle()
    assert not getter.done()
    clock.advance(0.5)
    await settle()
    assert getter.result() == "a"


async def test_add_after_keeps_the_earliest_time_for_a_key(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 1)  # sooner wins
    q.add_after("a", 20)  # later does not postpone
    assert q.num_waiting() == 1
    clock.advance(1)
    assert await take_ready(q) == ["a"]
    q.done("a")
    clock.advance(30)
    assert await take_ready(q) == [], "the superseded delays must not deliver the key again"


async def test_add_after_zero_is_immediate(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add_after("a", 0)
    assert await take_ready(q) == ["a"]


async def test_delayed_key_that_is_already_queued_is_not_duplicated(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add("a")
    q.add_after("a", 1)
    clock.advance(1)
    assert await take_ready(q) == ["a"]


async def test_many_waiting_workers_each_get_one_delayed_key(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await settle()
    for key in ("x", "y", "z"):
        q.add_after(key, 2)
    clock.advance(2)
    await settle()
    assert sorted(g.result() for g in getters) == ["x", "y", "z"]


async def test_cancelled_woken_worker_passes_the_key_on(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await settle()
    q.add("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it can take the key
    await settle()
    assert first.cancelled()
    assert second.done() and second.result() == "a"


async def test_shutdown_wakes_waiting_workers_and_ignores_new_keys(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await settle()
    q.add_after("later", 1)
    q.shutdown()
    await settle()
    for g in getters:
        assert isinstance(g.exception(), ShutDown)
    q.add("a")
    assert q.len() == 0
    with pytest.raises(ShutDown):
        await q.get()
    assert q.shutting_down


async def test_shutdown_without_drain_stops_handing_out_queued_keys(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add("a")
    q.shutdown()
    with pytest.raises(ShutDown):
        await q.get()


async def test_shutdown_with_drain_hands_out_ready_keys_and_waits_for_done(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    q.add("a")
    q.add("b")
    in_flight = await q.get()
    drained = asyncio.create_task(q.shutdown_with_drain())
    await settle()
    assert await q.get() == "b"
    with pytest.raises(ShutDown):
        await q.get()
    assert not drained.done(), "drain must wait for keys still being processed"
    q.done(in_flight)
    q.done("b")
    await settle()
    assert drained.done()
