"""Completion futures for a Backup's pod volume backups: resolve when all are terminal, survive restarts,
and expose progress times for stall detection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from arkd.kube.cache import Cache
from arkd.kube.clock import FakeClock
from arkd.podvolume.tracker import PodVolumeTracker

LABEL = "ark.heptio.com/backup-uid"
Obj = dict[str, Any]
OnObj = Callable[[Obj], None]


class Feed:
    """Delivers objects to the tracker the way an informer does: cache first, then handlers."""

    def __init__(self) -> None:
        self.cache = Cache()
        self.handlers: list[tuple[OnObj, Callable[[Obj, Obj], None], OnObj]] = []

    def add_handler(self, on_add: Any = None, on_update: Any = None, on_delete: Any = None) -> None:
        self.handlers.append((on_add, on_update, on_delete))

    def put(self, obj: Obj) -> None:
        old = self.cache.upsert(obj)
        for on_add, on_update, _ in self.handlers:
            if old is None:
                on_add(obj)
            else:
                on_update(old, obj)

    def delete(self, obj: Obj) -> None:
        self.cache.delete(f"heptio-ark/{obj['metadata']['name']}")
        for _, _, on_delete in self.handlers:
            on_delete(obj)


def pvb(name: str, owner: str = "b1", phase: str = "", done: int | None = None) -> Obj:
    status: Obj = {"phase": phase}
    if done is not None:
        status["progress"] = {"totalBytes": 100, "bytesDone": done}
    return {
        "metadata": {"name": name, "namespace": "heptio-ark", "labels": {LABEL: owner}},
        "status": status,
    }


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_future_resolves_only_when_every_expected_object_is_terminal() -> None:
    feed = Feed()
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    fut = tracker.wait("b1", ["v1", "v2"])
    feed.put(pvb("v1", phase="InProgress"))
    feed.put(pvb("v2", phase="Completed"))
    feed.put(pvb("other", owner="b2", phase="Completed"))
    await settle()
    assert not fut.done()
    feed.put(pvb("v1", phase="Failed"))
    results = await asyncio.wait_for(fut, 1)
    assert {k: v["status"]["phase"] for k, v in results.items() if v} == {"v1": "Failed", "v2": "Completed"}


async def test_objects_not_expected_by_the_owner_do_not_block_it() -> None:
    feed = Feed()
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    feed.put(pvb("stray", phase="InProgress"))
    fut = tracker.wait("b1", ["v1"])
    feed.put(pvb("v1", phase="Completed"))
    assert set(await asyncio.wait_for(fut, 1)) == {"v1"}


async def test_seeded_from_cache_so_a_restarted_server_resumes() -> None:
    feed = Feed()
    feed.cache.upsert(pvb("v1", phase="Completed"))
    feed.cache.upsert(pvb("v2", phase="InProgress"))
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    assert {o["metadata"]["name"] for o in tracker.objects("b1")} == {"v1", "v2"}
    fut = tracker.wait("b1", ["v1", "v2"])
    await settle()
    assert not fut.done()
    feed.put(pvb("v2", phase="Completed"))
    assert len(await asyncio.wait_for(fut, 1)) == 2


async def test_already_terminal_objects_resolve_at_once() -> None:
    feed = Feed()
    feed.cache.upsert(pvb("v1", phase="Completed"))
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    assert tracker.wait("b1", ["v1"]).done()
    assert tracker.wait("b1", []).done()


async def test_deleted_object_resolves_as_none_instead_of_hanging() -> None:
    feed = Feed()
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    feed.put(pvb("v1", phase="InProgress"))
    feed.put(pvb("v2", phase="Completed"))
    fut = tracker.wait("b1", ["v1", "v2"])
    feed.delete(pvb("v1", phase="InProgress"))
    results = await asyncio.wait_for(fut, 1)
    assert results["v1"] is None and results["v2"] is not None


async def test_stall_detection_uses_bytes_done_changes() -> None:
    clock = FakeClock()
    feed = Feed()
    tracker = PodVolumeTracker(feed, LABEL, clock)
    tracker.wait("b1", ["v1", "v2", "unseen"])
    feed.put(pvb("v1", phase="InProgress", done=10))
    feed.put(pvb("v2", phase="InProgress", done=10))
    clock.advance(50)
    feed.put(pvb("v1", phase="InProgress", done=20))  # progress
    feed.put({**pvb("v2", phase="InProgress", done=10), "extra": 1})  # a change, but no progress
    clock.advance(20)
    assert tracker.stalled("b1", ["v1", "v2", "unseen"], 60) == ["unseen", "v2"]
    assert tracker.last_progress("v1") == clock.now() - 20
    assert tracker.get("v2") is not None and tracker.get("v2")["extra"] == 1  # type: ignore[index]
    feed.put(pvb("v2", phase="Failed", done=10))
    assert tracker.stalled("b1", ["v1", "v2", "unseen"], 60) == ["unseen"]


async def test_cancelled_waiter_is_dropped() -> None:
    feed = Feed()
    tracker = PodVolumeTracker(feed, LABEL, FakeClock())
    first = tracker.wait("b1", ["v1"])
    first.cancel()
    second = tracker.wait("b1", ["v1"])
    feed.put(pvb("v1", phase="Completed"))
    assert (await asyncio.wait_for(second, 1))["v1"] is not None
