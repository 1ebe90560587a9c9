"""List+watch one resource into a Cache and tell handlers what changed.

The informer lists in pages, then watches from the list's resourceVersion with bookmarks. When the
watch breaks (connection lost, apiserver restart) or its resourceVersion expired (410 Gone) it lists
again and reconciles the cache against the fresh list, so objects deleted while it was disconnected
still produce on_delete, changed ones on_update and new ones on_add. A watch that just timed out
resumes from the last resourceVersion it saw (events or bookmarks) without a re-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from arkd.kube.cache import Cache, Obj, object_key, resource_version
from arkd.kube.clock import Clock, RealClock
from arkd.kube.errors import Gone, error_from_status
from arkd.kube.resource import Resource

log = logging.getLogger("arkd.kube.informer")

OnAdd = Callable[[Obj], None]
OnUpdate = Callable[[Obj, Obj], None]
OnDelete = Callable[[Obj], None]

# A watch that ends cleanly sooner than this without any event is treated as a failure, so a server
# that closes watches at once cannot make us spin.
MIN_WATCH_SECONDS = 1.0


class ListWatchClient(Protocol):
    """What the informer needs from arkd.kube.client.KubeClient."""

    async def list_page(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
        continue_: str | None = None,
    ) -> dict[str, Any]: ...

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class _Handler:
    on_add: OnAdd | None
    on_update: OnUpdate | None
    on_delete: OnDelete | None


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class Informer:
    def __init__(
        self,
        client: ListWatchClient,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resync_period: float | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"informer page_size must be >= 1 (got {page_size})")
        if resync_period is not None and resync_period <= 0:
            raise ValueError(f"informer resync_period must be > 0 seconds or None (got {resync_period})")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(
                f"informer backoff needs 0 < backoff_initial <= backoff_max "
                f"(got {backoff_initial}, {backoff_max})"
            )
        self.client = client
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock or RealClock()
        self.cache = Cache(self._clock)
        self._handlers: list[_Handler] = []
        self._synced = asyncio.Event()
        self._rv = ""
        self.list_count = 0
        self._running = False
        self._log_extra = {"resource": str(res), "namespace": namespace or ""}

    # -- public -----------------------------------------------------------------------------
    def add_handler(
        self,
        on_add: OnAdd | None = None,
        on_update: OnUpdate | None = None,
        on_delete: OnDelete | None = None,
    ) -> None:
        """Register callbacks (plain functions, not coroutines; they get the cached dicts, read-only).

        A handler added after objects were cached first gets on_add for each of them. Exceptions are
        logged and never stop the informer.
        """
        handler = _Handler(on_add, on_update, on_delete)
        self._handlers.append(handler)
        if on_add is not None:
            for obj in self.cache.list():
                self._call(on_add, "add", obj)

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str:
        """The last resourceVersion seen (list, event or bookmark); watches resume from it."""
        return self._rv

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first full list is in the cache; False if that did not happen within `timeout`."""
        if self._synced.is_set():
            return True
        if timeout is None:
            await self._synced.wait()
            return True
        waiter = asyncio.ensure_future(self._synced.wait())
        timer = asyncio.ensure_future(self._clock.sleep(timeout))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return self._synced.is_set()

    async def run(self) -> None:
        """List and watch until cancelled."""
        if self._running:
            raise RuntimeError(f"informer for {self.res} is already running; run() it once")
        self._running = True
        resync = asyncio.create_task(self._resync_loop()) if self.resync_period else None
        try:
            await self._list_watch_loop()
        finally:
            self._running = False
            if resync is not None:
                resync.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resync

    # -- list and watch -----------------------------------------------------------------------
    async def _list_watch_loop(self) -> None:
        delay = self.backoff_initial
        need_list = True
        gone_streak = 0
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                started = self._clock.now()
                events = await self._watch()
                if events or self._clock.now() - started >= MIN_WATCH_SECONDS:
                    # Timed out normally: the resourceVersion we hold is still good to resume from.
                    delay = self.backoff_initial
                    gone_streak = 0
                    continue
                log.warning("watch closed at once without events, relisting", extra=self._log_extra)
            except asyncio.CancelledError:
                raise
            except Gone:
                need_list = True
                gone_streak += 1
                log.info(
                    "watch resourceVersion expired, relisting", extra={**self._log_extra, "rv": self._rv}
                )
                if gone_streak == 1:
                    continue
            except Exception as exc:
                log.warning(
                    "list/watch failed, relisting after backoff",
                    extra={**self._log_extra, "error": f"{type(exc).__name__}: {exc}", "retry_in": delay},
                )
            need_list = True
            await self._clock.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _list(self) -> None:
        fresh: dict[str, Obj] = {}
        continue_: str | None = None
        rv = ""
        while True:
            page = await self.client.list_page(
                self.res,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self.page_size,
                continue_=continue_,
            )
            for obj in page.get("items") or []:
                # List items carry no apiVersion/kind (watch events do); make both look alike.
                obj.setdefault("apiVersion", self.res.api_version)
                obj.setdefault("kind", self.res.kind)
                fresh[object_key(obj)] = obj
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            continue_ = meta.get("continue") or None
            if not continue_:
                break
        if not rv:
            raise ValueError(f"list of {self.res} returned no metadata.resourceVersion; cannot watch from it")
        self._replace(fresh)
        self._rv = rv
        self.list_count += 1
        self._synced.set()

    async def _watch(self) -> int:
        """Deliver watch events until the stream ends; returns how many arrived (bookmarks included)."""
        stream = self.client.watch(
            self.res,
            self.namespace,
            resource_version=self._rv,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            # Spread reconnects of many informers, like client-go (timeout..2*timeout).
            timeout_seconds=random.randint(self.watch_timeout, 2 * self.watch_timeout),
            allow_bookmarks=True,
        )
        events = 0
        try:
            async for event in stream:
                events += 1
                self._handle(event)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return events

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj: Obj = event.get("object") or {}
        if kind == "ERROR":
            raise error_from_status(obj)
        if kind in ("ADDED", "MODIFIED"):
            self._apply(obj)
        elif kind == "DELETED":
            old = self.cache.delete(object_key(obj))
            if old is not None:
                self._dispatch_delete(obj)
        elif kind != "BOOKMARK":
            log.warning("unknown watch event type ignored", extra={**self._log_extra, "type": str(kind)})
        rv = resource_version(obj)
        if rv:
            self._rv = rv

    # -- cache updates and dispatch ------------------------------------------------------------
    def _apply(self, obj: Obj) -> None:
        key = object_key(obj)
        old = self.cache.get(key)
        if old is not None and _uid(old) != _uid(obj):
            # Deleted and re-created under the same name while we were not looking: two events.
            self.cache.delete(key)
            self._dispatch_delete(old)
            old = None
        self.cache.upsert(obj)
        if old is None:
            self._dispatch_add(obj)
        else:
            self._dispatch_update(old, obj)

    def _replace(self, fresh: dict[str, Obj]) -> None:
        """Make the cache equal a fresh list, delivering the differences as events."""
        vanished = [key for key in self.cache.keys() if key not in fresh]  # noqa: SIM118 - Cache, not dict
        for key in vanished:
            old = self.cache.delete(key)
            if old is not None:
                self._dispatch_delete(old)
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None or _uid(old) != _uid(obj) or resource_version(old) != resource_version(obj):
                self._apply(obj)

    def _dispatch_add(self, obj: Obj) -> None:
        for h in self._handlers:
            if h.on_add is not None:
                self._call(h.on_add, "add", obj)

    def _dispatch_update(self, old: Obj, new: Obj) -> None:
        for h in self._handlers:
            if h.on_update is not None:
                self._call(h.on_update, "update", old, new)

    def _dispatch_delete(self, obj: Obj) -> None:
        for h in self._handlers:
            if h.on_delete is not None:
                self._call(h.on_delete, "delete", obj)

    def _call(self, fn: Callable[..., None], event: str, *objs: Obj) -> None:
        try:
            fn(*objs)
        except Exception:
            key = object_key(objs[-1]) if objs and (objs[-1].get("metadata") or {}).get("name") else ""
            log.exception(
                "informer event handler failed", extra={**self._log_extra, "event": event, "key": key}
            )

    async def _resync_loop(self) -> None:
        assert self.resync_period is not None
        await self._synced.wait()
        while True:
            await self._clock.sleep(self.resync_period)
            for obj in self.cache.list():
                self._dispatch_update(obj, obj)
