"""A rate-limited, delaying work queue of keys with client-go's semantics.

- A key waiting in the queue is stored once however often it is added (de-duplication).
- A key handed out by `get()` is "processing" until `done(key)`; it is never handed to a second
  worker meanwhile. Adding it while it is processing marks it dirty, and `done()` queues it again,
  so the change that arrived during processing is seen by exactly one more run.
- `add_after(key, s)` delays a key; `add_rate_limited(key)` delays it by the rate limiter, by default
  the max of a per-key exponential backoff (5 ms doubling to 1000 s) and an overall token bucket
  (10 qps, burst 100), like client-go's DefaultControllerRateLimiter. `forget(key)` resets the backoff.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Protocol

from arkd.kube.clock import Clock, RealClock


class ShutDown(Exception):
    """The queue was shut down; the worker calling `get()` should exit."""


class RateLimiter(Protocol):
    def when(self, key: str) -> float:
        """Delay in seconds before `key` may be retried; records one more failure."""
        ...

    def forget(self, key: str) -> None: ...

    def num_requeues(self, key: str) -> int: ...


class ExponentialBackoff:
    """Per-key failure backoff: base * 2**failures, capped at max_delay."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError(
                "backoff needs 0 < base_delay <= max_delay "
                f"(got base_delay={base_delay}, max_delay={max_delay})"
            )
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        exp = self._failures.get(key, 0)
        self._failures[key] = exp + 1
        # 2**exp overflows a float long after the cap is reached; stop computing it.
        if exp > 64:
            return self.max_delay
        return min(self.base_delay * float(2**exp), self.max_delay)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)


class TokenBucket:
    """Overall retry rate limit shared by all keys (Go's rate.Limiter.Reserve: tokens may go into debt)."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock | None = None) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"token bucket needs qps > 0 and burst >= 1 (got qps={qps}, burst={burst})")
        self.qps = qps
        self.burst = burst
        self._clock = clock or RealClock()
        self._tokens = float(burst)
        self._last = self._clock.now()

    def when(self, key: str) -> float:
        now = self._clock.now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: str) -> None:
        return None

    def num_requeues(self, key: str) -> int:
        return 0


class MaxOf:
    """The longest delay of several limiters; every limiter is consulted so each keeps its own account."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOf needs at least one rate limiter")
        self.limiters = limiters

    def when(self, key: str) -> float:
        return max([limiter.when(key) for limiter in self.limiters])

    def forget(self, key: str) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


class WorkQueue:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        base_delay: float = 0.005,
        max_delay: float = 1000.0,
        qps: float = 10.0,
        burst: int = 100,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self._clock = clock or RealClock()
        self.rate_limiter: RateLimiter = rate_limiter or MaxOf(
            ExponentialBackoff(base_delay, max_delay), TokenBucket(qps, burst, self._clock)
        )
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        # Delayed keys: key -> (ready_at, seq); the heap may hold stale entries, checked against the dict.
        self._waiting: dict[str, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._shutting_down = False
        self._drain = False

    # -- adding ---------------------------------------------------------------------------
    def add(self, key: str) -> None:
        if self._shutting_down:
            return
        if self._enqueue(key):
            self._wake_one()

    def add_after(self, key: str, seconds: float) -> None:
        if self._shutting_down:
            return
        if seconds <= 0:
            self.add(key)
            return
        ready_at = self._clock.now() + seconds
        current = self._waiting.get(key)
        if current is not None and current[0] <= ready_at:
            return
        seq = next(self._seq)
        self._waiting[key] = (ready_at, seq)
        heapq.heappush(self._heap, (ready_at, seq, key))
        # A getter may be sleeping until a later deadline; let one recompute.
        self._wake_one()

    def add_rate_limited(self, key: str) -> None:
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: str) -> None:
        self.rate_limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return self.rate_limiter.num_requeues(key)

    # -- consuming ------------------------------------------------------------------------
    async def get(self) -> str:
        """The next ready key; raises ShutDown once the queue is shut down (after draining, in drain mode)."""
        while True:
            self._promote_due()
            if self._shutting_down and not (self._drain and self._queue):
                raise ShutDown()
            if self._queue:
                key = self._queue.popleft()
                self._processing.add(key)
                self._dirty.discard(key)
                if self._queue:
                    self._wake_one()
                return key
            await self._wait()

    def done(self, key: str) -> None:
        """Finish processing `key`; if it was added meanwhile it is queued again."""
        if key not in self._processing:
            raise ValueError(
                f"done({key!r}) called for a key that is not being processed; call it once per get()"
            )
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._wake_one()
        if not self._processing:
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._idle_waiters.clear()

    # -- lifecycle ------------------------------------------------------------------------
    def shutdown(self, *, drain: bool = False) -> None:
        """Stop the queue: new adds are ignored and waiting getters wake and raise ShutDown.

        With drain=True getters keep receiving keys that are already ready until none are left;
        delayed keys are dropped either way (the next start re-lists and re-queues everything).
        """
        self._shutting_down = True
        self._drain = drain
        self._waiting.clear()
        self._heap.clear()
        for fut in self._getters:
            if not fut.done():
                fut.set_result(None)
        self._getters.clear()

    async def shutdown_with_drain(self) -> None:
        """Shut down in drain mode and wait until every ready key was handed out and marked done."""
        self.shutdown(drain=True)
        while self._queue or self._processing:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def len(self) -> int:
        """Keys ready to be handed out (client-go's Len: delayed and processing keys are not counted)."""
        self._promote_due()
        return len(self._queue)

    def __len__(self) -> int:
        return self.len()

    def num_processing(self) -> int:
        return len(self._processing)

    def num_waiting(self) -> int:
        return len(self._waiting)

    # -- internals ------------------------------------------------------------------------
    def _enqueue(self, key: str) -> bool:
        """Mark `key` dirty; returns True when it became ready for a getter."""
        if key in self._dirty:
            return False
        self._dirty.add(key)
        if key in self._processing:
            return False
        self._queue.append(key)
        return True

    def _promote_due(self) -> None:
        now = self._clock.now()
        promoted = False
        while self._heap and self._heap[0][0] <= now:
            ready_at, seq, key = heapq.heappop(self._heap)
            if self._waiting.get(key) == (ready_at, seq):
                del self._waiting[key]
                promoted = self._enqueue(key) or promoted
        if promoted:
            self._wake_one()

    def _next_ready_at(self) -> float | None:
        while self._heap and self._waiting.get(self._heap[0][2]) != self._heap[0][:2]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def _wait(self) -> None:
        """Sleep until woken by add/done/shutdown or until the earliest delayed key is due."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._getters.append(fut)
        ready_at = self._next_ready_at()
        timer: asyncio.Task[None] | None = None
        try:
            if ready_at is None:
                await fut
            else:
                timer = asyncio.ensure_future(self._clock.sleep(ready_at - self._clock.now()))
                await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # We were woken for a key but are leaving; pass the wake-up on so the key is not stranded.
            if fut.done() and not fut.cancelled():
                self._wake_one()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.cancel()
            try:
                self._getters.remove(fut)
            except ValueError:
                pass

    def _wake_one(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
