"""Completion futures for the PodVolumeBackups (or PodVolumeRestores) of one Backup (or Restore).

DESIGN convention 6: the futures are derived from an informer's cache, never from memory of what
was started. The tracker is fed by the informer's handlers and seeded from its cache when built,
so a restarted server picks up an InProgress Backup's volumes where they are. It also remembers,
per object, when its phase or `status.progress.bytesDone` last changed, so the owner can detect a
stall ("no progress for N seconds") apart from the overall timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock
from arkd.kube.errors import Conflict, NotFound
from arkd.kube.patch import status_merge_patch
from arkd.kube.resource import Resource

log = logging.getLogger("arkd.podvolume.tracker")

Obj = dict[str, Any]
# Results by object name; None for an expected object deleted before it reached a terminal phase.
Results = dict[str, Obj | None]

COMPLETED = "Completed"
FAILED = "Failed"
TERMINAL_PHASES = frozenset({COMPLETED, FAILED})
_FAIL_ATTEMPTS = 3


class HandlerSource(Protocol):
    """What the tracker needs from an informer (arkd.kube.informer.Informer)."""

    @property
    def cache(self) -> Any: ...

    def add_handler(
        self,
        on_add: Callable[[Obj], None] | None = None,
        on_update: Callable[[Obj, Obj], None] | None = None,
        on_delete: Callable[[Obj], None] | None = None,
    ) -> None: ...


def phase_of(obj: Obj) -> str:
    """The effective phase: Ark writes "" for New."""
    return str((obj.get("status") or {}).get("phase") or "New")


def stall_message(stall_seconds: float) -> str:
    return f"no change in status.progress.bytesDone for {stall_seconds:g} seconds"


def is_terminal(obj: Obj) -> bool:
    return phase_of(obj) in TERMINAL_PHASES


def bytes_done(obj: Obj) -> int | None:
    progress = (obj.get("status") or {}).get("progress") or {}
    value = progress.get("bytesDone") if isinstance(progress, dict) else None
    return int(value) if isinstance(value, int | float) else None


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


@dataclass
class _Tracked:
    obj: Obj
    last_progress: float


@dataclass
class _Waiter:
    names: frozenset[str]
    future: asyncio.Future[Results]
    since: float
    # Expected objects deleted while waited for: their last terminal version, or None.
    gone: dict[str, Obj | None] = field(default_factory=dict)


class PodVolumeTracker:
    """Hands out a future per owner UID that resolves when the owner's expected objects are terminal.

    `owner_label` is `ark.heptio.com/backup-uid` for PodVolumeBackups or
    `ark.heptio.com/restore-uid` for PodVolumeRestores. Build it once the informer has synced.
    """

    def __init__(self, informer: HandlerSource, owner_label: str, clock: Clock) -> None:
        self.owner_label = owner_label
        self._clock = clock
        self._objects: dict[str, _Tracked] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        for obj in informer.cache.list():
            self._observe(obj)
        informer.add_handler(self._on_add, self._on_update, self._on_delete)

    # -- the owner's side ---------------------------------------------------------------------
    def wait(self, owner_uid: str, names: Iterable[str]) -> asyncio.Future[Results]:
        """A future resolving to {name: object} once every named object (labelled `owner_uid`) is terminal.

        Objects created but not yet seen by the informer are waited for. An object deleted before it
        finished resolves as None. Cancelling the future (e.g. on a timeout) just drops the waiter.
        """
        if not owner_uid:
            raise ValueError("wait() needs the owner's UID, got an empty string")
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(frozenset(names), future, self._clock.now())
        self._waiters.setdefault(owner_uid, []).append(waiter)
        self._check(owner_uid)
        return future

    def get(self, name: str) -> Obj | None:
        """The latest version of a tracked object."""
        tracked = self._objects.get(name)
        return tracked.obj if tracked is not None else None

    def objects(self, owner_uid: str) -> list[Obj]:
        """Every tracked object labelled with `owner_uid`, latest versions."""
        return [t.obj for t in self._objects.values() if self._owner(t.obj) == owner_uid]

    def last_progress(self, name: str) -> float | None:
        """Clock time (`clock.now()`) at which the object was first seen or its phase or bytesDone changed."""
        tracked = self._objects.get(name)
        return tracked.last_progress if tracked is not None else None

    def stalled(self, owner_uid: str, names: Iterable[str], stall_seconds: float) -> list[str]:
        """Named objects, not yet terminal, without progress for at least `stall_seconds`.

        An object not seen yet counts from when the owner started waiting for it (or from now).
        The owner decides what to do, e.g. patch it Failed with "no change in
        status.progress.bytesDone for N seconds".
        """
        now = self._clock.now()
        waiters = self._waiters.get(owner_uid) or []
        since = min((w.since for w in waiters), default=now)
        out: list[str] = []
        for name in sorted(set(names)):
            tracked = self._objects.get(name)
            if tracked is not None and is_terminal(tracked.obj):
                continue
            last = tracked.last_progress if tracked is not None else since
            if now - last >= stall_seconds:
                out.append(name)
        return out

    async def fail(
        self,
        client: KubeClient,
        resource: Resource,
        name: str,
        namespace: str,
        message: str,
        completion_time: str,
        obj: Obj | None = None,
    ) -> Obj | None:
        """Mark a PodVolumeBackup/Restore Failed (a stall, a timeout) unless it ended meanwhile.

        Returns its latest version (the terminal one if an agent finished first), or None when it
        is gone. Each write is guarded by the resourceVersion just seen, so a node agent's
        concurrent Completed wins; a conflict re-reads and tries again. Other API errors raise.
        The node agent stops restic when it sees the object Failed.
        """
        current = obj if obj is not None else self.get(name)
        for _ in range(_FAIL_ATTEMPTS):
            if current is None:
                try:
                    current = await client.get(resource, name, namespace)
                except NotFound:
                    return None
            if is_terminal(current):
                return current
            patch = status_merge_patch(
                current, {"phase": FAILED, "message": message, "completionTimestamp": completion_time}
            )
            try:
                return await client.patch(resource, name, patch, namespace, subresource="status")
            except Conflict:
                current = None  # it moved meanwhile: look again
            except NotFound:
                return None
        return current

    # -- informer handlers --------------------------------------------------------------------
    def _on_add(self, obj: Obj) -> None:
        self._observe(obj)

    def _on_update(self, _old: Obj, new: Obj) -> None:
        self._observe(new)

    def _on_delete(self, obj: Obj) -> None:
        name = _name(obj)
        tracked = self._objects.pop(name, None)
        latest = tracked.obj if tracked is not None else obj
        owner = self._owner(latest)
        if not owner:
            return
        for waiter in self._waiters.get(owner, ()):
            if name in waiter.names:
                waiter.gone[name] = latest if is_terminal(latest) else None
        self._check(owner)

    # -- internals -------------------------------------------------------------------------------
    def _owner(self, obj: Obj) -> str:
        labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
        return str(labels.get(self.owner_label) or "")

    def _observe(self, obj: Obj) -> None:
        name = _name(obj)
        if not name:
            return
        now = self._clock.now()
        previous = self._objects.get(name)
        if previous is None or (phase_of(previous.obj) != phase_of(obj) or bytes_done(previous.obj) != bytes_done(obj)):
            self._objects[name] = _Tracked(obj, now)
        else:
            previous.obj = obj
        owner = self._owner(obj)
        if owner:
            for waiter in self._waiters.get(owner, ()):
                # Re-created under the same name (a restarted owner creates deterministic names).
                waiter.gone.pop(name, None)
            self._check(owner)

    def _check(self, owner_uid: str) -> None:
        waiters = self._waiters.get(owner_uid)
        if not waiters:
            return
        remaining: list[_Waiter] = []
        for waiter in waiters:
            if waiter.future.done():
                continue
            results = self._results(owner_uid, waiter)
            if results is None:
                remaining.append(waiter)
            else:
                waiter.future.set_result(results)
        if remaining:
            self._waiters[owner_uid] = remaining
        else:
            del self._waiters[owner_uid]

    def _results(self, owner_uid: str, waiter: _Waiter) -> Results | None:
        results: Results = {}
        for name in waiter.names:
            if name in waiter.gone:
                results[name] = waiter.gone[name]
                continue
            tracked = self._objects.get(name)
            if tracked is None or self._owner(tracked.obj) != owner_uid or not is_terminal(tracked.obj):
                return None
            results[name] = tracked.obj
        return results
