"""Kubernetes Events (core/v1) about objects, written in the background.

``record()`` is called from reconcilers and informer callbacks, so it must never block or
raise: it enqueues into a bounded queue and a background task writes. When the queue is full
the event is dropped (with a log line). Repeats of the same event for the same object are
folded into one Event whose ``count`` and ``lastTimestamp`` are patched, like client-go does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock, RealClock
from arkd.kube.errors import AlreadyExists, ApiError, NotFound
from arkd.kube.resource import EVENTS

logger = logging.getLogger("arkd.kube.events")

EventType = Literal["Normal", "Warning"]
MAX_MESSAGE_LENGTH = 1024
_MAX_NAME_LENGTH = 253


@dataclass(frozen=True)
class _Pending:
    involved: dict[str, str]
    namespace: str
    type_: str
    reason: str
    message: str
    timestamp: str

    @property
    def key(self) -> tuple[str, ...]:
        inv = self.involved
        return (self.namespace, inv.get("kind", ""), inv.get("name", ""), inv.get("uid", ""),
                self.type_, self.reason, self.message)


@dataclass
class _Written:
    name: str
    count: int


def _reference(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": str(obj.get("apiVersion") or ""),
        "kind": str(obj.get("kind") or ""),
        "name": str(meta.get("name") or ""),
    }
    for src, dst in (("namespace", "namespace"), ("uid", "uid"), ("resourceVersion", "resourceVersion")):
        if meta.get(src):
            ref[dst] = str(meta[src])
    return ref


class EventRecorder:
    """Records Events for involved objects (dicts with apiVersion, kind and metadata)."""

    def __init__(
        self,
        client: KubeClient,
        component: str,
        *,
        host: str | None = None,
        queue_size: int = 1000,
        clock: Clock | None = None,
        aggregate_cache_size: int = 4096,
    ) -> None:
        if not component:
            raise ValueError("EventRecorder needs a component name, e.g. 'ark-server'")
        self._client = client
        self._component = component
        self._host = host
        self._clock: Clock = clock or RealClock()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._written: OrderedDict[tuple[str, ...], _Written] = OrderedDict()
        self._cache_size = aggregate_cache_size
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    # ----------------------------------------------------------------------- producer side

    def record(self, obj: dict[str, Any], type_: EventType, reason: str, message: str) -> None:
        """Queue an Event about ``obj``; never blocks, never raises."""
        try:
            if type_ not in ("Normal", "Warning"):
                logger.error("dropping event with invalid type", extra={"type": type_, "reason": reason})
                return
            involved = _reference(obj)
            if not involved["kind"] or not involved["name"]:
                logger.error("dropping event for object without kind or name",
                             extra={"reason": reason, "involved": involved})
                return
            if len(message) > MAX_MESSAGE_LENGTH:
                message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
            pending = _Pending(
                involved=involved,
                # Events about cluster-scoped objects live in "default", as kubectl describe expects.
                namespace=involved.get("namespace") or "default",
                type_=type_,
                reason=reason,
                message=message,
                timestamp=self._clock.wall().strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning("event queue full, dropping events",
                               extra={"reason": reason, "dropped_total": self.dropped})
        except Exception:
            logger.exception("failed to queue event", extra={"reason": reason})

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the background writer on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"events:{self._component}")

    async def run(self) -> None:
        """Write queued events until cancelled."""
        while True:
            pending = await self._queue.get()
            try:
                await self._write(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "failed to write event",
                    extra={"reason": pending.reason, "involved": pending.involved, "error": str(exc)},
                )
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until everything recorded so far has been written (or given up on)."""
        await self._queue.join()

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout`` seconds), then stop the writer."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            logger.warning("gave up writing queued events", extra={"pending": self._queue.qsize()})
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    # ----------------------------------------------------------------------- writing

    async def _write(self, pending: _Pending) -> None:
        key = pending.key
        previous = self._written.get(key)
        if previous is not None:
            count = previous.count + 1
            try:
                await self._client.patch(
                    EVENTS, previous.name,
                    {"count": count, "lastTimestamp": pending.timestamp},
                    pending.namespace,
                )
            except NotFound:
                # The Event expired (events have a TTL) or was deleted: start a new series.
                del self._written[key]
            else:
                previous.count = count
                self._written.move_to_end(key)
                return
        name = await self._create(pending)
        self._written[key] = _Written(name=name, count=1)
        while len(self._written) > self._cache_size:
            self._written.popitem(last=False)

    async def _create(self, pending: _Pending) -> str:
        source = {"component": self._component}
        if self._host:
            source["host"] = self._host
        for _ in range(3):
            name = self._event_name(pending.involved["name"])
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": pending.namespace},
                "involvedObject": pending.involved,
                "reason": pending.reason,
                "message": pending.message,
                "type": pending.type_,
                "source": source,
                "reportingComponent": self._component,
                "reportingInstance": self._host or self._component,
                "firstTimestamp": pending.timestamp,
                "lastTimestamp": pending.timestamp,
                "count": 1,
            }
            try:
                await self._client.create(EVENTS, body, pending.namespace)
            except AlreadyExists:
                continue
            return name
        object_name = pending.involved["name"]
        raise ApiError(409, "AlreadyExists", f"could not find a free Event name for {object_name}")

    def _event_name(self, object_name: str) -> str:
        # Object name plus a unique hex suffix, as client-go names events.
        suffix = f"{int(self._clock.wall().timestamp() * 1e9) + next(self._seq):x}"
        return f"{object_name[: _MAX_NAME_LENGTH - len(suffix) - 1]}.{suffix}"
