"""The ResticRepository controller of `ark server`: one restic repository per volume namespace.

A ResticRepository is named after the volume namespace and lives in the Ark namespace. Reconcile:

- any phase: `spec.resticIdentifier` (from the Config) and `spec.maintenanceFrequency` (168h when
  unset or not positive) are filled in with a resourceVersion-guarded spec patch;
- New / "" / NotReady: probe the repository (`restic cat config`); initialise it when there is none,
  with the namespace's key (created at random when missing, unless the server requires keys made by
  `ark restic init-repository`). Ready (+ lastMaintenanceTime on first use) or NotReady with a
  message saying what is wrong; NotReady is retried with exponential backoff;
- Ready: probe again whenever the key Secret changed (or after a restart), so a wrong key shows up
  as NotReady; every maintenanceFrequency run `restic unlock` (stale locks only), `prune`, `check`.

Key rotation (`ark restic rotate-key`) is driven by the key Secrets: the CLI stores the new key
under `new-repository-password`; here, under the repository's exclusive lock, the new key is added
to the repository, the Secret switched to it (recording the old key's id in an annotation, in the
same guarded write), then the old key removed. Each step is idempotent and one stored key opens the
repository at every moment, so a crash anywhere is finished by the next attempt.

restic runs in supervised tasks keyed by object UID, so queue workers return at once. Exclusive work
on a repository (init, probes, prune, forget, key changes) is serialised by `RepositoryLocks`, which
the snapshot forgetter shares. Keys never reach logs, Events, status or restic's argv/environment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from arkd.api.constants import (
    RESTIC_KEY_DATA_KEY,
    RESTIC_KEY_LABEL,
    ResticRepositoryPhase,
    restic_key_secret_name,
)
from arkd.api.duration import format_duration
from arkd.api.meta import format_time
from arkd.api.repository import DEFAULT_MAINTENANCE_FREQUENCY, ResticRepository
from arkd.config import ServerSettings
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import RESTICREPOSITORIES
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import at_least_version, object_key
from arkd.kube.clock import Clock
from arkd.kube.controller import Controller, Done, RequeueAfter, Result
from arkd.kube.errors import ApiError, Conflict, NotFound
from arkd.kube.patch import guarded_merge_patch, status_merge_patch
from arkd.kube.resource import SECRETS
from arkd.kube.tasks import TaskSupervisor
from arkd.kube.workqueue import WorkQueue
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError
from arkd.restic.errors import Reason, ResticError, ResticOutputError
from arkd.restic.messages import Key
from arkd.restic.repository import Repository
from arkd.restic.runner import ResticRunner

log = logging.getLogger("arkd.controllers.restic_repository")

Obj = dict[str, Any]

# -- the key Secret's rotation protocol (shared with `ark restic rotate-key`) ------------------------
# Data key holding the key a rotation switches to; set by the CLI, removed by the server when done.
NEW_KEY_DATA_KEY = "new-repository-password"
# Annotation holding the restic key id of the key a rotation replaced, until it is removed from the
# repository. Key ids are file names in the repository, not secrets.
RETIRED_KEY_ANNOTATION = "ark.heptio.com/restic-retired-key-id"
# Annotation holding why the last rotation attempt failed (no key material); cleared on success.
ROTATION_ERROR_ANNOTATION = "ark.heptio.com/restic-key-rotation-error"

CONFIG_POLL_SECONDS = 5.0
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
SHUTDOWN_GRACE_SECONDS = 30.0
STATUS_WRITE_ATTEMPTS = 3
# How long a rotation waits for the switched Secret to reach watchers before removing the old key.
SECRET_PROPAGATION_SECONDS = 10.0

# Process environment restic may see: cloud credentials and what a Go program needs to run. The
# repository password is never among them (the runner refuses RESTIC_PASSWORD* anyway).
_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "TZ",
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_")
# Ark's cloud-credentials Secret names the Azure account differently from restic; Ark copied them.
_AZURE_ALIASES = (("AZURE_STORAGE_ACCOUNT_ID", "AZURE_ACCOUNT_NAME"), ("AZURE_STORAGE_KEY", "AZURE_ACCOUNT_KEY"))


def restic_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment restic runs with: cloud credentials passed through from `environ`."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    for ark_name, restic_name in _AZURE_ALIASES:
        if ark_name in env and restic_name not in env:
            env[restic_name] = env[ark_name]
    return env


def server_restic_runner(
    settings: ServerSettings, *, launcher: Sequence[str] = (), binary: str = "restic"
) -> ResticRunner:
    """The runner `ark server` uses: passed-through credentials, the cache under the scratch dir."""
    cache_dir = str(Path(settings.scratch_dir) / ".cache" / "restic") if settings.scratch_dir else None
    return ResticRunner(binary, env=restic_environment(), inherit_env=False, cache_dir=cache_dir, launcher=launcher)


class RepositoryLocks:
    """In-process exclusive locks, one per repository (named after its volume namespace).

    restic's own locks stop a prune from running beside a backup; these stop the server from
    running two of its own exclusive operations (init, prune, forget, key changes) on one
    repository at once, where restic would fail one of them with "repository is already locked".
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._users[name] = self._users.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name]
                del self._locks[name]

    def locked(self, name: str) -> bool:
        lock = self._locks.get(name)
        return lock is not None and lock.locked()


class RepositoryProblem(Exception):
    """The repository cannot be used; the message says why and what to do (never a key)."""


def describe_restic_failure(exc: ResticError, identifier: str, secret: str) -> str:
    """A status message for a failed restic run on the repository `identifier`."""
    detail = exc.message
    if exc.reason is Reason.WRONG_PASSWORD:
        return (
            f"the restic key in Secret {secret} does not open the repository at {identifier}: the Secret "
            "was changed, or the repository was made with another key; put the repository's key back "
            "into the Secret (use `ark restic rotate-key` to change keys)"
        )
    if exc.reason is Reason.UNREACHABLE:
        return (
            f"cannot reach the restic repository at {identifier}: {detail}; check the storage endpoint "
            "(Config backupStorageProvider) and the network"
        )
    if exc.reason is Reason.PERMISSION_DENIED:
        return (
            f"access to the restic repository at {identifier} was denied: {detail}; check the cloud "
            "credentials of the ark server"
        )
    if exc.reason is Reason.LOCKED:
        return f"the restic repository at {identifier} is locked by another operation: {detail}"
    if exc.reason is Reason.BINARY_NOT_FOUND:
        return detail
    return f"restic failed on the repository at {identifier}: {detail}"


# Failures that make a repository unusable for backups (as opposed to a maintenance step failing).
_ACCESS_FAILURES = frozenset(
    {Reason.WRONG_PASSWORD, Reason.UNREACHABLE, Reason.PERMISSION_DENIED, Reason.REPOSITORY_NOT_FOUND}
)


class Backoff:
    """Per-name exponential retry delays, in memory (a restarted server simply retries at once)."""

    def __init__(self, clock: Clock, base: float = RETRY_BASE_SECONDS, maximum: float = RETRY_MAX_SECONDS) -> None:
        self._clock = clock
        self.base = base
        self.maximum = maximum
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failed(self, name: str, cap: float | None = None) -> float:
        count = self._failures[name] = self._failures.get(name, 0) + 1
        delay = min(self.base * float(2 ** min(count - 1, 30)), self.maximum)
        if cap is not None:
            delay = min(delay, max(cap, self.base))
        self._until[name] = self._clock.now() + delay
        return delay

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
        self._until.pop(name, None)

    def wait(self, name: str) -> float:
        return max(0.0, self._until.get(name, 0.0) - self._clock.now())

    def retry_now(self) -> None:
        """Forget pending delays (not counts), e.g. after the Config changed."""
        self._until.clear()


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or ResticRepositoryPhase.NEW.value)


def _decode_key(secret: Obj, data_key: str) -> bytes | None:
    encoded = (secret.get("data") or {}).get(data_key)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


class ResticRepositoryController:
    def __init__(
        self,
        ctx: ServerContext,
        *,
        locks: RepositoryLocks | None = None,
        runner: ResticRunner | None = None,
        workers: int = 2,
        retry_base: float = RETRY_BASE_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.locks = locks or RepositoryLocks()
        self.runner = runner or server_restic_runner(ctx.settings)
        ns = ctx.namespace
        self.repositories = ctx.informers.get(RESTICREPOSITORIES, ns)
        self.secrets = ctx.informers.get(SECRETS, ns, label_selector=RESTIC_KEY_LABEL)
        # No cache: a key is always read from the API server, so a rotation is never undone by a
        # stale copy.
        self.keys = RepositoryKeys(ctx.client, ns)
        self.tasks = TaskSupervisor("restic-repository")
        self.queue = WorkQueue(clock=ctx.clock)
        self.key_queue = WorkQueue(clock=ctx.clock)
        self.controller = Controller(
            "restic-repository",
            self.queue,
            self.reconcile,
            workers=workers,
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self.key_controller = Controller(
            "restic-key-rotation",
            self.key_queue,
            self.reconcile_key,
            workers=1,
            metrics=ctx.controller_metrics,
            clock=ctx.clock,
        )
        self._backoff = Backoff(ctx.clock, retry_base, retry_max)
        self._maintenance_backoff = Backoff(ctx.clock, retry_base, retry_max)
        self._key_backoff = Backoff(ctx.clock, retry_base, retry_max)
        # Repository name -> (identifier, key Secret resourceVersion) last proven to open it.
        self._verified: dict[str, tuple[str, str]] = {}
        self._cancels: set[asyncio.Task[None]] = set()
        self.repositories.add_handler(
            on_add=self._enqueue, on_update=lambda _old, new: self._enqueue(new), on_delete=self._on_delete
        )
        self.secrets.add_handler(
            on_add=self._on_secret, on_update=lambda _old, new: self._on_secret(new), on_delete=self._on_secret
        )
        ctx.config.subscribe(lambda _config: self._on_config())

    async def run(self) -> None:
        """Run until cancelled; restic runs in flight are interrupted then (SIGINT, restic unlocks)."""
        await asyncio.gather(self.repositories.wait_synced(), self.secrets.wait_synced())
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.controller.run(), name="restic-repository")
                group.create_task(self.key_controller.run(), name="restic-key-rotation")
        finally:
            await self.tasks.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)

    # -- event handlers --------------------------------------------------------------------------------
    def _enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    def _on_delete(self, obj: Obj) -> None:
        name = str(_meta(obj).get("name") or "")
        self._verified.pop(name, None)
        self._backoff.succeeded(name)
        self._maintenance_backoff.succeeded(name)
        with contextlib.suppress(KeyError):
            self.ctx.metrics.repo_ready.remove(name)
        uid = str(_meta(obj).get("uid") or "")
        if self.tasks.running(uid):
            # Nobody wants the result any more; restic is interrupted (SIGINT, it releases its lock).
            task = asyncio.create_task(self.tasks.cancel(uid))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    def _on_secret(self, secret: Obj) -> None:
        self.key_queue.add(object_key(secret))
        volume_ns = str((_meta(secret).get("labels") or {}).get(RESTIC_KEY_LABEL) or "")
        if volume_ns:
            self.queue.add(f"{self.ctx.namespace}/{volume_ns}")

    def _on_config(self) -> None:
        self._backoff.retry_now()
        self._key_backoff.retry_now()
        for obj in self.repositories.cache.list():
            self._enqueue(obj)
        for secret in self.secrets.cache.list():
            self.key_queue.add(object_key(secret))

    def _start(self, uid: str, key: str, queue: WorkQueue, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` as a supervised task; when it ends, reconcile `key` again.

        Expected failures are handled (and backed off) inside `work`; anything else (the API server
        unreachable, say) requeues with the queue's rate-limited backoff instead of at once.
        """
        failed = False

        async def body() -> None:
            nonlocal failed
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = True
                log.error("restic repository task failed", extra={"key": key, "error": f"{type(exc).__name__}: {exc}"})

        def on_exit(_uid: str) -> None:
            if failed:
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
                queue.add(key)

        self.tasks.start(uid, body, on_exit=on_exit)

    # -- repository reconcile ---------------------------------------------------------------------------
    async def reconcile(self, key: str) -> Result:
        obj = self.repositories.cache.get(key)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return Done()
        name = str(_meta(obj)["name"])
        uid = str(_meta(obj).get("uid") or "")
        self.ctx.metrics.repo_ready.labels(name).set(1 if _phase(obj) == ResticRepositoryPhase.READY else 0)
        if self.tasks.running(uid):
            return Done()  # the task requeues the key when it ends
        config = self.ctx.config.current
        if config is None:
            log.info("waiting for a valid Config before managing restic repositories")
            return RequeueAfter(CONFIG_POLL_SECONDS)
        try:
            repo = ResticRepository.from_obj(obj)
        except ValidationError as exc:
            log.error("unreadable ResticRepository", extra={"key": key, "error": str(exc)})
            return Done()
        spec = await self._spec_defaults(obj, repo, name, config)
        if spec is None:
            return Done()  # restic disabled: NotReady until the Config changes
        identifier, frequency = spec
        phase = repo.phase
        if phase != ResticRepositoryPhase.READY:
            wait = self._backoff.wait(name)
            if wait > 0:
                return RequeueAfter(wait)
            self._start(uid, key, self.queue, lambda: self._ensure(name, uid, identifier))
            return Done()
        marker = (identifier, self._secret_version(name))
        if self._verified.get(name) != marker:
            self._start(uid, key, self.queue, lambda: self._verify(name, uid, identifier))
            return Done()
        due = self._maintenance_due_in(repo, frequency)
        wait = max(due, self._maintenance_backoff.wait(name))
        if wait > 0:
            return RequeueAfter(wait)
        last = repo.status.last_maintenance_time
        self._start(uid, key, self.queue, lambda: self._maintain(name, uid, identifier, last))
        return Done()

    async def _spec_defaults(
        self, obj: Obj, repo: ResticRepository, name: str, config: ArkConfig
    ) -> tuple[str, datetime.timedelta] | None:
        """Fill in the identifier and maintenance frequency; None when restic is disabled."""
        patch: Obj = {}
        identifier = repo.spec.restic_identifier or ""
        if not identifier:
            try:
                identifier = config.restic_identifier(name)
            except ValueError as exc:
                message = str(exc)
                status = obj.get("status") or {}
                if status.get("phase") != ResticRepositoryPhase.NOT_READY or status.get("message") != message:
                    updated = await self._set_status(
                        name, str(_meta(obj).get("uid") or ""), ResticRepositoryPhase.NOT_READY, message
                    )
                    if updated is not None:
                        self.ctx.recorder.record(updated, "Warning", "RepositoryNotReady", message)
                return None
            patch["resticIdentifier"] = identifier
        frequency = repo.spec.maintenance_frequency_timedelta
        if frequency is None or frequency <= datetime.timedelta(0):
            frequency = DEFAULT_MAINTENANCE_FREQUENCY
            patch["maintenanceFrequency"] = format_duration(frequency)
        if patch:
            await self.ctx.client.patch(
                RESTICREPOSITORIES, name, guarded_merge_patch(obj, {"spec": patch}), self.ctx.namespace
            )
            log.info("restic repository spec defaulted", extra={"repository": name, **patch})
        return identifier, frequency

    def _secret_version(self, name: str) -> str:
        secret = self.secrets.cache.get(f"{self.ctx.namespace}/{restic_key_secret_name(name)}")
        return str(_meta(secret).get("resourceVersion") or "") if secret is not None else ""

    def _maintenance_due_in(self, repo: ResticRepository, frequency: datetime.timedelta) -> float:
        last = repo.status.last_maintenance_time
        if last is None:
            return 0.0
        return (last + frequency - self.ctx.clock.wall()).total_seconds()

    def _repository(self, identifier: str, key: bytes) -> Repository:
        return Repository(identifier, key, self.runner)

    def _secret_ref(self, name: str) -> str:
        return f"{self.ctx.namespace}/{restic_key_secret_name(name)}"

    async def _key_for_new_repository(self, name: str, identifier: str) -> bytes:
        """The namespace's key; creates a random one only where no repository exists yet."""
        try:
            return await self.keys.get(name)
        except ResticKeyError as exc:
            try:
                await self.ctx.client.get(SECRETS, restic_key_secret_name(name), self.ctx.namespace)
            except NotFound:
                pass
            else:
                raise RepositoryProblem(str(exc)) from None  # the Secret exists but is unusable
            missing = exc
        if await self._exists_without_key(identifier):
            raise RepositoryProblem(
                f"a restic repository already exists at {identifier} but there is no key for it (Secret "
                f"{self._secret_ref(name)} does not exist); store the repository's key with `ark restic "
                f"init-repository --namespace {name} --key-file FILE` (or create that Secret with data key "
                f"{RESTIC_KEY_DATA_KEY} and label {RESTIC_KEY_LABEL}={name})"
            )
        if self.ctx.settings.require_restic_keys:
            raise RepositoryProblem(str(missing))
        return await self.keys.ensure(name)

    async def _exists_without_key(self, identifier: str) -> bool:
        # A throwaway password tells "no repository" (not found) from "a repository" (wrong password).
        probe = self._repository(identifier, secrets.token_bytes(32).hex().encode())
        try:
            return await probe.exists()
        except ResticError as exc:
            if exc.reason is Reason.WRONG_PASSWORD:
                return True
            raise

    async def _ensure(self, name: str, uid: str, identifier: str) -> None:
        """New or NotReady: probe, initialise when missing, then Ready or NotReady."""
        async with self.locks.exclusive(name):
            current = await self._fresh(name, uid)
            if current is None:
                return
            version = self._secret_version(name)
            created = False
            try:
                key = await self._key_for_new_repository(name, identifier)
                created = await self._repository(identifier, key).ensure()
            except (RepositoryProblem, ResticKeyError) as exc:
                await self._not_ready(name, uid, str(exc))
                return
            except ResticError as exc:
                await self._not_ready(name, uid, describe_restic_failure(exc, identifier, self._secret_ref(name)))
                return
            except ApiError as exc:
                await self._not_ready(
                    name, uid, f"cannot read or create the key Secret {self._secret_ref(name)}: {exc}"
                )
                return
            self._backoff.succeeded(name)
            self._verified[name] = (identifier, version)
            first_use = _phase(current) == ResticRepositoryPhase.NEW
            message = f"restic repository initialised at {identifier}" if created else None
            updated = await self._set_status(
                name, uid, ResticRepositoryPhase.READY, message, maintained=self._now() if first_use else None
            )
            if updated is not None:
                if created:
                    log.info("restic repository initialised", extra={"repository": name, "identifier": identifier})
                    self.ctx.recorder.record(updated, "Normal", "RepositoryInitialized", message or "")
                self.ctx.recorder.record(
                    updated, "Normal", "RepositoryReady", f"restic repository {identifier} is ready"
                )

    async def _verify(self, name: str, uid: str, identifier: str) -> None:
        """Ready: prove the (possibly changed) key still opens the repository."""
        async with self.locks.exclusive(name):
            if await self._fresh(name, uid) is None:
                return
            version = self._secret_version(name)
            try:
                key = await self.keys.get(name)
                exists = await self._repository(identifier, key).exists()
            except ResticKeyError as exc:
                await self._not_ready(name, uid, str(exc))
                return
            except ResticError as exc:
                await self._not_ready(name, uid, describe_restic_failure(exc, identifier, self._secret_ref(name)))
                return
            if not exists:
                await self._not_ready(
                    name,
                    uid,
                    f"the restic repository at {identifier} no longer exists (its snapshots are gone); "
                    "it will be initialised again",
                )
                return
            self._verified[name] = (identifier, version)
            log.debug("restic repository verified", extra={"repository": name})

    async def _maintain(self, name: str, uid: str, identifier: str, last: datetime.datetime | None) -> None:
        """Ready and due: unlock (stale locks only), prune, check."""
        async with self.locks.exclusive(name):
            current = await self._fresh(name, uid)
            if current is None or _phase(current) != ResticRepositoryPhase.READY:
                return
            if ResticRepository.from_obj(current).status.last_maintenance_time != last:
                return  # someone else maintained it meanwhile; reconcile again
            started = self.ctx.clock.now()
            log.info("restic repository maintenance started", extra={"repository": name})
            step = "unlock"
            try:
                repository = self._repository(identifier, await self.keys.get(name))
                before = set(await repository.locks())
                await repository.unlock()
                removed = len(before - set(await repository.locks()))
                step = "prune"
                await repository.prune()
                step = "check"
                await repository.check()
            except ResticKeyError as exc:
                self._record_maintenance(name, started, ok=False)
                await self._not_ready(name, uid, str(exc))
                return
            except (ResticError, ResticOutputError) as exc:
                self._record_maintenance(name, started, ok=False)
                await self._maintenance_failed(name, uid, identifier, step, exc)
                return
            self._record_maintenance(name, started, ok=True)
            self._maintenance_backoff.succeeded(name)
            now = self._now()
            locks_note = f"; removed {removed} stale lock(s)" if removed else ""
            message = f"maintenance (unlock, prune, check) succeeded at {format_time(now)}{locks_note}"
            updated = await self._set_status(name, uid, ResticRepositoryPhase.READY, message, maintained=now)
            log.info(
                "restic repository maintenance succeeded", extra={"repository": name, "stale_locks_removed": removed}
            )
            if updated is not None:
                self.ctx.recorder.record(updated, "Normal", "MaintenanceSucceeded", message)

    def _record_maintenance(self, name: str, started: float, *, ok: bool) -> None:
        self.ctx.metrics.repo_maintenance.labels(name, "success" if ok else "failure").inc()
        self.ctx.metrics.repo_maintenance_duration.observe(max(0.0, self.ctx.clock.now() - started))

    async def _maintenance_failed(
        self, name: str, uid: str, identifier: str, step: str, exc: ResticError | ResticOutputError
    ) -> None:
        if isinstance(exc, ResticError):
            detail = describe_restic_failure(exc, identifier, self._secret_ref(name))
            if exc.reason in _ACCESS_FAILURES:
                await self._not_ready(name, uid, f"maintenance failed at restic {step}: {detail}")
                return
        else:
            detail = str(exc)
        current = await self._fresh(name, uid)
        frequency = DEFAULT_MAINTENANCE_FREQUENCY
        if current is not None:
            frequency = ResticRepository.from_obj(current).spec.maintenance_frequency_timedelta or frequency
        delay = self._maintenance_backoff.failed(name, cap=frequency.total_seconds())
        message = (
            f"maintenance failed at restic {step} ({format_time(self._now())}): {detail}; "
            f"retrying in {_human_delay(delay)}"
        )
        log.warning("restic repository maintenance failed", extra={"repository": name, "step": step, "error": detail})
        updated = await self._set_status(name, uid, ResticRepositoryPhase.READY, message)
        if updated is not None:
            self.ctx.recorder.record(updated, "Warning", "MaintenanceFailed", message)

    async def _not_ready(self, name: str, uid: str, message: str) -> None:
        delay = self._backoff.failed(name)
        self._verified.pop(name, None)
        log.warning("restic repository not ready", extra={"repository": name, "error": message, "retry_in": delay})
        updated = await self._set_status(name, uid, ResticRepositoryPhase.NOT_READY, message)
        if updated is not None:
            self.ctx.recorder.record(updated, "Warning", "RepositoryNotReady", message)

    # -- status --------------------------------------------------------------------------------------
    def _now(self) -> datetime.datetime:
        return self.ctx.clock.wall().replace(microsecond=0)

    async def _fresh(self, name: str, uid: str) -> Obj | None:
        """The object from the API server, or None when it is gone or was re-created."""
        try:
            obj = await self.ctx.client.get(RESTICREPOSITORIES, name, self.ctx.namespace)
        except NotFound:
            return None
        return obj if not uid or str(_meta(obj).get("uid") or "") == uid else None

    async def _set_status(
        self,
        name: str,
        uid: str,
        phase: ResticRepositoryPhase,
        message: str | None,
        *,
        maintained: datetime.datetime | None = None,
    ) -> Obj | None:
        """Write phase, message (None clears it) and lastMaintenanceTime; skip when nothing changes."""
        self.ctx.metrics.repo_ready.labels(name).set(1 if phase == ResticRepositoryPhase.READY else 0)
        for _ in range(STATUS_WRITE_ATTEMPTS):
            obj = await self._fresh(name, uid)
            if obj is None:
                return None
            status = obj.get("status") or {}
            wanted: Obj = {"phase": phase.value, "message": message}
            if maintained is not None:
                wanted["lastMaintenanceTime"] = format_time(maintained)
            if all(status.get(k) == v for k, v in wanted.items()):
                return obj
            try:
                return await self.ctx.client.patch(
                    RESTICREPOSITORIES,
                    name,
                    status_merge_patch(obj, wanted),
                    self.ctx.namespace,
                    subresource="status",
                )
            except Conflict:
                continue
        log.warning("could not write ResticRepository status after conflicts", extra={"repository": name})
        return None

    # -- key rotation ---------------------------------------------------------------------------------
    async def reconcile_key(self, key: str) -> Result:
        secret = self.secrets.cache.get(key)
        if secret is None:
            return Done()
        volume_ns = str((_meta(secret).get("labels") or {}).get(RESTIC_KEY_LABEL) or "")
        pending = NEW_KEY_DATA_KEY in (secret.get("data") or {})
        retired = RETIRED_KEY_ANNOTATION in (_meta(secret).get("annotations") or {})
        if not volume_ns or not (pending or retired):
            self._key_backoff.succeeded(key)
            return Done()
        uid = f"rotation:{_meta(secret).get('uid') or key}"
        if self.tasks.running(uid):
            return Done()
        wait = self._key_backoff.wait(key)
        if wait > 0:
            return RequeueAfter(wait)
        self._start(uid, key, self.key_queue, lambda: self._rotate(key, volume_ns))
        return Done()

    async def _rotate(self, key: str, volume_ns: str) -> None:
        name = restic_key_secret_name(volume_ns)
        async with self.locks.exclusive(volume_ns):
            try:
                outcome = await self._rotate_locked(name, volume_ns)
            except Conflict:
                return  # the Secret changed meanwhile; its event requeues the key
            except (RepositoryProblem, ResticError, ResticOutputError, ApiError) as exc:
                await self._rotation_failed(key, name, volume_ns, exc)
                return
        self._key_backoff.succeeded(key)
        if outcome is None:
            return
        log.info("restic key rotated", extra={"volume_namespace": volume_ns, "outcome": outcome})
        repo = await self._fresh(volume_ns, "")
        if repo is not None:
            updated = await self._set_message(repo, outcome)
            self.ctx.recorder.record(updated or repo, "Normal", "KeyRotated", outcome)
        else:
            secret = self.secrets.cache.get(key)
            if secret is not None:
                self.ctx.recorder.record(secret, "Normal", "KeyRotated", outcome)

    async def _rotate_locked(self, name: str, volume_ns: str) -> str | None:
        """One rotation attempt; returns the outcome to report, None when there was nothing to do."""
        try:
            secret = await self.ctx.client.get(SECRETS, name, self.ctx.namespace)
        except NotFound:
            return None
        annotations = _meta(secret).get("annotations") or {}
        pending = NEW_KEY_DATA_KEY in (secret.get("data") or {})
        retired_id = str(annotations.get(RETIRED_KEY_ANNOTATION) or "")
        if not pending and not retired_id:
            return None
        ref = f"{self.ctx.namespace}/{name}"
        current = _decode_key(secret, RESTIC_KEY_DATA_KEY)
        if current is None:
            raise RepositoryProblem(f"Secret {ref} has no valid {RESTIC_KEY_DATA_KEY!r}; the rotation cannot start")
        identifier = self._identifier_for(volume_ns)
        removed: list[str] = []
        outcome = f"restic key rotation finished at {format_time(self._now())}"
        if retired_id:  # left by an earlier rotation that stopped before removing it
            secret = await self._retire(secret, identifier, current, retired_id)
            removed.append(retired_id)
        if pending:
            new = _decode_key(secret, NEW_KEY_DATA_KEY)
            if new is None:
                raise RepositoryProblem(
                    f"Secret {ref} data key {NEW_KEY_DATA_KEY!r} is empty or not valid base64; store the new "
                    "key again with `ark restic rotate-key`"
                )
            secret, retired_id, outcome = await self._switch(secret, ref, identifier, current, new)
            if retired_id:
                secret = await self._retire(secret, identifier, new, retired_id)
                removed.append(retired_id)
        if removed:
            outcome += f"; old key {', '.join(removed)} removed from the repository"
        return outcome

    def _identifier_for(self, volume_ns: str) -> str:
        repo = self.repositories.cache.get(f"{self.ctx.namespace}/{volume_ns}")
        identifier = str(((repo or {}).get("spec") or {}).get("resticIdentifier") or "")
        if identifier:
            return identifier
        config = self.ctx.config.current
        if config is None:
            raise RepositoryProblem("waiting for a valid Config before rotating restic keys")
        try:
            return config.restic_identifier(volume_ns)
        except ValueError as exc:
            raise RepositoryProblem(f"the restic key cannot be rotated: {exc}") from None

    async def _switch(self, secret: Obj, ref: str, identifier: str, current: bytes, new: bytes) -> tuple[Obj, str, str]:
        """Add the new key to the repository and make it the Secret's key; returns the updated
        Secret, the id of the key to remove ("" if none) and the outcome."""
        when = format_time(self._now())
        if new == current:
            return await self._write_switch(secret, new, ""), "", f"the new restic key equals the current one ({when})"
        old_repo = self._repository(identifier, current)
        try:
            exists = await old_repo.exists()
        except ResticError as exc:
            if exc.reason is not Reason.WRONG_PASSWORD:
                raise
            # The stored key does not open the repository; switching is safe only if the new one does.
            if not await self._opens(identifier, new):
                raise RepositoryProblem(
                    f"neither the current key nor the new key in Secret {ref} opens the repository at "
                    f"{identifier}; nothing was changed"
                ) from None
            updated = await self._write_switch(secret, new, "")
            return updated, "", f"restic key switched at {when} (the previous key did not open the repository)"
        if not exists:
            updated = await self._write_switch(secret, new, "")
            return updated, "", f"restic key replaced at {when} (no repository existed yet)"
        old_id = _current_key_id(await old_repo.key_list())
        new_repo = old_repo.with_password(new)
        try:
            new_id = _current_key_id(await new_repo.key_list())  # added by an interrupted attempt
        except ResticError as exc:
            if exc.reason is not Reason.WRONG_PASSWORD:
                raise
            new_id = await old_repo.key_add(new)
        retired = old_id if old_id != new_id else ""
        updated = await self._write_switch(secret, new, retired)
        return updated, retired, f"restic key rotated at {when}: new key {new_id} added"

    async def _opens(self, identifier: str, key: bytes) -> bool:
        try:
            return await self._repository(identifier, key).exists()
        except ResticError as exc:
            if exc.reason is Reason.WRONG_PASSWORD:
                return False
            raise

    async def _write_switch(self, secret: Obj, new: bytes, retired_id: str) -> Obj:
        """The Secret's key becomes `new` in one resourceVersion-guarded write."""
        patch: Obj = {
            "metadata": {"annotations": {RETIRED_KEY_ANNOTATION: retired_id or None, ROTATION_ERROR_ANNOTATION: None}},
            "data": {RESTIC_KEY_DATA_KEY: _encode_key(new), NEW_KEY_DATA_KEY: None},
        }
        name = str(_meta(secret)["name"])
        updated = await self.ctx.client.patch(SECRETS, name, guarded_merge_patch(secret, patch), self.ctx.namespace)
        # Let watchers (node agents) see the new key before the old one stops working.
        await self.secrets.cache.wait_for(
            f"{self.ctx.namespace}/{name}",
            at_least_version(str(_meta(updated).get("resourceVersion") or "")),
            SECRET_PROPAGATION_SECONDS,
        )
        return updated

    async def _retire(self, secret: Obj, identifier: str, current: bytes, retired_id: str) -> Obj:
        """Remove the replaced key from the repository, then its id from the Secret."""
        try:
            await self._repository(identifier, current).key_remove(retired_id)
        except ResticError as exc:
            if exc.reason not in (Reason.ID_NOT_FOUND, Reason.REPOSITORY_NOT_FOUND):
                raise
        patch = {"metadata": {"annotations": {RETIRED_KEY_ANNOTATION: None, ROTATION_ERROR_ANNOTATION: None}}}
        return await self.ctx.client.patch(
            SECRETS, str(_meta(secret)["name"]), guarded_merge_patch(secret, patch), self.ctx.namespace
        )

    async def _set_message(self, repo: Obj, message: str) -> Obj | None:
        try:
            return await self.ctx.client.patch(
                RESTICREPOSITORIES,
                str(_meta(repo)["name"]),
                status_merge_patch(repo, {"message": message}),
                self.ctx.namespace,
                subresource="status",
            )
        except ApiError as exc:
            log.warning("could not record the key rotation in status", extra={"error": str(exc)})
            return None

    async def _rotation_failed(self, key: str, name: str, volume_ns: str, exc: Exception) -> None:
        if isinstance(exc, ResticError):
            identifier = self._identifier_or_unknown(volume_ns)
            message = describe_restic_failure(exc, identifier, f"{self.ctx.namespace}/{name}")
        else:
            message = str(exc)
        delay = self._key_backoff.failed(key)
        message = f"restic key rotation failed: {message}; retrying in {_human_delay(delay)}"
        log.warning("restic key rotation failed", extra={"volume_namespace": volume_ns, "error": message})
        with contextlib.suppress(ApiError):
            await self.ctx.client.patch(
                SECRETS, name, {"metadata": {"annotations": {ROTATION_ERROR_ANNOTATION: message}}}, self.ctx.namespace
            )
        repo = await self._fresh(volume_ns, "")
        target = (await self._set_message(repo, message) or repo) if repo is not None else self.secrets.cache.get(key)
        if target is not None:
            self.ctx.recorder.record(target, "Warning", "KeyRotationFailed", message)

    def _identifier_or_unknown(self, volume_ns: str) -> str:
        try:
            return self._identifier_for(volume_ns)
        except RepositoryProblem:
            return f"<restic repository of {volume_ns}>"


def _human_delay(seconds: float) -> str:
    return format_duration(datetime.timedelta(seconds=round(seconds)))


def _current_key_id(keys: Sequence[Key]) -> str:
    current = [k.id for k in keys if k.current]
    if len(current) != 1:
        raise ResticOutputError(f"restic key list marks {len(current)} keys as the one in use, expected 1")
    return str(current[0])
