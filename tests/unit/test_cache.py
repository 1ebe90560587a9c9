"""The informer cache: keys, indexes (built-in, label, owner, custom) and read-your-own-write waits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from arkd.kube.cache import Cache, at_least_version, object_key, rv_at_least
from arkd.kube.clock import FakeClock

BACKUP_UID = "ark.heptio.com/backup-uid"


def obj(
    name: str,
    namespace: str | None = "ns1",
    rv: str = "1",
    labels: dict[str, str] | None = None,
    owners: list[str] | None = None,
    node: str | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "uid": uid or f"uid-{name}"}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    if owners:
        meta["ownerReferences"] = [{"kind": "Backup", "name": "b", "uid": u} for u in owners]
    out: dict[str, Any] = {"metadata": meta}
    if node:
        out["spec"] = {"node": node}
    return out


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def test_keys_are_namespace_slash_name_or_just_name() -> None:
    assert object_key(obj("a", "heptio-ark")) == "heptio-ark/a"
    assert object_key(obj("pv-1", None)) == "pv-1"
    with pytest.raises(ValueError, match=r"no metadata\.name"):
        object_key({"metadata": {}})


def test_latest_version_wins_and_delete_removes() -> None:
    cache = Cache()
    assert cache.upsert(obj("a", rv="1")) is None
    old = cache.upsert(obj("a", rv="2"))
    assert old is not None and old["metadata"]["resourceVersion"] == "1"
    cache.upsert(obj("pv", None))
    assert cache.get("ns1/a")["metadata"]["resourceVersion"] == "2"  # type: ignore[index]
    assert sorted(cache.keys()) == ["ns1/a", "pv"] and len(cache) == 2 and "pv" in cache
    assert cache.delete("ns1/a") is not None
    assert cache.get("ns1/a") is None and cache.delete("ns1/a") is None
    assert names(cache.list()) == ["pv"]


def test_namespace_and_owner_indexes_are_built_in() -> None:
    cache = Cache()
    cache.upsert(obj("a", "ns1", owners=["backup-1"]))
    cache.upsert(obj("b", "ns2", owners=["backup-1", "backup-2"]))
    cache.upsert(obj("c", "ns2"))
    assert names(cache.by_index("namespace", "ns2")) == ["b", "c"]
    assert names(cache.by_index("owner_uid", "backup-1")) == ["a", "b"]
    assert names(cache.by_index("owner_uid", "backup-2")) == ["b"]
    assert cache.by_index("owner_uid", "nobody") == []


def test_label_index_follows_label_changes_and_deletes() -> None:
    cache = Cache()
    cache.upsert(obj("pvb-1", labels={BACKUP_UID: "u1"}))
    name = cache.add_label_index(BACKUP_UID)  # registered after objects exist: indexes them too
    assert name == "label:ark.heptio.com/backup-uid"
    assert cache.add_label_index(BACKUP_UID) == name, "registering twice is harmless"
    cache.upsert(obj("pvb-2", labels={BACKUP_UID: "u1"}))
    cache.upsert(obj("pvb-3", labels={BACKUP_UID: "u2"}))
    cache.upsert(obj("other"))
    assert names(cache.by_index(name, "u1")) == ["pvb-1", "pvb-2"]
    # The label moved: the object must leave its old index value.
    cache.upsert(obj("pvb-2", rv="2", labels={BACKUP_UID: "u2"}))
    assert names(cache.by_index(name, "u1")) == ["pvb-1"]
    assert names(cache.by_index(name, "u2")) == ["pvb-2", "pvb-3"]
    cache.delete("ns1/pvb-3")
    assert names(cache.by_index(name, "u2")) == ["pvb-2"]
    assert cache.index_keys(name, "u2") == ["ns1/pvb-2"]


def test_custom_index_function() -> None:
    cache = Cache()
    cache.add_index("node", lambda o: [o["spec"]["node"]] if o.get("spec", {}).get("node") else [])
    cache.upsert(obj("pvb-1", node="node-a"))
    cache.upsert(obj("pvb-2", node="node-b"))
    cache.upsert(obj("pvb-3", node="node-a"))
    cache.upsert(obj("no-node"))
    assert names(cache.by_index("node", "node-a")) == ["pvb-1", "pvb-3"]
    with pytest.raises(ValueError, match="already registered"):
        cache.add_index("node", lambda o: [])


def test_unknown_index_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="add_label_index"):
        Cache().by_index("label:missing", "x")


def test_a_failing_index_function_does_not_break_the_cache(caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache()
    cache.add_index("node", lambda o: [o["spec"]["node"]])
    cache.upsert(obj("no-spec"))  # KeyError inside the index function
    cache.upsert(obj("pvb", node="n1"))
    assert cache.get("ns1/no-spec") is not None
    assert names(cache.by_index("node", "n1")) == ["pvb"]
    assert any(r.getMessage() == "cache index function failed" for r in caplog.records)


def test_resource_versions_compare_as_integers_when_they_are() -> None:
    assert rv_at_least("10", "9"), "string comparison would say '10' < '9'"
    assert rv_at_least("9", "9")
    assert not rv_at_least("8", "9")
    assert rv_at_least("abc", "abc") and not rv_at_least("abd", "abc")
    assert not rv_at_least("", "5")


async def test_wait_for_returns_once_the_cache_has_caught_up() -> None:
    clock = FakeClock()
    cache = Cache(clock)
    cache.upsert(obj("a", rv="9"))
    waiter = asyncio.create_task(cache.wait_for("ns1/a", at_least_version("12"), timeout=5))
    await settle()
    cache.upsert(obj("a", rv="11"))
    await settle()
    assert not waiter.done()
    cache.upsert(obj("a", rv="12"))
    await settle()
    result = waiter.result()
    assert result is not None and result["metadata"]["resourceVersion"] == "12"


async def test_wait_for_an_object_that_is_not_cached_yet() -> None:
    cache = Cache(FakeClock())
    waiter = asyncio.create_task(cache.wait_for("ns1/new", lambda o: True, timeout=5))
    await settle()
    cache.upsert(obj("new"))
    await settle()
    assert waiter.result() is not None


async def test_wait_for_returns_at_once_when_already_true() -> None:
    cache = Cache(FakeClock())
    cache.upsert(obj("a", rv="20"))
    assert await cache.wait_for("ns1/a", at_least_version("12"), timeout=5) is not None


async def test_wait_for_gives_up_after_the_timeout() -> None:
    clock = FakeClock()
    cache = Cache(clock)
    cache.upsert(obj("a", rv="1"))
    waiter = asyncio.create_task(cache.wait_for("ns1/a", at_least_version("2"), timeout=5))
    await settle()
    clock.advance(4.5)
    await settle()
    assert not waiter.done()
    clock.advance(0.5)
    await settle()
    assert waiter.result() is None
    # A later write does not resurrect the finished wait.
    cache.upsert(obj("a", rv="3"))


async def test_wait_for_surfaces_predicate_errors() -> None:
    cache = Cache(FakeClock())
    waiter = asyncio.create_task(cache.wait_for("ns1/a", lambda o: o["status"]["phase"] == "Done", timeout=5))
    await settle()
    cache.upsert(obj("a"))
    await settle()
    assert isinstance(waiter.exception(), KeyError)


async def test_wait_gone() -> None:
    clock = FakeClock()
    cache = Cache(clock)
    assert await cache.wait_gone("ns1/absent", timeout=1)
    cache.upsert(obj("a"))
    gone = asyncio.create_task(cache.wait_gone("ns1/a", timeout=5))
    stays = asyncio.create_task(cache.wait_gone("ns1/a", timeout=1))
    await settle()
    clock.advance(1)
    await settle()
    assert stays.result() is False
    cache.delete("ns1/a")
    await settle()
    assert gone.result() is True


def test_index_errors_are_logged_with_the_index_and_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="arkd.kube.cache")
    cache = Cache()
    cache.add_index("boom", lambda o: 1 / 0)  # type: ignore[arg-type,return-value]
    cache.upsert(obj("a"))
    record = next(r for r in caplog.records if r.name == "arkd.kube.cache")
    assert record.index == "boom" and record.key == "ns1/a"  # type: ignore[attr-defined]
