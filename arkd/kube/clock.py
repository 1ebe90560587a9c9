"""Injectable time: the real clock for production, a manual one so queue and controller tests are exact."""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def wall(self) -> datetime.datetime:
        """Current UTC time (timezone-aware)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Time moves only when a test calls `advance()`; sleepers whose deadline passed are woken then.

    Woken sleepers resume on the next event-loop iterations, so tests yield (`await settle()`) after
    advancing before asserting on what the woken tasks did.
    """

    def __init__(
        self,
        start: float = 1000.0,
        wall_start: datetime.datetime = datetime.datetime(2018, 6, 1, tzinfo=datetime.UTC),
    ) -> None:
        if wall_start.tzinfo is None:
            raise ValueError("FakeClock wall_start must be timezone-aware (use tzinfo=datetime.UTC)")
        self._start = start
        self._now = start
        self._wall_start = wall_start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> datetime.datetime:
        return self._wall_start + datetime.timedelta(seconds=self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        # A cancelled sleeper stays in the heap as a done future; advance() skips it.
        await fut

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"FakeClock cannot go backwards (advance({seconds}))")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (lets a test know a task reached its sleep)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        pending = [d for d, _, fut in self._sleepers if not fut.done()]
        return min(pending) if pending else None
