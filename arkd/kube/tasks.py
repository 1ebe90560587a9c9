"""Supervised long-running tasks keyed by object UID (DESIGN convention 5).

Reconcilers return at once; a restic run or a Backup's wait for its volumes runs here. Starting a
key that is already running is a no-op, so a reconcile that fires twice never doubles the work.
When a task ends (done, failed or cancelled) an optional callback lets the owner requeue its key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("arkd.kube.tasks")


class TaskSupervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def running(self, key: str) -> bool:
        task = self._tasks.get(key)
        return task is not None and not task.done()

    def __len__(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    def start(
        self,
        key: str,
        factory: Callable[[], Awaitable[None]],
        on_exit: Callable[[str], None] | None = None,
    ) -> bool:
        """Start `factory()` under `key` unless it already runs; True when a task was started."""
        if self._closed or self.running(key):
            return False

        async def body() -> None:
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervised task failed", extra={"supervisor": self.name, "key": key})
            finally:
                if self._tasks.get(key) is asyncio.current_task():
                    del self._tasks[key]
                if on_exit is not None:
                    try:
                        on_exit(key)
                    except Exception:
                        log.exception(
                            "task exit callback failed", extra={"supervisor": self.name, "key": key}
                        )

        self._tasks[key] = asyncio.create_task(body(), name=f"{self.name}:{key}")
        return True

    async def cancel(self, key: str) -> None:
        task = self._tasks.get(key)
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Cancel every task and wait for them to finish their cleanup (SIGINT to restic, reaping)."""
        self._closed = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
