"""API discovery: which resources the server serves, each at its group's preferred version."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from arkd.kube.client import KubeClient
from arkd.kube.errors import ApiError
from arkd.kube.resource import Resource

logger = logging.getLogger("arkd.kube.discovery")

_CONCURRENCY = 8

# What `discover` is, as a dependency that tests can replace.
Discover = Callable[[KubeClient], Awaitable[list[Resource]]]


@dataclass(frozen=True)
class ApiGroup:
    """An API group with its versions; the core group is named ``""``."""

    name: str
    preferred_version: str
    versions: tuple[str, ...]

    @property
    def preferred_group_version(self) -> str:
        return f"{self.name}/{self.preferred_version}" if self.name else self.preferred_version

    @property
    def preferred_path(self) -> str:
        """URL path of the preferred version's resource list."""
        return f"/apis/{self.preferred_group_version}" if self.name else f"/api/{self.preferred_version}"


async def server_groups(client: KubeClient) -> list[ApiGroup]:
    """Every API group (core first) with its preferred version, from ``/api`` and ``/apis``."""
    core = await client.request("GET", "/api")
    core_versions = tuple(str(v) for v in (core or {}).get("versions") or [])
    groups: list[ApiGroup] = []
    if core_versions:
        groups.append(ApiGroup("", "v1" if "v1" in core_versions else core_versions[0], core_versions))
    listing = await client.request("GET", "/apis")
    for group in (listing or {}).get("groups") or []:
        versions = tuple(str(v["version"]) for v in group.get("versions") or [])
        preferred = (group.get("preferredVersion") or {}).get("version") or (versions[0] if versions else "")
        if preferred:
            groups.append(ApiGroup(str(group["name"]), str(preferred), versions))
    return groups


async def preferred_versions(client: KubeClient) -> dict[str, str]:
    """Group name -> preferred version (``""`` -> ``"v1"`` for the core group)."""
    return {g.name: g.preferred_version for g in await server_groups(client)}


def _resources_of(group: ApiGroup, resource_list: dict[str, Any]) -> list[Resource]:
    found: list[Resource] = []
    for entry in resource_list.get("resources") or []:
        name = str(entry.get("name", ""))
        verbs = tuple(str(v) for v in entry.get("verbs") or [])
        # "pods/status"-style names are subresources, not collections of their own.
        if not name or "/" in name or "list" not in verbs:
            continue
        found.append(
            Resource(
                group=group.name,
                version=group.preferred_version,
                plural=name,
                kind=str(entry.get("kind", "")),
                namespaced=bool(entry.get("namespaced", False)),
                short_names=tuple(str(s) for s in entry.get("shortNames") or []),
                verbs=verbs,
            )
        )
    return found


async def discover(client: KubeClient, *, groups: Iterable[ApiGroup] | None = None) -> list[Resource]:
    """Every listable resource of every group at the group's preferred version.

    A group whose version cannot be read (e.g. an aggregated API that is down) is skipped with a
    warning, like kubectl does; the core group must answer.
    """
    selected = list(groups) if groups is not None else await server_groups(client)
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(group: ApiGroup) -> list[Resource]:
        async with gate:
            try:
                body = await client.request("GET", group.preferred_path)
            except ApiError as exc:
                if not group.name:
                    raise
                logger.warning("skipping API group that failed discovery",
                               extra={"group_version": group.preferred_group_version, "error": str(exc)})
                return []
        return _resources_of(group, body if isinstance(body, dict) else {})

    per_group = await asyncio.gather(*(one(g) for g in selected))
    return [res for found in per_group for res in found]


def resolve(resources: Iterable[Resource], name: str) -> Resource:
    """Find a resource by what a user types: ``pods``, ``pod``, ``po``, ``Pod``, ``deployments.apps``.

    Raises LookupError naming the input when nothing matches.
    """
    wanted = name.strip().lower()
    base, _, group = wanted.partition(".")
    matches = [
        r for r in resources
        if (not group or r.group == group or r.group_resource == wanted)
        and base in (r.plural, r.kind.lower(), *r.short_names)
    ]
    if not matches:
        raise LookupError(f"the server has no resource type {name!r}; `kubectl api-resources` lists them")
    # Like kubectl, an unqualified name shared by several groups means the first in discovery order
    # (core first, then the server's group priority), e.g. "events" is core/v1 events.
    return matches[0]
