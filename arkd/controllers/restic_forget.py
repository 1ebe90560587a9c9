"""Forgetting the restic snapshots of a backup that is being deleted (the deletion controller's
`SnapshotForgetter`).

The snapshots come from the backup's PodVolumeBackups: those in the cluster, and the list stored
beside the backup in object storage (all a cluster that synced the backup has). Each snapshot is
forgotten in the repository the PodVolumeBackup names (`spec.repoIdentifier`) with the key of its
pod's namespace, under that repository's exclusive lock. No prune here: the repository's next
maintenance reclaims the space.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from arkd.api.constants import restic_key_secret_name
from arkd.controllers.restic_repository import RepositoryLocks, describe_restic_failure, server_restic_runner
from arkd.controllers.runtime import ServerContext
from arkd.kube.errors import ApiError
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError
from arkd.restic.command import validate_id
from arkd.restic.errors import Reason, ResticError
from arkd.restic.repository import Repository
from arkd.restic.runner import ResticRunner

log = logging.getLogger("arkd.controllers.restic_forget")

Obj = dict[str, Any]


@dataclass
class RepositorySnapshots:
    """The snapshots of one backup in one repository."""

    namespace: str
    identifier: str
    snapshot_ids: list[str] = field(default_factory=list)


def _dict(value: object) -> Obj:
    return value if isinstance(value, dict) else {}


def _identifier(spec: Obj, namespace: str) -> str:
    identifier = str(spec.get("repoIdentifier") or "")
    if identifier:
        return identifier
    # Ark v0.9.0-alpha.1 recorded the location without the repository name.
    prefix = str(spec.get("repoPrefix") or "").rstrip("/")
    return f"{prefix}/{namespace}" if prefix else ""


def snapshots_by_repository(pvbs: Iterable[Obj]) -> tuple[list[RepositorySnapshots], list[str]]:
    """Group the snapshot ids of PodVolumeBackups by repository; also returns what is unusable.

    Every PodVolumeBackup that recorded a snapshot counts (normally the Completed ones); one listed
    both in the cluster and in object storage is forgotten once. A repository identifier left empty
    is resolved later from the Config.
    """
    groups: dict[tuple[str, str], RepositorySnapshots] = {}
    problems: list[str] = []
    for pvb in pvbs:
        status = _dict(pvb.get("status"))
        snapshot_id = str(status.get("snapshotID") or "")
        if not snapshot_id:
            continue
        spec = _dict(pvb.get("spec"))
        name = str(_dict(pvb.get("metadata")).get("name") or "<unnamed>")
        namespace = str(_dict(spec.get("pod")).get("namespace") or "")
        if not namespace:
            problems.append(
                f"PodVolumeBackup {name} names no pod namespace, so the repository holding its snapshot "
                f"{snapshot_id} is unknown; forget it by hand with restic"
            )
            continue
        try:
            validate_id(snapshot_id)
        except ValueError as exc:
            problems.append(f"PodVolumeBackup {name}: {exc}")
            continue
        identifier = _identifier(spec, namespace)
        group = groups.setdefault((namespace, identifier), RepositorySnapshots(namespace, identifier))
        if snapshot_id not in group.snapshot_ids:
            group.snapshot_ids.append(snapshot_id)
    return list(groups.values()), problems


class ResticSnapshotForgetter:
    def __init__(self, ctx: ServerContext, locks: RepositoryLocks, *, runner: ResticRunner | None = None) -> None:
        self.ctx = ctx
        self.locks = locks
        self.runner = runner or server_restic_runner(ctx.settings)
        self.keys = RepositoryKeys(ctx.client, ctx.namespace)

    async def forget_backup_snapshots(
        self, backup: Obj, pvbs_from_cluster: list[Obj], stored_pvbs: list[Obj]
    ) -> list[str]:
        """Forget every restic snapshot of `backup`; returns one message per failure."""
        backup_name = str(_dict(backup.get("metadata")).get("name") or "")
        groups, errors = snapshots_by_repository([*pvbs_from_cluster, *stored_pvbs])
        for group in groups:
            error = await self._forget(backup_name, group)
            if error:
                errors.append(error)
        return errors

    async def _forget(self, backup_name: str, group: RepositorySnapshots) -> str | None:
        ids = ", ".join(group.snapshot_ids)
        what = f"restic snapshot(s) {ids} of backup {backup_name} (namespace {group.namespace})"
        identifier = group.identifier
        if not identifier:
            config = self.ctx.config.current
            try:
                if config is None:
                    raise ValueError("there is no valid Config yet")
                identifier = config.restic_identifier(group.namespace)
            except ValueError as exc:
                return f"cannot forget {what}: its PodVolumeBackups name no repository and {exc}"
        try:
            key = await self.keys.get(group.namespace)
        except ResticKeyError as exc:
            return f"cannot forget {what}: {exc}"
        except ApiError as exc:
            return f"cannot forget {what}: reading the restic key failed: {exc}"
        repository = Repository(identifier, key, self.runner)
        try:
            async with self.locks.exclusive(group.namespace):
                await repository.forget(group.snapshot_ids)
        except ResticError as exc:
            if exc.reason is Reason.REPOSITORY_NOT_FOUND:
                log.warning(
                    "restic repository gone; nothing to forget",
                    extra={"backup": backup_name, "repository": identifier, "snapshots": group.snapshot_ids},
                )
                return None
            secret = f"{self.ctx.namespace}/{restic_key_secret_name(group.namespace)}"
            return f"cannot forget {what} in {identifier}: {describe_restic_failure(exc, identifier, secret)}"
        log.info(
            "restic snapshots forgotten",
            extra={"backup": backup_name, "repository": identifier, "snapshots": group.snapshot_ids},
        )
        return None
