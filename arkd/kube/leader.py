"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

A candidate acquires the Lease when it does not exist, is released (empty holder), or has not
changed for its ``leaseDurationSeconds`` as observed locally (no trust in other clocks). Every
write carries the resourceVersion just read, so two candidates racing get one success and one
Conflict. The leader renews every ``retry_period``; when no renewal succeeds for
``renew_deadline`` it steps down before the lease can expire for others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from arkd.kube.client import KubeClient
from arkd.kube.clock import Clock, RealClock
from arkd.kube.errors import AlreadyExists, ApiError, Conflict, NotFound
from arkd.kube.resource import LEASES

logger = logging.getLogger("arkd.kube.leader")

_JITTER = 1.2


def _micro_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the Lease ``namespace/name``; ``run()`` leads while it holds it."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: int = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
        clock: Clock | None = None,
        release_on_cancel: bool = True,
    ) -> None:
        if not namespace or not name or not identity:
            raise ValueError("leader election needs a lease namespace, a lease name and a non-empty identity")
        if not isinstance(lease_duration, int) or lease_duration < 1:
            raise ValueError(f"lease_duration must be a whole number of seconds >= 1, got {lease_duration!r}")
        if not lease_duration > renew_deadline:
            raise ValueError(f"lease_duration ({lease_duration}s) must be greater than renew_deadline "
                             f"({renew_deadline}s) so a leader steps down before its lease expires")
        if not renew_deadline > _JITTER * retry_period > 0:
            raise ValueError(f"renew_deadline ({renew_deadline}s) must be greater than {_JITTER} x "
                             f"retry_period ({retry_period}s), and retry_period positive")
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock: Clock = clock or RealClock()
        self._release_on_cancel = release_on_cancel
        self._leading = False
        self._lease: dict[str, Any] | None = None  # last Lease object we read or wrote
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the Lease and its leading callback runs."""
        return self._leading

    @property
    def holder(self) -> str:
        """The holder identity last seen in the Lease ("" when free or not yet read)."""
        return str((self._observed_spec or {}).get("holderIdentity") or "")

    def _log_extra(self, **more: Any) -> dict[str, Any]:
        return {"lease": f"{self.namespace}/{self.name}", "identity": self.identity, **more}

    async def run(
        self,
        on_started_leading: Callable[[], Coroutine[Any, Any, None]],
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        """Wait to acquire the Lease, then run ``on_started_leading`` while renewing it.

        Returns after losing the Lease (the callback is cancelled first) or when the callback
        returns (the Lease is released). Cancelling ``run`` cancels the callback and, with
        ``release_on_cancel``, releases the Lease so another candidate takes over at once.
        An exception from the callback is re-raised after the Lease is released.
        """
        work: asyncio.Task[None] | None = None
        renew: asyncio.Task[None] | None = None
        release = False
        try:
            await self._acquire()
            self._leading = True
            logger.info("became leader", extra=self._log_extra())
            work = asyncio.create_task(on_started_leading(), name=f"leader:{self.name}:work")
            renew = asyncio.create_task(self._renew_loop(), name=f"leader:{self.name}:renew")
            await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            if renew.done():
                logger.warning("lost leadership", extra=self._log_extra(holder=self.holder))
            else:
                release = True
        except asyncio.CancelledError:
            release = self._release_on_cancel
            raise
        finally:
            was_leading = self._leading
            self._leading = False
            for task in (renew, work):
                if task is not None and not task.done():
                    task.cancel()
            for task in (renew, work):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if release and was_leading:
                await self.release()
            if was_leading and on_stopped_leading is not None:
                try:
                    on_stopped_leading()
                except Exception:
                    logger.exception("on_stopped_leading callback failed", extra=self._log_extra())
        if work is not None and work.done() and not work.cancelled():
            failure = work.exception()
            if failure is not None:
                raise failure

    async def release(self) -> bool:
        """Give up the Lease if we hold it: empty holder and a 1s duration. True when released."""
        lease = self._lease
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        now = _micro_time(self._clock.wall())
        spec = dict(lease.get("spec") or {})
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now})
        try:
            updated = await asyncio.wait_for(
                self._client.replace(LEASES, self.name, {**lease, "spec": spec}, self.namespace),
                self.renew_deadline,
            )
        except (ApiError, TimeoutError) as exc:
            logger.warning("failed to release lease", extra=self._log_extra(error=str(exc)))
            return False
        self._observe(updated)
        logger.info("released lease", extra=self._log_extra())
        return True

    # ----------------------------------------------------------------------- internals

    async def _acquire(self) -> None:
        logger.info("waiting to acquire lease", extra=self._log_extra())
        while not await self._try_acquire_or_renew(timeout=self.renew_deadline):
            await self._clock.sleep(self.retry_period * random.uniform(1.0, _JITTER))

    async def _renew_loop(self) -> None:
        """Returns when no renewal succeeded within renew_deadline of the last success."""
        last_success = self._clock.now()
        while True:
            await self._clock.sleep(self.retry_period)
            remaining = self.renew_deadline - (self._clock.now() - last_success)
            if remaining > 0 and await self._try_acquire_or_renew(timeout=remaining):
                last_success = self._clock.now()
                continue
            if self._clock.now() - last_success >= self.renew_deadline:
                return

    def _observe(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = self._clock.now()

    async def _try_acquire_or_renew(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self._attempt(), timeout)
        except TimeoutError:
            logger.warning("lease request timed out", extra=self._log_extra())
        except ApiError as exc:
            logger.warning("lease request failed", extra=self._log_extra(error=str(exc)))
        return False

    async def _attempt(self) -> bool:
        now = _micro_time(self._clock.wall())
        try:
            lease = await self._client.get(LEASES, self.name, self.namespace)
        except NotFound:
            body = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.lease_duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                created = await self._client.create(LEASES, body, self.namespace)
            except (AlreadyExists, Conflict):
                return False
            self._observe(created)
            return True
        self._observe(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and self._clock.now() < self._observed_at + duration:
            return False
        ours = holder == self.identity
        new_spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": spec.get("acquireTime") if ours and spec.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if ours else 1),
        }
        try:
            updated = await self._client.replace(
                LEASES, self.name, {**lease, "spec": new_spec}, self.namespace
            )
        except Conflict:
            return False
        if not ours:
            logger.info("took over lease", extra=self._log_extra(previous_holder=holder))
        self._observe(updated)
        return True
