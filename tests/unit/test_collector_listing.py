"""How the backup collector talks to the apiserver: pages fetched ahead, listings started ahead,
items still in Ark's walk order, nothing left running when a backup stops early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from arkd.backup.collector import BackupCollector, KubeLister
from arkd.backup.filters import IncludesExcludes
from arkd.kube.errors import Gone
from arkd.kube.resource import Resource


def resource(plural: str, kind: str, namespaced: bool = True) -> Resource:
    return Resource(group="", version="v1", plural=plural, kind=kind, namespaced=namespaced, verbs=("list",))


CONFIGMAPS = resource("configmaps", "ConfigMap")
SECRETS = resource("secrets", "Secret")


def cm(name: str, ns: str = "app") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}}


class SlowPages:
    """A `PageSource` whose answers take `delay` seconds and that records what was in flight."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]], page_size: int, delay: float = 0.01) -> None:
        self.objects = objects
        self.page_size = page_size
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, str | None]] = []
        self.cancelled = 0
        self.expire_tokens = False

    async def list_page(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append((res.plural, continue_))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if continue_ and self.expire_tokens:
            raise Gone(410, "Expired", "The provided continue parameter is too old")
        items = self.objects.get(res.plural, [])
        start = int(continue_ or 0)
        end = len(items) if limit is None else start + limit
        meta = {"continue": str(end)} if end < len(items) else {}
        return {"items": items[start:end], "metadata": meta}


async def pages_of(lister: KubeLister, res: Resource) -> list[list[str]]:
    return [[o["metadata"]["name"] for o in page] async for page in lister.list_pages(res, "app", None)]


async def test_the_next_page_is_fetched_while_the_current_one_is_handled() -> None:
    source = SlowPages({"configmaps": [cm(f"c{i}") for i in range(5)]}, page_size=2)
    lister = KubeLister(source, page_size=2)
    seen: list[list[str]] = []
    async for page in lister.list_pages(CONFIGMAPS, "app", None):
        seen.append([o["metadata"]["name"] for o in page])
        # The caller is busy with this page; the following one is already on its way.
        await asyncio.sleep(0)
        assert source.in_flight == (1 if len(seen) < 3 else 0)
    assert seen == [["c0", "c1"], ["c2", "c3"], ["c4"]]


async def test_an_expired_continue_token_falls_back_to_one_full_list() -> None:
    source = SlowPages({"configmaps": [cm(f"c{i}") for i in range(5)]}, page_size=2)
    source.expire_tokens = True
    got = await pages_of(KubeLister(source, page_size=2), CONFIGMAPS)
    # The first page again plus the rest: the collector drops what it has already seen.
    assert got == [["c0", "c1"], ["c0", "c1", "c2", "c3", "c4"]]


async def test_stopping_early_cancels_the_page_fetched_ahead() -> None:
    source = SlowPages({"configmaps": [cm(f"c{i}") for i in range(6)]}, page_size=2, delay=1)
    pages = KubeLister(source, page_size=2).list_pages(CONFIGMAPS, "app", None)
    async for _ in pages:
        break
    await asyncio.sleep(0.01)  # the page fetched ahead is now waiting for the apiserver
    assert source.in_flight == 1
    await pages.aclose()  # type: ignore[attr-defined]
    assert source.in_flight == 0
    assert source.cancelled == 1


def many_types(count: int) -> list[Resource]:
    return [resource(f"kind{i}s", f"Kind{i}") for i in range(count)]


async def collect_names(collector: BackupCollector) -> list[str]:
    return [f"{item.group_resource}/{item.name}" async for item in collector.items()]


async def test_empty_resource_types_are_listed_ahead_and_items_keep_walk_order() -> None:
    kinds = many_types(12)
    objects = {"kind0s": [cm("first")], "kind11s": [cm("last")]}
    source = SlowPages(objects, page_size=500, delay=0.02)
    collector = BackupCollector(
        KubeLister(source),
        kinds,
        namespaces=IncludesExcludes(["app"]),
        resource_filter=IncludesExcludes(),
        lookahead=4,
    )
    assert await collect_names(collector) == ["kind0s/first", "kind11s/last"]
    assert [plural for plural, _ in source.calls] == [r.plural for r in kinds]
    # Listings overlap, but never more than the current one plus the lookahead.
    assert source.max_in_flight == 5
    assert source.in_flight == 0


async def test_without_lookahead_listings_run_one_at_a_time() -> None:
    source = SlowPages({"kind3s": [cm("x")]}, page_size=500, delay=0.001)
    collector = BackupCollector(
        KubeLister(source), many_types(6), namespaces=IncludesExcludes(["app"]),
        resource_filter=IncludesExcludes(), lookahead=0,
    )
    assert await collect_names(collector) == ["kind3s/x"]
    assert source.max_in_flight == 1


async def test_a_backup_that_stops_early_leaves_no_listing_running() -> None:
    source = SlowPages({f"kind{i}s": [cm("a"), cm("b")] for i in range(8)}, page_size=1, delay=0.05)
    collector = BackupCollector(
        KubeLister(source, page_size=1), many_types(8), namespaces=IncludesExcludes(["app"]),
        resource_filter=IncludesExcludes(), lookahead=4,
    )
    items = collector.items()
    first = await anext(items)
    assert first.name == "a"
    await items.aclose()
    assert source.in_flight == 0
    assert source.cancelled >= 4


class FailingLister:
    """A `Lister` whose listing of one resource fails after its first page."""

    async def list_pages(
        self, resource: Resource, namespace: str | None, label_selector: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        yield [cm(f"{resource.plural}-1")]
        if resource.plural == "secrets":
            raise RuntimeError("secrets is forbidden")
        yield [cm(f"{resource.plural}-2")]


@pytest.mark.parametrize("lookahead", [0, 1, 4])
async def test_a_failed_listing_is_recorded_and_the_walk_goes_on(lookahead: int) -> None:
    collector = BackupCollector(
        FailingLister(), [SECRETS, CONFIGMAPS], namespaces=IncludesExcludes(["app"]),
        resource_filter=IncludesExcludes(), lookahead=lookahead,
    )
    assert await collect_names(collector) == [
        "secrets/secrets-1", "configmaps/configmaps-1", "configmaps/configmaps-2",
    ]
    assert [str(e) for e in collector.errors] == ["secrets in namespace app: error listing items: secrets is forbidden"]
