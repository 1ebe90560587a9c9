"""Leader election on a real coordination.k8s.io/v1 Lease with two (or three) candidates.

Durations are short (3s lease) so takeovers happen quickly; waits use generous timeouts and
assert on who leads, never on how long it took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from arkd.kube.client import KubeClient
from arkd.kube.leader import LeaderElector
from arkd.kube.resource import LEASES

FAST = {"lease_duration": 3, "renew_deadline": 2.0, "retry_period": 0.3}


class Candidate:
    """One elector plus a record of whether its leading work is running."""

    def __init__(self, kube: KubeClient, namespace: str, identity: str, **kwargs: object) -> None:
        self.elector = LeaderElector(kube, namespace, "arkd-test", identity, **{**FAST, **kwargs})  # type: ignore[arg-type]
        self.identity = identity
        self.working = False
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.work_cancelled = False
        self.task: asyncio.Task[None] | None = None

    async def work(self) -> None:
        self.working = True
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.work_cancelled = True
            raise
        finally:
            self.working = False

    def start(self) -> Candidate:
        self.task = asyncio.create_task(self.elector.run(self.work, self.stopped.set))
        return self

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


MakeCandidate = Callable[..., Candidate]


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def lease_spec(kube: KubeClient, namespace: str) -> dict[str, object]:
    spec: dict[str, object] = (await kube.get(LEASES, "arkd-test", namespace))["spec"]
    return spec


@pytest.fixture
async def candidates(kube: KubeClient, namespace: str) -> AsyncIterator[MakeCandidate]:
    made: list[Candidate] = []

    def make(identity: str, **kwargs: object) -> Candidate:
        made.append(Candidate(kube, namespace, identity, **kwargs))
        return made[-1]

    yield make
    for c in made:
        await c.stop()


async def test_exactly_one_of_two_candidates_leads(
    kube: KubeClient, namespace: str, candidates: MakeCandidate
) -> None:
    a, b = candidates("a").start(), candidates("b").start()
    await eventually(lambda: a.elector.is_leader or b.elector.is_leader)
    # Several renew periods later there is still exactly one leader, and it is the lease holder.
    for _ in range(10):
        await asyncio.sleep(FAST["retry_period"])
        leaders = [c for c in (a, b) if c.elector.is_leader]
        assert len(leaders) == 1
        assert [c for c in (a, b) if c.working] == leaders
    spec = await lease_spec(kube, namespace)
    assert spec["holderIdentity"] == leaders[0].identity
    assert spec["leaseDurationSeconds"] == FAST["lease_duration"]


async def test_a_leader_that_stops_renewing_is_replaced(
    kube: KubeClient, namespace: str, candidates: MakeCandidate
) -> None:
    a = candidates("a", release_on_cancel=False).start()
    await eventually(lambda: a.elector.is_leader)
    b = candidates("b").start()
    await asyncio.sleep(1)
    assert not b.elector.is_leader, "b must wait while a keeps renewing"
    before = await lease_spec(kube, namespace)

    await a.stop()  # a dies without releasing: the lease still names it until it expires
    assert (await lease_spec(kube, namespace))["holderIdentity"] == "a"

    await eventually(lambda: b.elector.is_leader)
    await b.started.wait()
    after = await lease_spec(kube, namespace)
    assert after["holderIdentity"] == "b"
    assert after["leaseTransitions"] == int(before["leaseTransitions"]) + 1  # type: ignore[call-overload]


async def test_release_on_shutdown_hands_over_without_waiting_for_expiry(
    kube: KubeClient, namespace: str, candidates: MakeCandidate
) -> None:
    # A 60s lease: if b leads within the 30s wait below, it was the release, not the expiry.
    slow = {"lease_duration": 60, "renew_deadline": 40.0, "retry_period": 0.3}
    a = candidates("a", **slow).start()
    await eventually(lambda: a.elector.is_leader)
    b = candidates("b", **slow).start()
    await asyncio.sleep(1)
    assert not b.elector.is_leader

    await a.stop()
    assert a.work_cancelled and a.stopped.is_set()
    await eventually(lambda: b.elector.is_leader, timeout=30)
    assert (await lease_spec(kube, namespace))["holderIdentity"] == "b"


async def test_a_released_lease_is_free_with_a_short_duration(
    kube: KubeClient, namespace: str, candidates: MakeCandidate
) -> None:
    a = candidates("a").start()
    await eventually(lambda: a.elector.is_leader)
    await a.stop()
    spec = await lease_spec(kube, namespace)
    assert spec["holderIdentity"] in ("", None)
    assert spec["leaseDurationSeconds"] == 1


async def test_a_leader_whose_lease_is_taken_steps_down(
    kube: KubeClient, namespace: str, candidates: MakeCandidate
) -> None:
    a = candidates("a").start()
    await eventually(lambda: a.elector.is_leader)
    await a.started.wait()
    # Another process writes itself into the lease (as a candidate would after a partition).
    await kube.patch(LEASES, "arkd-test", {"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60}},
                     namespace)
    await eventually(lambda: not a.elector.is_leader)
    assert a.work_cancelled
    assert a.stopped.is_set()
    assert a.task is not None
    await asyncio.wait_for(a.task, 30)  # run() returns after losing the lease
    assert (await lease_spec(kube, namespace))["holderIdentity"] == "intruder"


async def test_work_that_finishes_releases_the_lease(kube: KubeClient, namespace: str) -> None:
    elector = LeaderElector(kube, namespace, "arkd-test", "a", **FAST)  # type: ignore[arg-type]
    ran: list[bool] = []

    async def work() -> None:
        ran.append(elector.is_leader)

    await asyncio.wait_for(elector.run(work), 30)
    assert ran == [True]
    assert not elector.is_leader
    assert (await lease_spec(kube, namespace))["holderIdentity"] in ("", None)


async def test_a_failing_leader_callback_is_reraised_after_release(kube: KubeClient, namespace: str) -> None:
    elector = LeaderElector(kube, namespace, "arkd-test", "a", **FAST)  # type: ignore[arg-type]

    async def work() -> None:
        raise RuntimeError("controller crashed")

    with pytest.raises(RuntimeError, match="controller crashed"):
        await asyncio.wait_for(elector.run(work), 30)
    assert (await lease_spec(kube, namespace))["holderIdentity"] in ("", None)


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "greater than renew_deadline"),
        ({"lease_duration": 15, "renew_deadline": 2, "retry_period": 2}, "retry_period"),
        ({"lease_duration": 0}, "whole number of seconds"),
    ],
)
def test_inconsistent_timings_are_rejected(kwargs: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        LeaderElector(None, "ns", "lease", "me", **kwargs)  # type: ignore[arg-type]
