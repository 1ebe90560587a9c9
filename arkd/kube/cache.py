"""An indexed in-memory store of the latest version of each object, fed by an informer.

Objects are the raw dicts the apiserver returned. They are shared, not copied: treat them as
read-only (copy before changing one to build a patch).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from arkd.kube.clock import Clock, RealClock

log = logging.getLogger("arkd.kube.cache")

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]
Predicate = Callable[[Obj], bool]
T = TypeVar("T")

NAMESPACE_INDEX = "namespace"
OWNER_UID_INDEX = "owner_uid"
LABEL_INDEX_PREFIX = "label:"


def object_key(obj: Obj) -> str:
    """The cache key: "namespace/name" for namespaced objects, "name" for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError(f"object has no metadata.name, cannot key it: {str(obj)[:200]}")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)


def resource_version(obj: Obj | None) -> str:
    if obj is None:
        return ""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def rv_at_least(current: str, wanted: str) -> bool:
    """Whether `current` is `wanted` or newer.

    resourceVersions are opaque strings to clients, but etcd's are integers that only grow; compare
    numerically when both are numbers and fall back to equality otherwise.
    """
    try:
        return int(current) >= int(wanted)
    except ValueError:
        return current == wanted


def at_least_version(wanted: str) -> Predicate:
    """Predicate for `Cache.wait_for`: the cached object is at resourceVersion `wanted` or newer."""
    return lambda obj: rv_at_least(resource_version(obj), wanted)


def _namespace_index(obj: Obj) -> list[str]:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [namespace] if namespace else []


def _owner_uid_index(obj: Obj) -> list[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [ref["uid"] for ref in refs if ref.get("uid")]


def _label_index(label: str) -> IndexFunc:
    def index(obj: Obj) -> list[str]:
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
        return [value] if value is not None else []

    return index


class Cache:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or RealClock()
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {}
        # index name -> value -> keys; and key -> index name -> values, to unindex the old version.
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._indexed: dict[str, dict[str, list[str]]] = {}
        self._waiters: dict[str, list[tuple[Predicate, asyncio.Future[Obj]]]] = {}
        self._gone_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.add_index(NAMESPACE_INDEX, _namespace_index)
        self.add_index(OWNER_UID_INDEX, _owner_uid_index)

    # -- reading --------------------------------------------------------------------------
    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def list(self) -> builtins.list[Obj]:
        return list(self._items.values())

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def by_index(self, name: str, value: str) -> builtins.list[Obj]:
        return [self._items[k] for k in self.index_keys(name, value)]

    def index_keys(self, name: str, value: str) -> builtins.list[str]:
        try:
            index = self._indices[name]
        except KeyError:
            raise KeyError(
                f"no index named {name!r} (have {sorted(self._indices)}); register it with add_index() "
                "or add_label_index() before reading it"
            ) from None
        return sorted(index.get(value, ()))

    # -- indexes --------------------------------------------------------------------------
    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Register an index; `fn(obj)` returns the values the object is found under."""
        if name in self._indexers:
            raise ValueError(f"index {name!r} is already registered")
        self._indexers[name] = fn
        self._indices[name] = {}
        for key, obj in self._items.items():
            self._index_one(name, fn, key, obj)

    def add_label_index(self, label: str) -> str:
        """Index by the value of label `label`; returns the index name, "label:<label>"."""
        name = LABEL_INDEX_PREFIX + label
        if name not in self._indexers:
            self.add_index(name, _label_index(label))
        return name

    # -- writing (the informer's side) ------------------------------------------------------
    def upsert(self, obj: Obj) -> Obj | None:
        """Store `obj` as the latest version of its key; returns the previous version."""
        key = object_key(obj)
        old = self._items.get(key)
        if old is not None:
            self._unindex(key)
        self._items[key] = obj
        for name, fn in self._indexers.items():
            self._index_one(name, fn, key, obj)
        self._notify(key, obj)
        return old

    def delete(self, key: str) -> Obj | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key)
            for fut in self._gone_waiters.pop(key, []):
                if not fut.done():
                    fut.set_result(None)
        return old

    # -- read your own write ------------------------------------------------------------------
    async def wait_for(self, key: str, predicate: Predicate, timeout: float) -> Obj | None:
        """The cached object once `predicate(obj)` holds, or None if that did not happen within `timeout`.

        Typical use after a write: `await cache.wait_for(key, at_least_version(written_rv), 5)`.
        """
        current = self._items.get(key)
        if current is not None and predicate(current):
            return current
        fut: asyncio.Future[Obj] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.setdefault(key, []).append(entry)
        try:
            return await self._bounded(fut, timeout)
        finally:
            waiters = self._waiters.get(key, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiters.pop(key, None)

    async def wait_gone(self, key: str, timeout: float) -> bool:
        """True once `key` is not in the cache (e.g. after a delete), False if still there after `timeout`."""
        if key not in self._items:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gone_waiters.setdefault(key, []).append(fut)
        try:
            await self._bounded(fut, timeout)
            return fut.done() and not fut.cancelled()
        finally:
            waiters = self._gone_waiters.get(key, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._gone_waiters.pop(key, None)

    async def _bounded(self, fut: asyncio.Future[T], timeout: float) -> T | None:
        timer = asyncio.ensure_future(self._clock.sleep(timeout))
        try:
            waitables: set[asyncio.Future[Any]] = {fut, timer}
            await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if fut.done():
            return fut.result()
        fut.cancel()
        return None

    # -- internals ------------------------------------------------------------------------
    def _index_one(self, name: str, fn: IndexFunc, key: str, obj: Obj) -> None:
        try:
            values = [str(v) for v in fn(obj)]
        except Exception:
            # A faulty index function must not stop the informer; the object is just not indexed.
            log.exception("cache index function failed", extra={"index": name, "key": key})
            values = []
        self._indexed.setdefault(key, {})[name] = values
        index = self._indices[name]
        for value in values:
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str) -> None:
        for name, values in self._indexed.pop(key, {}).items():
            index = self._indices[name]
            for value in values:
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]

    def _notify(self, key: str, obj: Obj) -> None:
        for predicate, fut in list(self._waiters.get(key, ())):
            if fut.done():
                continue
            try:
                if predicate(obj):
                    fut.set_result(obj)
            except Exception as exc:
                fut.set_exception(exc)
