"""The informer against the real kube-apiserver: convergence under churn, broken watches, expired versions.

"Converged" means the cache holds exactly the objects (and resourceVersions) a fresh list returns, and
the stream of add/update/delete callbacks, replayed, yields that same state: nothing missed, nothing
deleted twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from arkd.kube.cache import object_key, resource_version
from arkd.kube.client import KubeClient
from arkd.kube.clock import FakeClock
from arkd.kube.errors import AlreadyExists, ConnectionFailed, Gone, NotFound, ServerError
from arkd.kube.informer import Informer
from arkd.kube.resource import CONFIGMAPS, Resource
from tests.envtest.harness import Envtest

T = TypeVar("T")
Obj = dict[str, Any]
LABEL = "arkd-test"
SELECTOR = f"{LABEL}=informer"
IN_FLIGHT = 32


def configmap(name: str, data: str = "1", labelled: bool = True) -> Obj:
    meta: Obj = {"name": name}
    if labelled:
        meta["labels"] = {LABEL: "informer"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"v": data}}


async def bounded(items: Iterable[T], fn: Callable[[T], Awaitable[Any]], limit: int = IN_FLIGHT) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))


class Recorder:
    """Replays the callbacks into its own view of the world and notes every inconsistency."""

    def __init__(self) -> None:
        self.live: dict[str, Obj] = {}
        self.added: Counter[str] = Counter()  # by uid
        self.deleted: Counter[str] = Counter()  # by uid
        self.updates: list[tuple[Obj, Obj]] = []
        self.problems: list[str] = []

    def on_add(self, obj: Obj) -> None:
        key = object_key(obj)
        if key in self.live:
            self.problems.append(f"add of {key} which was never deleted")
        self.live[key] = obj
        self.added[obj["metadata"]["uid"]] += 1

    def on_update(self, old: Obj, new: Obj) -> None:
        key = object_key(new)
        if key not in self.live:
            self.problems.append(f"update of {key} which was never added")
        elif self.live[key]["metadata"]["uid"] != new["metadata"]["uid"]:
            self.problems.append(f"update of {key} across a delete and re-create")
        self.live[key] = new
        self.updates.append((old, new))

    def on_delete(self, obj: Obj) -> None:
        key = object_key(obj)
        if self.live.pop(key, None) is None:
            self.problems.append(f"delete of {key} which was not live")
        self.deleted[obj["metadata"]["uid"]] += 1

    def versions(self) -> dict[str, str]:
        return {k: resource_version(o) for k, o in self.live.items()}


def watch(informer: Informer, recorder: Recorder) -> None:
    informer.add_handler(recorder.on_add, recorder.on_update, recorder.on_delete)


async def converged(
    informer: Informer, kube: KubeClient, namespace: str, timeout: float = 90
) -> dict[str, str]:
    """Wait (bounded) until the cache equals a fresh list; returns key -> resourceVersion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        fresh = {
            object_key(o): resource_version(o)
            for o in await kube.list(
                CONFIGMAPS,
                namespace,
                label_selector=informer.label_selector,
                field_selector=informer.field_selector,
            )
        }
        cached = {object_key(o): resource_version(o) for o in informer.cache.list()}
        if cached == fresh:
            return fresh
        if loop.time() > deadline:
            missing = sorted(set(fresh) - set(cached))[:5]
            extra = sorted(set(cached) - set(fresh))[:5]
            stale = sorted(k for k in set(fresh) & set(cached) if fresh[k] != cached[k])[:5]
            raise AssertionError(f"cache did not converge: missing {missing}, extra {extra}, stale {stale}")
        await asyncio.sleep(0.1)


async def persist(op: Callable[[], Awaitable[T]]) -> T | None:
    """Run an API call until the apiserver answers it (it may be restarting); NotFound counts as done."""
    for _ in range(400):
        try:
            return await op()
        except NotFound:
            return None
        except (ConnectionFailed, ServerError):
            await asyncio.sleep(0.25)
    raise AssertionError("the apiserver did not come back within 100s")


async def create(kube: KubeClient, namespace: str, body: Obj) -> Obj:
    async def attempt() -> Obj:
        try:
            return await kube.create(CONFIGMAPS, body, namespace)
        except AlreadyExists:
            # An earlier attempt landed but its answer was lost in the restart.
            return await kube.get(CONFIGMAPS, body["metadata"]["name"], namespace)

    result = await persist(attempt)
    assert result is not None
    return result


async def delete(kube: KubeClient, namespace: str, name: str) -> None:
    await persist(lambda: kube.delete(CONFIGMAPS, name, namespace))


async def update(kube: KubeClient, namespace: str, name: str, data: str) -> Obj:
    result = await persist(lambda: kube.patch(CONFIGMAPS, name, {"data": {"v": data}}, namespace))
    assert result is not None
    return result


async def start(informer: Informer) -> asyncio.Task[None]:
    task = asyncio.create_task(informer.run())
    assert await informer.wait_synced(timeout=60), "informer did not sync"
    return task


async def stop(task: asyncio.Task[None]) -> None:
    assert not task.done(), f"informer died: {task.exception() if not task.cancelled() else 'cancelled'}"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def assert_consistent(recorder: Recorder, informer: Informer, final: dict[str, str]) -> None:
    assert recorder.problems == []
    assert recorder.versions() == final, "replaying the callbacks does not give the cluster's state"
    assert {k: resource_version(o) for k, o in ((object_key(o), o) for o in informer.cache.list())} == final


async def test_cache_converges_through_1000_creates_updates_and_deletes(
    kube: KubeClient, namespace: str
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace, label_selector=SELECTOR)
    label_index = informer.cache.add_label_index(LABEL)
    recorder = Recorder()
    watch(informer, recorder)
    task = await start(informer)

    await kube.create(CONFIGMAPS, configmap("outsider", labelled=False), namespace)
    names = [f"cm-{i:04d}" for i in range(1000)]
    created = await bounded(names, lambda n: kube.create(CONFIGMAPS, configmap(n), namespace))
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in created}
    await bounded(names, lambda n: kube.patch(CONFIGMAPS, n, {"data": {"v": "2"}}, namespace))
    doomed = names[::2]
    await bounded(doomed, lambda n: kube.delete(CONFIGMAPS, n, namespace))

    final = await converged(informer, kube, namespace)
    await stop(task)

    survivors = sorted(names[1::2])
    assert sorted(final) == [f"{namespace}/{n}" for n in survivors]
    assert all(informer.cache.get(k)["data"] == {"v": "2"} for k in final)  # type: ignore[index]
    assert len(informer.cache.by_index("namespace", namespace)) == 500
    assert len(informer.cache.by_index(label_index, "informer")) == 500
    assert informer.cache.get(f"{namespace}/outsider") is None, "the label selector was not applied"
    assert_consistent(recorder, informer, final)
    assert recorder.added == Counter(uids.values()), "every created object was added exactly once"
    assert recorder.deleted == Counter(uids[n] for n in doomed), (
        "every deleted object was deleted exactly once"
    )
    assert len([u for u in recorder.updates if u[1]["data"] == {"v": "2"}]) >= 500
    assert informer.list_count == 1, "a healthy watch carried every change without re-listing"


async def test_cache_converges_across_an_apiserver_restart(
    envtest: Envtest, kube: KubeClient, namespace: str
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace, label_selector=SELECTOR)
    recorder = Recorder()
    watch(informer, recorder)
    task = await start(informer)

    names = [f"cm-{i:03d}" for i in range(300)]
    uids = {
        o["metadata"]["name"]: o["metadata"]["uid"]
        for o in await bounded(names, lambda n: create(kube, namespace, configmap(n)))
    }
    await converged(informer, kube, namespace)

    # Deletes race the apiserver going down; more changes land right after it is back, while the
    # informer is still reconnecting.
    restart = asyncio.create_task(asyncio.to_thread(envtest.restart_apiserver))
    await bounded(names[:50], lambda n: delete(kube, namespace, n))
    await restart
    await bounded(names[50:150], lambda n: delete(kube, namespace, n))
    new = [f"new-{i:03d}" for i in range(100)]
    uids.update(
        {
            o["metadata"]["name"]: o["metadata"]["uid"]
            for o in await bounded(new, lambda n: create(kube, namespace, configmap(n)))
        }
    )
    await bounded(names[150:200], lambda n: update(kube, namespace, n, "after-restart"))

    final = await converged(informer, kube, namespace)
    await stop(task)

    assert sorted(final) == sorted(f"{namespace}/{n}" for n in names[150:] + new)
    assert_consistent(recorder, informer, final)
    assert recorder.deleted == Counter(uids[n] for n in names[:150]), "no delete missed or repeated"
    assert recorder.added == Counter(uids.values())
    assert all(recorder.live[f"{namespace}/{n}"]["data"] == {"v": "after-restart"} for n in names[150:200])


class StaleResume:
    """The real client, but the next watch can be held back (the informer is "disconnected") and then
    made to resume from a resourceVersion the apiserver no longer has, so it really answers 410 Gone."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        self.stale_rv: str | None = None
        self.gone = 0

    async def list_page(self, res: Resource, namespace: str | None = None, **kw: Any) -> Obj:
        return await self.kube.list_page(res, namespace, **kw)

    def watch(
        self, res: Resource, namespace: str | None = None, *, resource_version: str, **kw: Any
    ) -> AsyncIterator[Obj]:
        return self._watch(res, namespace, resource_version, kw)

    async def _watch(
        self, res: Resource, namespace: str | None, rv: str, kw: dict[str, Any]
    ) -> AsyncIterator[Obj]:
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
            self.hold = None
        if self.stale_rv is not None:
            rv, self.stale_rv = self.stale_rv, None
        try:
            async with self.kube.watch(res, namespace, resource_version=rv, **kw) as stream:
                async for event in stream:
                    yield event
        except Gone:
            self.gone += 1
            raise


async def test_expired_resource_version_relists_and_reports_what_was_missed(
    kube: KubeClient, namespace: str
) -> None:
    client = StaleResume(kube)
    # Short server-side watch timeouts make the informer resume from its resourceVersion often.
    informer = Informer(client, CONFIGMAPS, namespace, label_selector=SELECTOR, watch_timeout=1)
    recorder = Recorder()
    watch(informer, recorder)
    task = await start(informer)

    names = [f"cm-{i:03d}" for i in range(200)]
    uids = {
        o["metadata"]["name"]: o["metadata"]["uid"]
        for o in await bounded(names, lambda n: kube.create(CONFIGMAPS, configmap(n), namespace))
    }
    await converged(informer, kube, namespace)

    # Disconnect: the next watch waits; change things the informer cannot see.
    client.hold = asyncio.Event()
    await asyncio.wait_for(client.held.wait(), 30)
    await bounded(names[:100], lambda n: kube.delete(CONFIGMAPS, n, namespace))
    await bounded(names[100:125], lambda n: kube.patch(CONFIGMAPS, n, {"data": {"v": "missed"}}, namespace))
    new = [f"new-{i:03d}" for i in range(50)]
    uids.update(
        {
            o["metadata"]["name"]: o["metadata"]["uid"]
            for o in await bounded(new, lambda n: kube.create(CONFIGMAPS, configmap(n), namespace))
        }
    )
    # Reconnect from a resourceVersion older than anything the apiserver's watch cache holds.
    client.stale_rv = "1"
    client.hold.set()

    final = await converged(informer, kube, namespace)
    await stop(task)

    assert client.gone >= 1, "the apiserver did not answer 410 Gone to the expired resourceVersion"
    assert informer.list_count >= 2
    assert sorted(final) == sorted(f"{namespace}/{n}" for n in names[100:] + new)
    assert_consistent(recorder, informer, final)
    assert recorder.deleted == Counter(uids[n] for n in names[:100]), (
        "deletes while disconnected were reported"
    )
    assert recorder.added == Counter(uids.values())
    changed = {object_key(new) for old, new in recorder.updates if new["data"] == {"v": "missed"}}
    assert changed == {f"{namespace}/{n}" for n in names[100:125]}


async def test_field_selector_limits_what_is_cached(kube: KubeClient, namespace: str) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace, field_selector="metadata.name=wanted")
    recorder = Recorder()
    watch(informer, recorder)
    task = await start(informer)
    for name in ("wanted", "other-1", "other-2"):
        await kube.create(CONFIGMAPS, configmap(name), namespace)
    await kube.delete(CONFIGMAPS, "wanted", namespace)
    await kube.create(CONFIGMAPS, configmap("wanted", data="again"), namespace)
    final = await converged(informer, kube, namespace)
    await stop(task)
    assert list(final) == [f"{namespace}/wanted"]
    assert_consistent(recorder, informer, final)
    assert sum(recorder.deleted.values()) == 1 and sum(recorder.added.values()) == 2


async def test_failing_handlers_are_isolated_and_late_handlers_get_the_cache(
    kube: KubeClient, namespace: str
) -> None:
    clock = FakeClock()
    informer = Informer(kube, CONFIGMAPS, namespace, label_selector=SELECTOR, resync_period=60, clock=clock)

    def explode(*objs: Obj) -> None:
        raise RuntimeError("handler bug")

    informer.add_handler(explode, explode, explode)
    early = Recorder()
    watch(informer, early)
    task = await start(informer)
    for i in range(5):
        await kube.create(CONFIGMAPS, configmap(f"cm-{i}"), namespace)
    await kube.delete(CONFIGMAPS, "cm-0", namespace)
    final = await converged(informer, kube, namespace)
    assert_consistent(early, informer, final)

    late = Recorder()
    watch(informer, late)  # registered after sync: first receives an add per cached object
    assert late.versions() == final

    # Periodic resync re-delivers every cached object as an update with old == new.
    before = len(late.updates)
    clock.advance(60)
    for _ in range(20):
        await asyncio.sleep(0)
    resynced = late.updates[before:]
    assert sorted(object_key(new) for _, new in resynced) == sorted(final)
    assert all(old is new for old, new in resynced)
    await stop(task)
