"""Restore order and the resources a restore never creates.

Order (Ark's `prioritizeResources`, `pkg/restore/restore.go@v0.9.0`): Config.resourcePriorities
first, in the given order, then everything else alphabetically by group-resource. Priorities are
resource names; "pods" matches the group-resource "pods", "deployments" matches
"deployments.apps", and a qualified "deployments.apps" matches only itself. Unlike Ark, a priority
that matches nothing is skipped instead of failing the restore, so a priority naming a CRD that is
not installed does no harm.

Non-restorable resources: Ark GA's list (nodes, events, events.events.k8s.io, backups and restores)
plus arkd's transient objects that would act again if re-created without their status: a restored
PodVolumeBackup or PodVolumeRestore would start a restic run, a DeleteBackupRequest would delete a
backup, and a DownloadRequest would mint a URL nobody asked for. ResticRepositories stay
restorable: re-creating one only makes arkd check that the repository exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from arkd.api.constants import (
    BACKUPS,
    DELETE_BACKUP_REQUESTS,
    DOWNLOAD_REQUESTS,
    GROUP,
    POD_VOLUME_BACKUPS,
    POD_VOLUME_RESTORES,
    RESTORES,
)

DEFAULT_RESOURCE_PRIORITIES: tuple[str, ...] = (
    "namespaces",
    "persistentvolumes",
    "persistentvolumeclaims",
    "secrets",
    "configmaps",
    "serviceaccounts",
    "limitranges",
    "pods",
)

NON_RESTORABLE_RESOURCES: tuple[str, ...] = (
    "nodes",
    "events",
    "events.events.k8s.io",
    f"{BACKUPS}.{GROUP}",
    f"{RESTORES}.{GROUP}",
    f"{POD_VOLUME_BACKUPS}.{GROUP}",
    f"{POD_VOLUME_RESTORES}.{GROUP}",
    f"{DELETE_BACKUP_REQUESTS}.{GROUP}",
    f"{DOWNLOAD_REQUESTS}.{GROUP}",
)


class IncludeFilter(Protocol):
    """Satisfied by `arkd.backup.filters.IncludesExcludes`."""

    def should_include(self, item: str) -> bool: ...


def is_restorable(group_resource: str) -> bool:
    return group_resource not in NON_RESTORABLE_RESOURCES


def non_restorable_errors(included_group_resources: Iterable[str]) -> list[str]:
    """Validation errors for explicitly included non-restorable resources (Ark's wording).

    Pass resolved group-resources, so "node" or "Node" are caught as well as "nodes".
    """
    return [
        f"{gr} are non-restorable resources"
        for gr in dict.fromkeys(included_group_resources)
        if not is_restorable(gr)
    ]


def with_non_restorable_excluded(excluded: Sequence[str]) -> list[str]:
    """`excluded` plus every non-restorable resource not already in it (what Ark writes to spec)."""
    out = list(excluded)
    out.extend(gr for gr in NON_RESTORABLE_RESOURCES if gr not in out)
    return out


def match_priority(priority: str, available: Iterable[str]) -> list[str]:
    """The group-resources in `available` that a resourcePriorities entry names."""
    wanted = priority.strip().lower()
    pool = sorted(set(available))
    if wanted in pool:
        return [wanted]
    if "." in wanted:
        return []
    return [gr for gr in pool if gr.partition(".")[0] == wanted]


def prioritize_resources(
    available: Iterable[str],
    priorities: Sequence[str] = DEFAULT_RESOURCE_PRIORITIES,
    resource_filter: IncludeFilter | None = None,
) -> list[str]:
    """Restore order of the restorable, included group-resources among `available`."""
    pool = [gr for gr in dict.fromkeys(available) if is_restorable(gr)]
    if resource_filter is not None:
        pool = [gr for gr in pool if resource_filter.should_include(gr)]
    ordered: list[str] = []
    seen: set[str] = set()
    for priority in priorities:
        for gr in match_priority(priority, pool):
            if gr not in seen:
                seen.add(gr)
                ordered.append(gr)
    ordered.extend(sorted(gr for gr in pool if gr not in seen))
    return ordered
