"""One run of a Restore: download and check the tarball, re-create its items, restore pod volumes.

A run is a supervised task (DESIGN convention 5) and is safe to start again from the top (a new
server after a crash): objects that exist are left alone, PodVolumeRestores have deterministic
names and are reused, and a pod created by an earlier attempt of the same Restore is recognised by
its `restic-wait` init container, which names the Restore's UID.

Order: the tarball is downloaded and extracted completely before anything is created, so a corrupt
or unsafe archive creates nothing. Group-resources go in Config.resourcePriorities order, then the
rest alphabetically; one finishes before the next starts, and the items of one are created with
bounded concurrency. Target namespaces are created on first use, from the backed-up Namespace
object when the backup has it. Pods with restic snapshots get `restic-wait` first among their
init containers, and one PodVolumeRestore per volume once created; the run then waits for all of
them (tracker futures) within the pod volume timeout. Results and the restore's log go to the
backup's directory in object storage, then the final status is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from arkd.api.constants import (
    API_VERSION,
    POD_UID_LABEL,
    POD_VOLUME_RESTORE_KIND,
    POD_VOLUME_TIMEOUT_ANNOTATION,
    RESTORE_KIND,
    RESTORE_LABEL,
    RESTORE_NAME_LABEL,
    RESTORE_UID_LABEL,
    PodVolumeRestorePhase,
    RestorePhase,
)
from arkd.api.duration import format_duration, parse_duration
from arkd.api.meta import format_time, validation_messages
from arkd.api.restore import Restore
from arkd.backup.filters import (
    WILDCARD,
    FilterValidationError,
    IncludesExcludes,
    LabelSelector,
    spec_filters,
)
from arkd.backup.tarball import gzip_bytes, gzip_json
from arkd.controllers.config import ArkConfig
from arkd.controllers.resources import PODVOLUMERESTORES, RESTORES
from arkd.controllers.runlog import RunLog
from arkd.controllers.runtime import ServerContext
from arkd.kube.cache import at_least_version
from arkd.kube.discovery import discover, server_groups
from arkd.kube.errors import AlreadyExists, ApiError, Conflict, NotFound
from arkd.kube.informer import Informer
from arkd.kube.patch import guarded_merge_patch, status_merge_patch
from arkd.kube.resource import NAMESPACES, Resource
from arkd.log import bind
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError
from arkd.podvolume.tracker import PodVolumeTracker, is_terminal, phase_of
from arkd.restore.actions import (
    PVS,
    RESTIC_WAIT_CONTAINER,
    SERVICE_ACCOUNTS,
    PVDecision,
    add_restic_wait_init_container,
    has_controller_owner,
    merge_service_accounts,
    namespace_for_restore,
    prepare_item,
    pv_decision,
    skip_reason,
    snapshot_annotations,
    target_namespace,
)
from arkd.restore.ordering import non_restorable_errors, prioritize_resources
from arkd.restore.results import RestoreResults
from arkd.restore.tarball import BackupContents, BackupTarballError, extract_tarball_stream
from arkd.storage import ObjectNotFound, StorageError
from arkd.storage.layout import backup_tarball_key, restore_log_key, restore_results_key

log = logging.getLogger("arkd.controllers.restore")

Obj = dict[str, Any]
T = TypeVar("T")

PODS = "pods"
NAMESPACES_GR = "namespaces"
MAX_LABEL_VALUE = 63
MAX_NAME_LENGTH = 253
SUMMARY_ERRORS = 3
SUMMARY_VOLUMES = 20
_HASH_LENGTH = 10
_FINAL_PATCH_ATTEMPTS = 5
_CACHE_CATCH_UP_SECONDS = 10.0
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------- names and labels


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def label_value(value: str) -> str:
    """`value` when it fits a label value, else a shortened form with a hash suffix."""
    if len(value) <= MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return f"{value[: MAX_LABEL_VALUE - 7].rstrip('.-_')}-{digest}"


def pod_volume_restore_name(restore_name: str, pod_namespace: str, pod_name: str, volume: str) -> str:
    """A deterministic PodVolumeRestore name, `<restore>-<hash of restore, pod namespace, pod, volume>`.

    A re-run of the same Restore hits AlreadyExists and reuses the object instead of doubling the work.
    """
    if not restore_name:
        raise ValueError("a PodVolumeRestore name needs the restore name, got an empty string")
    identity = "\x00".join((restore_name, pod_namespace, pod_name, volume))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = restore_name[: MAX_NAME_LENGTH - _HASH_LENGTH - 1].rstrip(".-")
    return f"{prefix}-{digest}" if prefix else digest


def restore_phase(obj: Obj) -> str:
    return str(_status(obj).get("phase") or RestorePhase.NEW.value)


# --------------------------------------------------------------------------- what to restore


@dataclass(frozen=True)
class RestorePlan:
    """A Restore's spec, resolved against the server's resources and validated."""

    backup_name: str
    namespaces: IncludesExcludes
    resources: IncludesExcludes
    selector: LabelSelector
    namespace_mapping: dict[str, str]
    restore_pvs: bool | None
    include_cluster_resources: bool | None


def _mapping_errors(mapping: dict[str, str]) -> list[str]:
    errors: list[str] = []
    for source, target in sorted(mapping.items()):
        for what, value in (("source", source), ("target", target)):
            if len(value) > MAX_LABEL_VALUE or not _DNS_LABEL.match(value):
                errors.append(
                    f"invalid namespaceMapping {source!r}: {target!r}: the {what} {value!r} is not a valid "
                    "namespace name (1-63 lowercase alphanumerics or '-', starting and ending with an "
                    "alphanumeric)"
                )
    return errors


def plan_restore(obj: Obj, resources: Sequence[Resource]) -> RestorePlan:
    """The plan of `obj`; FilterValidationError with every problem at once when the spec is invalid."""
    try:
        restore = Restore.from_obj(obj)
    except ValidationError as exc:
        raise FilterValidationError(validation_messages(exc, "Restore")) from None
    spec = restore.spec
    errors: list[str] = []
    if not spec.backup_name:
        errors.append("spec.backupName is required: name the Backup to restore from (`ark backup get` lists them)")
    filters = spec_filters(_spec(obj), resources, errors)
    errors.extend(non_restorable_errors(gr for gr in filters.resources.includes if gr != WILDCARD))
    mapping = dict(spec.namespace_mapping or {})
    errors.extend(_mapping_errors(mapping))
    if errors:
        raise FilterValidationError(errors)
    return RestorePlan(
        backup_name=str(spec.backup_name),
        namespaces=filters.namespaces,
        resources=filters.resources,
        selector=filters.selector,
        namespace_mapping=mapping,
        restore_pvs=spec.restore_pvs,
        include_cluster_resources=spec.include_cluster_resources,
    )


# --------------------------------------------------------------------------- the restore's own log


# --------------------------------------------------------------------------- the run


@dataclass
class RunDeps:
    """What a run needs from its controller."""

    ctx: ServerContext
    restores: Informer
    backups: Informer
    tracker: PodVolumeTracker


@dataclass(frozen=True)
class _Volume:
    """A PodVolumeRestore this run created (or found from an earlier attempt)."""

    pvr: str
    volume: str
    pod: str  # "namespace/name" of the restored pod
    namespace: str  # target namespace, where results about it go


@dataclass
class _Scope:
    """What the items of one run are restored with."""

    plan: RestorePlan
    contents: BackupContents
    config: ArkConfig
    backup: Obj
    served: dict[str, set[str]] = field(default_factory=dict)


class _Fatal(Exception):
    """The restore cannot go on; the message becomes failureReason."""


def summarize(errors: Sequence[str], noun: str = "error") -> str:
    shown = "; ".join(errors[:SUMMARY_ERRORS])
    more = len(errors) - SUMMARY_ERRORS
    suffix = f"; and {more} more (see `ark restore describe` and the restore results)" if more > 0 else ""
    return f"{len(errors)} {noun}{'s' if len(errors) != 1 else ''}: {shown}{suffix}"


class RestoreRun:
    def __init__(self, deps: RunDeps, restore: Obj, *, resumed: bool) -> None:
        self.deps = deps
        self.ctx = deps.ctx
        self.obj = restore
        meta = _meta(restore)
        self.name = str(meta.get("name") or "")
        self.namespace = str(meta.get("namespace") or "")
        self.uid = str(meta.get("uid") or "")
        self.key = f"{self.namespace}/{self.name}"
        self.backup_name = str(_spec(restore).get("backupName") or "")
        self.resumed = resumed
        self.log = RunLog("restore", self.key, self.uid, self.ctx.clock.wall, log)
        self.results = RestoreResults()
        self.item_errors: list[str] = []
        self.failed_volumes: list[str] = []
        self.restored = 0
        self.volumes: list[_Volume] = []
        # resourceVersion of the final status write; the controller ignores older cached copies.
        self.final_resource_version: str | None = None
        self._started = self.ctx.clock.now()
        self._namespaces: dict[str, asyncio.Task[str | None]] = {}
        self._key_checks: dict[str, asyncio.Task[str | None]] = {}
        self._keys = RepositoryKeys(self.ctx.client, self.namespace)
        self._pvs_to_provision: set[str] = set()

    # -- results ---------------------------------------------------------------------------------------
    def _warn(self, namespace: str | None, message: str, **fields: Any) -> None:
        self.results.warnings.add(namespace, message)
        self.log.warn(message, **fields)

    def _error(self, namespace: str | None, message: str, **fields: Any) -> None:
        self.results.errors.add(namespace, message)
        self.item_errors.append(message)
        self.log.error(message, **fields)

    # -- top level -------------------------------------------------------------------------------------
    async def execute(self) -> None:
        config = await self.ctx.config.wait_ready()
        with bind(restore=self.key, restore_uid=self.uid):
            self.log.attach()
            try:
                fatal: str | None = None
                try:
                    await self._restore(config)
                except _Fatal as exc:
                    fatal = str(exc)
                except Exception as exc:
                    # A bug or an API server gone for good: say so rather than retry forever.
                    log.exception("restore run failed unexpectedly")
                    fatal = f"unexpected error while restoring: {type(exc).__name__}: {exc}"
                await self._finalize(config, fatal)
            finally:
                self.log.detach()

    async def _restore(self, config: ArkConfig) -> None:
        ctx = self.ctx
        self.log.info(
            "resuming restore after a restart" if self.resumed else "starting restore",
            backup=self.backup_name,
            storage=config.store.location,
        )
        backup = self.deps.backups.cache.get(f"{self.namespace}/{self.backup_name}")
        if backup is None:
            raise _Fatal(f"backup {self.backup_name} no longer exists in namespace {self.namespace}")
        try:
            groups = await server_groups(ctx.client)
            resources = await discover(ctx.client, groups=groups)
        except ApiError as exc:
            raise _Fatal(f"cannot discover the cluster's API resources: {exc}") from None
        try:
            plan = plan_restore(self.obj, resources)
        except FilterValidationError as exc:
            raise _Fatal(f"the restore spec is not valid on this cluster: {exc}") from None
        contents = await self._download(config)
        try:
            self.log.info(
                "backup tarball extracted",
                resources=contents.group_resources(),
                ignored_entries=len(contents.ignored),
            )
            scope = _Scope(plan, contents, config, backup, {g.name: set(g.versions) for g in groups})
            await self._restore_items(scope, resources)
            await self._wait_for_volumes(config)
        finally:
            await asyncio.to_thread(contents.cleanup)

    async def _download(self, config: ArkConfig) -> BackupContents:
        store = config.store
        key = backup_tarball_key(self.backup_name)
        try:
            async with contextlib.aclosing(store.get_stream(key)) as chunks:
                return await extract_tarball_stream(chunks)
        except ObjectNotFound:
            raise _Fatal(
                f"the backup tarball {key} is not in {store.location}; the backup's data is missing from object storage"
            ) from None
        except StorageError as exc:
            raise _Fatal(f"cannot download the backup tarball {key} from {store.location}: {exc}") from None
        except BackupTarballError as exc:
            raise _Fatal(f"{exc} (object {key} in {store.location}); nothing was restored") from None

    # -- items -----------------------------------------------------------------------------------------
    async def _restore_items(self, scope: _Scope, resources: Sequence[Resource]) -> None:
        plan, contents = scope.plan, scope.contents
        by_gr = {r.group_resource: r for r in resources}
        priorities = scope.config.config.resource_priorities or []
        ordered = prioritize_resources(contents.group_resources(), priorities, plan.resources)
        everything = plan.namespaces.include_everything()
        for gr in ordered:
            res = by_gr.get(gr)
            if res is None:
                count = sum(len(contents.names(gr, ns)) for ns in [None, *contents.namespaces(gr)])
                self._warn(
                    None,
                    f"resource {gr} in the backup is not served by this cluster (is its CRD or API "
                    f"installed?); its {count} item{'s' if count != 1 else ''} were not restored",
                )
                continue
            if gr == NAMESPACES_GR:
                await self._restore_namespace_objects(scope)
                continue
            jobs: list[tuple[str | None, str]]
            if res.namespaced:
                jobs = [
                    (ns, name)
                    for ns in contents.namespaces(gr)
                    if plan.namespaces.should_include(ns)
                    for name in contents.names(gr, ns)
                ]
            else:
                if plan.include_cluster_resources is False:
                    self.log.info("skipping cluster-scoped resource: includeClusterResources is false", resource=gr)
                    continue
                if plan.include_cluster_resources is None and not everything:
                    self.log.info(
                        "skipping cluster-scoped resource: only specific namespaces are restored",
                        resource=gr,
                    )
                    continue
                jobs = [(None, name) for name in contents.names(gr, None)]
            if not jobs:
                continue
            self.log.info("restoring resource", resource=gr, items=len(jobs))

            async def one(job: tuple[str | None, str], gr: str = gr, res: Resource = res) -> None:
                await self._restore_item(scope, gr, res, job[0], job[1])

            await self._for_each(jobs, one)

    async def _for_each(self, jobs: Sequence[T], fn: Callable[[T], Awaitable[None]]) -> None:
        """Run `fn` over `jobs`, at most `restore_concurrency` at a time; returns when all are done."""
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:
                await fn(job)

        workers = max(1, min(self.ctx.settings.restore_concurrency, len(jobs)))
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())

    async def _restore_namespace_objects(self, scope: _Scope) -> None:
        """Backed-up Namespaces that the filters select are created even when nothing goes into them."""
        for name in scope.contents.names(NAMESPACES_GR, None):
            if not scope.plan.namespaces.should_include(name):
                continue
            try:
                obj = scope.contents.load(NAMESPACES_GR, None, name)
            except BackupTarballError as exc:
                self._error(None, str(exc))
                continue
            if not scope.plan.selector.matches(_meta(obj).get("labels") or {}):
                continue
            target = target_namespace(name, scope.plan.namespace_mapping) or name
            await self._ensure_namespace(scope, target, name)

    async def _ensure_namespace(self, scope: _Scope, target: str, source: str) -> str | None:
        """None once `target` exists and takes new objects; else why not (reported once)."""
        task = self._namespaces.get(target)
        if task is None:
            task = asyncio.create_task(self._make_namespace(scope, target, source), name=f"restore-ns:{target}")
            self._namespaces[target] = task
            problem = await asyncio.shield(task)
            if problem is not None:
                self._error(target, problem)
            return problem
        return await asyncio.shield(task)

    async def _make_namespace(self, scope: _Scope, target: str, source: str) -> str | None:
        client = self.ctx.client
        try:
            existing = await client.get(NAMESPACES, target)
        except NotFound:
            existing = None
        except ApiError as exc:
            return f"cannot read namespace {target}, so nothing was restored into it: {exc}"
        if existing is not None:
            if _meta(existing).get("deletionTimestamp"):
                return (
                    f"namespace {target} is being deleted (Terminating), so nothing was restored into it; "
                    "wait until it is gone, or restore into another namespace with namespaceMapping"
                )
            return None
        backed_up: Obj | None = None
        if scope.contents.has(NAMESPACES_GR, None, source):
            try:
                backed_up = scope.contents.load(NAMESPACES_GR, None, source)
            except BackupTarballError as exc:
                self.log.warn(f"cannot read the backed-up namespace {source}; creating {target} bare: {exc}")
        body = namespace_for_restore(backed_up, target, self.name)
        try:
            await client.create(NAMESPACES, body)
        except AlreadyExists:
            return None
        except ApiError as exc:
            return f"cannot create namespace {target}, so nothing was restored into it: {exc}"
        self.log.info("created namespace", namespace=target, source=source)
        return None

    async def _restore_item(self, scope: _Scope, gr: str, res: Resource, source_ns: str | None, name: str) -> None:
        plan = scope.plan
        target_ns = target_namespace(source_ns, plan.namespace_mapping)
        what = f"{gr} {target_ns}/{name}" if target_ns else f"{gr} {name}"
        try:
            obj = scope.contents.load(gr, source_ns, name)
        except BackupTarballError as exc:
            self._error(target_ns, f"not restored: {exc}")
            return
        if not plan.selector.matches(_meta(obj).get("labels") or {}):
            return
        if gr == PODS and has_controller_owner(obj) and snapshot_annotations(obj) and not scope.config.restic_enabled:
            self._warn(
                target_ns,
                f"not restoring {what}: it has a controller owner, and its restic snapshots of volumes "
                f"{', '.join(sorted(snapshot_annotations(obj)))} cannot be restored because restic is disabled "
                "(Config backupStorageProvider.resticLocation is empty); its controller re-creates it empty",
            )
            return
        reason = skip_reason(gr, obj)
        if reason is not None:
            self.log.info(f"not restoring {what}: {reason}")
            return
        if target_ns and await self._ensure_namespace(scope, target_ns, source_ns or target_ns) is not None:
            return
        if gr == PVS and not self._pv_wanted(scope, obj, what):
            return
        prepared = prepare_item(
            gr, obj, restore_name=self.name, namespace=target_ns, pvs_to_provision=self._pvs_to_provision
        )
        volumes: dict[str, str] = {}
        if gr == PODS:
            prepared, volumes = await self._with_restic_wait(scope, prepared, source_ns or "", what, target_ns)
        target = self._served_version(scope, res, prepared)
        prepared["apiVersion"] = target.api_version
        prepared["kind"] = prepared.get("kind") or res.kind
        client = self.ctx.client
        created: Obj | None
        try:
            created = await client.create(target, prepared, target_ns)
        except AlreadyExists:
            created = await self._exists(gr, target, prepared, target_ns, what, bool(volumes))
        except ApiError as exc:
            self._error(target_ns, f"error restoring {what}: {exc}")
            return
        else:
            self.restored += 1
            self.log.detail("restored", item=what)
        if volumes and created is not None:
            identifier = scope.config.restic_identifier(source_ns or "")
            await self._start_pod_volumes(created, identifier, volumes, target_ns or "")

    def _pv_wanted(self, scope: _Scope, pv: Obj, what: str) -> bool:
        name = str(_meta(pv).get("name") or "")
        snapshots = _status(scope.backup).get("volumeBackups") or {}
        snapshot = snapshots.get(name) if isinstance(snapshots, dict) else None
        decision = pv_decision(
            pv,
            has_snapshot=snapshot is not None,
            restore_pvs=scope.plan.restore_pvs,
            snapshot_volumes=_spec(scope.backup).get("snapshotVolumes"),
        )
        if decision == PVDecision.PROVISION:
            # Reclaim policy Delete and no snapshot: its claims get a fresh volume instead.
            self._pvs_to_provision.add(name)
            self.log.info(
                f"not restoring {what}: its reclaim policy is Delete and it has no snapshot; "
                "its claims are re-provisioned"
            )
            return False
        if decision == PVDecision.RESTORE_FROM_SNAPSHOT:
            snapshot_id = snapshot.get("snapshotID") if isinstance(snapshot, dict) else None
            self._error(
                None,
                f"not restored: {what} has a cloud snapshot ({snapshot_id}) in the backup, and this server "
                "does not restore cloud volume snapshots; set restorePVs: false to re-create it from the "
                "backed-up spec without its data",
            )
            return False
        return True

    async def _with_restic_wait(
        self, scope: _Scope, pod: Obj, source_ns: str, what: str, target_ns: str | None
    ) -> tuple[Obj, dict[str, str]]:
        """The pod with `restic-wait` first, and {volume: snapshot id} to restore; or the pod as it is.

        Volumes whose data cannot be restored (no repository identifier, no restic key) fail up front:
        the pod then starts without them instead of waiting in its init container forever.
        """
        snapshots = snapshot_annotations(pod)
        if not snapshots:
            return pod, {}
        if not scope.config.restic_enabled:
            self._warn(
                target_ns,
                f"{what} has restic snapshots of volumes {', '.join(sorted(snapshots))}, but restic is disabled "
                "(Config backupStorageProvider.resticLocation is empty); restoring the pod without their data",
            )
            return pod, {}
        present = {str(v.get("name")) for v in _spec(pod).get("volumes") or [] if isinstance(v, dict) and v.get("name")}
        for volume in sorted(set(snapshots) - present):
            self._warn(
                target_ns,
                f"volume {volume} of {what} has a restic snapshot ({snapshots[volume]}) but is no longer in the "
                "pod's spec.volumes; not restoring its data",
            )
        wanted = {v: s for v, s in snapshots.items() if v in present}
        if not wanted:
            return pod, {}
        problem: str | None
        try:
            scope.config.restic_identifier(source_ns)
            problem = await self._key_problem(source_ns)
        except ValueError as exc:
            problem = str(exc)
        if problem is not None:
            ref = f"{target_ns}/{_meta(pod).get('name')}"
            for volume in sorted(wanted):
                self._volume_failed(
                    target_ns or "",
                    f"pod volume restore failed: volume {volume} of pod {ref}: {problem}; the pod is restored "
                    "without its data",
                    volume,
                    ref,
                )
            return pod, {}
        helper = add_restic_wait_init_container(pod, self.uid, self.ctx.settings.restore_helper_image, wanted)
        return helper, wanted

    async def _key_problem(self, source_ns: str) -> str | None:
        """Why the restic key of `source_ns` cannot be read, or None; asked once per namespace."""
        task = self._key_checks.get(source_ns)
        if task is None:
            task = asyncio.create_task(self._check_key(source_ns), name=f"restore-key:{source_ns}")
            self._key_checks[source_ns] = task
        return await asyncio.shield(task)

    async def _check_key(self, source_ns: str) -> str | None:
        try:
            await self._keys.get(source_ns)
        except ResticKeyError as exc:
            return f"{exc} with the key its backups were made with"
        except ApiError as exc:
            return f"cannot read the restic key of namespace {source_ns}: {exc}"
        return None

    def _served_version(self, scope: _Scope, res: Resource, obj: Obj) -> Resource:
        """The object's own version when the cluster serves it (no conversion needed), else the preferred one."""
        group, _, version = str(obj.get("apiVersion") or "").rpartition("/")
        if group == res.group and version and version != res.version and version in scope.served.get(group, ()):
            return Resource(res.group, version, res.plural, res.kind, res.namespaced)
        return res

    async def _exists(
        self, gr: str, res: Resource, prepared: Obj, namespace: str | None, what: str, has_volumes: bool
    ) -> Obj | None:
        """An item that already exists: left alone (a warning), merged (service accounts), or ours.

        Returns the existing pod when it was created by an earlier attempt of this restore, so its
        pod volumes are restored.
        """
        name = str(_meta(prepared).get("name") or "")
        try:
            existing: Obj | None = await self.ctx.client.get(res, name, namespace)
        except ApiError:
            existing = None
        if existing is not None:
            if has_volumes and self._created_by_this_restore(existing):
                self.log.info(f"{what} was created by an earlier attempt of this restore; restoring its volumes")
                return existing
            if gr == SERVICE_ACCOUNTS:
                await self._merge_service_account(res, existing, prepared, namespace, what)
                return None
            if self.resumed and (_meta(existing).get("labels") or {}).get(RESTORE_LABEL) == self.name:
                self.log.info(f"{what} was restored by an earlier attempt of this restore")
                return None
        self._warn(namespace, f"not restored: {what} already exists; left as it is")
        return None

    def _created_by_this_restore(self, pod: Obj) -> bool:
        init = _spec(pod).get("initContainers") or []
        if not init or not isinstance(init[0], dict) or init[0].get("name") != RESTIC_WAIT_CONTAINER:
            return False
        return self.uid in [*(init[0].get("command") or []), *(init[0].get("args") or [])]

    async def _merge_service_account(
        self, res: Resource, existing: Obj, prepared: Obj, namespace: str | None, what: str
    ) -> None:
        desired = merge_service_accounts(existing, prepared)
        patch: Obj = {k: desired[k] for k in ("secrets", "imagePullSecrets") if desired.get(k) != existing.get(k)}
        meta_patch = {
            k: _meta(desired)[k] for k in ("labels", "annotations") if _meta(desired).get(k) != _meta(existing).get(k)
        }
        if meta_patch:
            patch["metadata"] = meta_patch
        if not patch:
            self.log.info(f"{what} already exists with everything the backup has")
            return
        try:
            await self.ctx.client.patch(
                res, str(_meta(existing)["name"]), guarded_merge_patch(existing, patch), namespace
            )
        except ApiError as exc:
            self._warn(namespace, f"not restored: {what} already exists and could not be merged with the backup: {exc}")
            return
        self.log.info(f"{what} already exists; merged the backed-up secrets, labels and annotations into it")

    # -- pod volumes -----------------------------------------------------------------------------------
    def _volume_failed(self, namespace: str, message: str, volume: str, pod: str) -> None:
        self.results.errors.add(namespace, message)
        self.failed_volumes.append(f"volume {volume} of pod {pod}")
        self.log.error(message)

    async def _start_pod_volumes(self, pod: Obj, identifier: str, volumes: dict[str, str], target_ns: str) -> None:
        """One PodVolumeRestore per volume of a created pod, from the SOURCE namespace's repository."""
        meta = _meta(pod)
        pod_name, pod_uid = str(meta.get("name") or ""), str(meta.get("uid") or "")
        ref = f"{target_ns}/{pod_name}"
        for volume, snapshot_id in sorted(volumes.items()):
            name = pod_volume_restore_name(self.name, target_ns, pod_name, volume)
            body: Obj = {
                "apiVersion": API_VERSION,
                "kind": POD_VOLUME_RESTORE_KIND,
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "labels": {
                        RESTORE_NAME_LABEL: label_value(self.name),
                        RESTORE_UID_LABEL: self.uid,
                        POD_UID_LABEL: pod_uid,
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": API_VERSION,
                            "kind": RESTORE_KIND,
                            "name": self.name,
                            "uid": self.uid,
                            "controller": True,
                        }
                    ],
                },
                "spec": {
                    "pod": {"kind": "Pod", "namespace": target_ns, "name": pod_name, "uid": pod_uid},
                    "volume": volume,
                    "snapshotID": snapshot_id,
                    "repoIdentifier": identifier,
                },
            }
            try:
                await self._create_pvr(name, body, pod_uid)
            except ApiError as exc:
                self._volume_failed(
                    target_ns,
                    f"pod volume restore failed: volume {volume} of pod {ref}: cannot create PodVolumeRestore "
                    f"{name}: {exc}",
                    volume,
                    ref,
                )
                continue
            self.volumes.append(_Volume(name, volume, ref, target_ns))
            self.log.info(
                "pod volume restore requested", podvolumerestore=name, pod=ref, volume=volume, snapshot=snapshot_id
            )

    async def _create_pvr(self, name: str, body: Obj, pod_uid: str) -> Obj:
        client = self.ctx.client
        try:
            return await client.create(PODVOLUMERESTORES, body, self.namespace)
        except AlreadyExists:
            existing = await client.get(PODVOLUMERESTORES, name, self.namespace)
        labels = _meta(existing).get("labels") or {}
        pod_ref = _spec(existing).get("pod")
        existing_pod_uid = pod_ref.get("uid") if isinstance(pod_ref, dict) else None
        if labels.get(RESTORE_UID_LABEL) == self.uid and existing_pod_uid == pod_uid:
            return existing  # made by an earlier attempt of this restore
        # Left over from a deleted Restore of the same name, or for a pod that no longer exists.
        await client.delete(PODVOLUMERESTORES, name, self.namespace, preconditions_uid=str(_meta(existing)["uid"]))
        return await client.create(PODVOLUMERESTORES, body, self.namespace)

    def _pod_volume_timeout(self, config: ArkConfig) -> float:
        default = config.seconds("pod_volume_operation_timeout")
        annotation = (_meta(self.obj).get("annotations") or {}).get(POD_VOLUME_TIMEOUT_ANNOTATION)
        if annotation:
            try:
                value = parse_duration(annotation).total_seconds()
            except ValueError as exc:
                self.log.warn(
                    f"ignoring annotation {POD_VOLUME_TIMEOUT_ANNOTATION}={annotation!r} ({exc}); using Config "
                    f"podVolumeOperationTimeout {format_duration(datetime.timedelta(seconds=default))}"
                )
            else:
                if value > 0:
                    return value
        return default

    async def _wait_for_volumes(self, config: ArkConfig) -> None:
        if not self.volumes:
            return
        timeout = self._pod_volume_timeout(config)
        timeout_text = format_duration(datetime.timedelta(seconds=timeout))
        names = {v.pvr for v in self.volumes}
        self.log.info(
            "all items restored; waiting for pod volume restores", podvolumerestores=sorted(names), timeout=timeout_text
        )
        clock = self.ctx.clock
        future = self.deps.tracker.wait(self.uid, names)
        timer = asyncio.ensure_future(clock.sleep(max(0.0, self._started + timeout - clock.now())))
        waitables: set[asyncio.Future[Any]] = {future, timer}
        try:
            await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()  # drops the tracker's waiter (timed out, or this run was cancelled)
        if not future.cancelled():
            outcome = dict(future.result())
        else:
            outcome = await self._time_out(names, timeout_text)
        for volume in self.volumes:
            self._record_volume(volume, outcome.get(volume.pvr))

    async def _time_out(self, names: set[str], timeout_text: str) -> dict[str, Obj | None]:
        out: dict[str, Obj | None] = {}
        message = (
            f"timed out after {timeout_text} waiting for pod volume restore; is the pod's restic-wait init "
            "container running on a node with the node agent (ark restic server)?"
        )
        for name in sorted(names):
            obj = self.deps.tracker.get(name)
            out[name] = obj if obj is not None and is_terminal(obj) else await self._fail_pvr(name, obj, message)
        return out

    async def _fail_pvr(self, name: str, obj: Obj | None, message: str) -> Obj | None:
        """Mark a PodVolumeRestore Failed unless it ended meanwhile; its latest version."""
        completion = format_time(self.ctx.clock.wall().replace(microsecond=0))
        try:
            return await self.deps.tracker.fail(
                self.ctx.client, PODVOLUMERESTORES, name, self.namespace, message, completion, obj
            )
        except ApiError as exc:
            log.warning("cannot mark pod volume restore failed", extra={"podvolumerestore": name, "error": str(exc)})
        # Could not record it on the object; the restore's results still say what happened.
        return {"metadata": {"name": name}, "status": {"phase": PodVolumeRestorePhase.FAILED.value, "message": message}}

    def _record_volume(self, volume: _Volume, obj: Obj | None) -> None:
        where = f"volume {volume.volume} of pod {volume.pod}"
        if obj is None:
            self._volume_failed(
                volume.namespace,
                f"pod volume restore failed: {where}: PodVolumeRestore {volume.pvr} was deleted before it finished",
                volume.volume,
                volume.pod,
            )
            return
        if phase_of(obj) == PodVolumeRestorePhase.COMPLETED:
            self.log.info("pod volume restored", podvolumerestore=volume.pvr, pod=volume.pod, volume=volume.volume)
            return
        message = str(_status(obj).get("message") or "no message given")
        self._volume_failed(
            volume.namespace, f"pod volume restore failed: {where}: {message}", volume.volume, volume.pod
        )

    # -- finalising ----------------------------------------------------------------------------------
    def failure_reason(self, fatal: str | None) -> str | None:
        if fatal:
            return fatal
        parts: list[str] = []
        if self.failed_volumes:
            shown = sorted(self.failed_volumes)[:SUMMARY_VOLUMES]
            more = len(self.failed_volumes) - len(shown)
            n = len(self.failed_volumes)
            parts.append(
                f"{n} pod volume{'s' if n != 1 else ''} not restored: {', '.join(shown)}"
                + (f" and {more} more" if more > 0 else "")
            )
        if self.item_errors:
            parts.append(summarize(self.item_errors, "item error"))
        return "; ".join(parts) or None

    async def _finalize(self, config: ArkConfig, fatal: str | None) -> None:
        if fatal:
            self.results.errors.add_ark(fatal)
            self.log.error("restore failed", reason=fatal)
        errors = self.results.errors.count()
        phase = RestorePhase.FAILED if fatal else RestorePhase.PARTIALLY_FAILED if errors else RestorePhase.COMPLETED
        self.log.info(
            "restore finished",
            phase=phase.value,
            restored=self.restored,
            errors=errors,
            warnings=self.results.warnings.count(),
        )
        warnings = self.results.warnings.count()
        store = config.store
        try:
            await store.put(restore_results_key(self.backup_name, self.name), gzip_json(self.results.to_obj()))
        except (StorageError, ValueError) as exc:
            warnings += 1
            log.warning("cannot upload the restore results", extra={"error": str(exc)})
        try:
            await store.put(restore_log_key(self.backup_name, self.name), gzip_bytes(self.log.text()))
        except (StorageError, ValueError) as exc:
            warnings += 1
            log.warning("cannot upload the restore log", extra={"error": str(exc)})
        status: Obj = {
            "phase": phase.value,
            "warnings": warnings,
            "errors": errors,
            "failureReason": self.failure_reason(fatal),
            "completionTimestamp": format_time(self.ctx.clock.wall().replace(microsecond=0)),
        }
        if await self._patch_final(status):
            self._observe(phase, status)

    async def _patch_final(self, status: Obj) -> bool:
        """Write the final status (read, check, patch; a conflict with an unrelated change retries)."""
        client = self.ctx.client
        for _ in range(_FINAL_PATCH_ATTEMPTS):
            try:
                current = await client.get(RESTORES, self.name, self.namespace)
            except NotFound:
                log.info("restore deleted while it ran; nothing to record")
                return False
            current_phase = _status(current).get("phase")
            if _meta(current).get("uid") != self.uid or current_phase != RestorePhase.IN_PROGRESS:
                log.info("restore changed hands while it ran; not recording", extra={"phase": current_phase})
                return False
            try:
                updated = await client.patch(
                    RESTORES, self.name, status_merge_patch(current, status), self.namespace, subresource="status"
                )
            except Conflict:
                continue
            rv = str(_meta(updated).get("resourceVersion") or "")
            self.final_resource_version = rv
            if rv:
                await self.deps.restores.cache.wait_for(self.key, at_least_version(rv), _CACHE_CATCH_UP_SECONDS)
            return True
        raise Conflict(409, "Conflict", f"restore {self.key} kept changing; could not record its final status")

    def _observe(self, phase: RestorePhase, status: Obj) -> None:
        ctx = self.ctx
        event_obj = self.deps.restores.cache.get(self.key) or self.obj
        if phase == RestorePhase.COMPLETED:
            ctx.metrics.restore_success.inc()
            ctx.recorder.record(
                event_obj,
                "Normal",
                "RestoreCompleted",
                f"restored {self.restored} items and {len(self.volumes)} pod volumes from backup {self.backup_name}"
                + (f" with {status['warnings']} warnings" if status["warnings"] else ""),
            )
        elif phase == RestorePhase.PARTIALLY_FAILED:
            ctx.metrics.restore_partial_failure.inc()
            ctx.recorder.record(event_obj, "Warning", "RestorePartiallyFailed", str(status["failureReason"]))
        else:
            ctx.metrics.restore_failure.inc()
            ctx.recorder.record(event_obj, "Warning", "RestoreFailed", str(status["failureReason"]))
