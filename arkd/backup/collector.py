"""Which Kubernetes objects a Backup contains, in Ark 0.9 order.

Order and scope follow `pkg/backup/{backup,group_backupper,resource_backupper,item_backupper}.go`:
the core group first with pods, then PVCs, then PVs, then the rest; other groups in discovery
order with the legacy "extensions" group last; a cohabiting resource (deployments, daemonsets,
replicasets, networkpolicies, events) is taken from one group only. PVCs used by included pods
and PVs bound to included PVCs are taken even when the label selector would not match them (Ark's
pod and PVC backup actions). Failures are recorded per item or per listing and never raised, so
the caller can mark the Backup PartiallyFailed and carry on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from arkd.api.constants import RESTIC_KEY_LABEL
from arkd.backup.filters import IncludesExcludes, LabelSelector
from arkd.kube.client import DEFAULT_PAGE_SIZE
from arkd.kube.errors import Gone
from arkd.kube.resource import Resource

PODS = "pods"
PVCS = "persistentvolumeclaims"
PVS = "persistentvolumes"
NAMESPACES = "namespaces"
SECRETS = "secrets"

# resource -> the group to take it from when both are served; the other one is skipped.
COHABITING_PREFERRED: Mapping[str, tuple[str, str]] = {
    "deployments": ("apps", "extensions"),
    "daemonsets": ("apps", "extensions"),
    "replicasets": ("apps", "extensions"),
    "networkpolicies": ("networking.k8s.io", "extensions"),
    "events": ("", "events.k8s.io"),
}

_CORE_PRIORITY = {PODS: 0, PVCS: 1, PVS: 2}


class Lister(Protocol):
    """The only apiserver access the collector needs; `namespace=None` lists across all namespaces
    (or a cluster-scoped resource). Each yielded page is a list of objects."""

    def list_pages(
        self, resource: Resource, namespace: str | None, label_selector: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]: ...


class PageSource(Protocol):
    """The slice of `arkd.kube.client.KubeClient` that `KubeLister` uses."""

    async def list_page(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = ...,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...


class KubeLister:
    """`Lister` over the apiserver's paged list API.

    The next page is requested as soon as a page arrives, so the apiserver works on it while the
    caller handles the current one: at most two pages are in memory per listing.
    """

    def __init__(self, client: PageSource, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self._client = client
        self._page_size = page_size

    async def list_pages(
        self, resource: Resource, namespace: str | None, label_selector: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        page = await self._client.list_page(resource, namespace, label_selector=label_selector, limit=self._page_size)
        while True:
            token = (page.get("metadata") or {}).get("continue") or None
            following = (
                asyncio.create_task(self._page_after(resource, namespace, label_selector, token)) if token else None
            )
            try:
                yield list(page.get("items") or [])
            except BaseException:
                await _cancel(following)
                raise
            if following is None:
                return
            page = await following

    async def _page_after(
        self, resource: Resource, namespace: str | None, label_selector: str | None, token: str
    ) -> dict[str, Any]:
        try:
            return await self._client.list_page(
                resource, namespace, label_selector=label_selector, limit=self._page_size, continue_=token
            )
        except Gone:
            # The continue token outlived etcd compaction: list again in one go (no continue token,
            # so this is the last page); the collector drops the items it has already seen.
            return await self._client.list_page(resource, namespace, label_selector=label_selector, limit=None)


async def _cancel(task: asyncio.Future[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


# A listing: (resource, namespace or None, label selector query or None).
Listing = tuple[Resource, str | None, str | None]


class _Prefetched:
    """One listing whose first page is being fetched from the moment it is created."""

    def __init__(self, lister: Lister, listing: Listing) -> None:
        self._pages = lister.list_pages(*listing)
        self._first = asyncio.ensure_future(self._first_page())

    async def _first_page(self) -> list[dict[str, Any]] | None:
        return await anext(self._pages, None)

    async def pages(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        first = await self._first
        if first is None:
            return
        yield first
        async for page in self._pages:
            yield page

    async def close(self) -> None:
        await _cancel(self._first)
        aclose = getattr(self._pages, "aclose", None)
        if aclose is not None:
            await aclose()


class _Lookahead:
    """Starts the next few listings of the walk before they are needed.

    Most resource types of a namespace are empty, and listing ~40 of them one after another costs
    more than the backup of a thousand objects; this way their round trips overlap with each other
    and with the work on the current listing. Memory: at most `depth` first pages are held ahead.
    A listing the walk decides to skip is cancelled; one that is not in the plan is listed directly.
    """

    def __init__(self, lister: Lister, plan: Sequence[Listing], depth: int) -> None:
        self._lister = lister
        self._plan = list(plan)
        self._next = 0  # index in the plan of the first listing not yet started
        self._started: list[tuple[Listing, _Prefetched]] = []
        self._depth = depth

    async def pages(self, listing: Listing) -> AsyncGenerator[list[dict[str, Any]], None]:
        stream = await self._take(listing)
        self._top_up()
        pages = stream.pages()
        try:
            async for page in pages:
                yield page
        finally:
            await pages.aclose()
            await stream.close()

    async def _take(self, listing: Listing) -> _Prefetched:
        started = [key for key, _ in self._started]
        if listing in started:
            index = started.index(listing)
            skipped, self._started = self._started[:index], self._started[index:]
            for _, stream in skipped:
                await stream.close()
            return self._started.pop(0)[1]
        if listing in self._plan[self._next :]:
            # Not started yet: everything started before it was skipped by the walk.
            for _, stream in self._started:
                await stream.close()
            self._started = []
            self._next = self._plan.index(listing, self._next) + 1
        return _Prefetched(self._lister, listing)

    def _top_up(self) -> None:
        while len(self._started) < self._depth and self._next < len(self._plan):
            listing = self._plan[self._next]
            self._next += 1
            self._started.append((listing, _Prefetched(self._lister, listing)))

    async def close(self) -> None:
        for _, stream in self._started:
            await stream.close()
        self._started = []
        self._next = len(self._plan)


@dataclass(frozen=True)
class Item:
    resource: Resource
    group_resource: str
    namespace: str | None
    name: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class ItemError:
    group_resource: str
    namespace: str | None
    name: str | None
    message: str

    def __str__(self) -> str:
        where = self.group_resource
        if self.namespace:
            where += f" in namespace {self.namespace}"
        if self.name:
            where += f" {self.name}"
        return f"{where}: {self.message}"


@dataclass
class CollectorStats:
    yielded: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count


def order_resources(resources: Iterable[Resource]) -> list[Resource]:
    """Ark's walk order: core group first (pods, PVCs, PVs, rest), other groups as discovered,
    "extensions" last. Python's sort is stable, so discovery order is kept within each rank."""

    def rank(item: tuple[int, Resource]) -> tuple[int, int, int]:
        index, res = item
        if res.group == "":
            return (0, _CORE_PRIORITY.get(res.plural, 3), index)
        if res.group == "extensions":
            return (2, 0, index)
        return (1, 0, index)

    return [res for _, res in sorted(enumerate(resources), key=rank)]


def _cohabitant_to_skip(resources: Sequence[Resource], resource_filter: IncludesExcludes) -> set[str]:
    """Group-resources skipped because their preferred cohabitant is served and included."""
    served = {r.group_resource for r in resources}
    skip: set[str] = set()
    for plural, (preferred, other) in COHABITING_PREFERRED.items():
        pref_gr = f"{plural}.{preferred}" if preferred else plural
        other_gr = f"{plural}.{other}" if other else plural
        if pref_gr in served and other_gr in served and resource_filter.should_include(pref_gr):
            skip.add(other_gr)
    return skip


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def pod_claim_names(pod: Mapping[str, Any]) -> list[str]:
    """PVC names the pod mounts (Ark's backup pod action)."""
    spec = pod.get("spec")
    volumes = spec.get("volumes") if isinstance(spec, Mapping) else None
    out: list[str] = []
    for vol in volumes if isinstance(volumes, list) else []:
        claim = vol.get("persistentVolumeClaim") if isinstance(vol, Mapping) else None
        name = claim.get("claimName") if isinstance(claim, Mapping) else None
        if isinstance(name, str) and name:
            out.append(name)
    return out


def bound_volume_name(pvc: Mapping[str, Any]) -> str | None:
    """The PV a PVC is bound to (Ark 0.9.x backup PV action: phase Bound and spec.volumeName)."""
    spec = pvc.get("spec")
    status = pvc.get("status")
    name = spec.get("volumeName") if isinstance(spec, Mapping) else None
    phase = status.get("phase") if isinstance(status, Mapping) else None
    if isinstance(name, str) and name and phase == "Bound":
        return name
    return None


class BackupCollector:
    """Yields the items of one Backup; see the module docstring for the rules.

    `include_cluster_resources`: True = every cluster-scoped resource that passes the resource
    filter; False = none (Namespace objects of included namespaces are still taken, as in Ark);
    None = all of them when every namespace is backed up, otherwise only the PVs bound to
    included PVCs (and the Namespace objects). `lookahead`: how many listings are started ahead of
    the one being walked (items still come out in walk order).
    """

    def __init__(
        self,
        lister: Lister,
        resources: Iterable[Resource],
        *,
        namespaces: IncludesExcludes,
        resource_filter: IncludesExcludes,
        label_selector: LabelSelector | None = None,
        include_cluster_resources: bool | None = None,
        lookahead: int = 8,
    ) -> None:
        self._lister = lister
        self._lookahead_depth = lookahead
        self._lookahead = _Lookahead(lister, (), 0)
        self._resources = order_resources(resources)
        self._namespaces = namespaces
        self._filter = resource_filter
        self._selector = label_selector or LabelSelector({}, ())
        self._include_cluster = include_cluster_resources
        self.errors: list[ItemError] = []
        self.stats = CollectorStats()
        self._seen: set[tuple[str, str | None, str]] = set()
        self._claims: set[tuple[str, str]] = set()  # (namespace, pvc) used by included pods
        self._bound_pvs: set[str] = set()  # PVs bound to included PVCs

    # ---- decisions

    def _cluster_scoped_allowed(self, gr: str) -> bool:
        if gr == NAMESPACES:
            return True
        if self._include_cluster is None:
            return self._namespaces.include_everything()
        return self._include_cluster

    def _namespaces_to_list(self) -> list[str | None]:
        """Ark's getNamespacesToList: one cluster-wide list unless specific namespaces are named."""
        if self._namespaces.should_include("*"):
            return [None]
        return [ns for ns in self._namespaces.includes if self._namespaces.should_include(ns)]

    def _skip_reason(self, gr: str, obj: Mapping[str, Any]) -> str | None:
        meta = _meta(obj)
        if meta.get("deletionTimestamp"):
            return "being deleted"
        if gr == SECRETS and RESTIC_KEY_LABEL in _labels(obj):
            return "restic key secret"
        return None

    # ---- walk

    def _queries(self, res: Resource) -> list[Listing]:
        """The listings the walk makes for one resource, in order (PVs: even if no PVC turns out bound)."""
        gr = res.group_resource
        if res.namespaced:
            # PVCs referenced by pods are taken regardless of the selector, so list them unfiltered.
            unfiltered = gr == PVCS and not self._selector.empty
            query = None if unfiltered or self._selector.empty else self._selector.to_query()
            return [(res, ns, query) for ns in self._namespaces_to_list()]
        if gr == NAMESPACES:
            # Listed unfiltered: a named namespace that does not exist is an error, as Ark's Get was.
            return [(res, None, None)]
        allowed = self._cluster_scoped_allowed(gr)
        by_reference = gr == PVS and self._include_cluster is not False
        if not allowed and not by_reference:
            return []
        unfiltered = by_reference and (not allowed or not self._selector.empty)
        return [(res, None, None if unfiltered or self._selector.empty else self._selector.to_query())]

    def _walked(self) -> list[Resource]:
        skip = _cohabitant_to_skip(self._resources, self._filter)
        walked: list[Resource] = []
        for res in self._resources:
            if res.group_resource in skip:
                self.stats.skipped["cohabiting resource"] += 1
            elif self._filter.should_include(res.group_resource):
                walked.append(res)
        return walked

    async def items(self) -> AsyncGenerator[Item, None]:
        walked = self._walked()
        self._lookahead = _Lookahead(
            self._lister, [listing for res in walked for listing in self._queries(res)], self._lookahead_depth
        )
        try:
            for res in walked:
                gr = res.group_resource
                if res.namespaced:
                    walk = self._namespaced(res, gr)
                elif gr == NAMESPACES:
                    walk = self._namespace_objects(res)
                else:
                    walk = self._cluster_scoped(res, gr)
                async with aclosing(walk) as walking:
                    async for item in walking:
                        yield item
        finally:
            await self._lookahead.close()

    async def _namespaced(self, res: Resource, gr: str) -> AsyncGenerator[Item, None]:
        by_reference = gr == PVCS and not self._selector.empty
        for _, ns, query in self._queries(res):
            async with aclosing(self._list(res, gr, ns, query)) as objects:
                async for obj in objects:
                    name, namespace = self._identity(obj)
                    if namespace is None or not self._namespaces.should_include(namespace):
                        continue
                    if by_reference and not (
                        (namespace, name) in self._claims or self._selector.matches(_labels(obj))
                    ):
                        continue
                    item = self._accept(res, gr, namespace, name, obj)
                    if item is not None:
                        yield item

    async def _cluster_scoped(self, res: Resource, gr: str) -> AsyncGenerator[Item, None]:
        allowed = self._cluster_scoped_allowed(gr)
        by_reference = gr == PVS and self._include_cluster is not False
        if not allowed and not (by_reference and self._bound_pvs):
            return
        for _, _, query in self._queries(res):
            async with aclosing(self._list(res, gr, None, query)) as objects:
                async for obj in objects:
                    name, _ = self._identity(obj)
                    referenced = by_reference and name in self._bound_pvs
                    if not referenced and not (allowed and self._selector.matches(_labels(obj))):
                        continue
                    item = self._accept(res, gr, None, name, obj)
                    if item is not None:
                        yield item

    async def _namespace_objects(self, res: Resource) -> AsyncGenerator[Item, None]:
        wanted = [ns for ns in self._namespaces_to_list() if ns is not None]
        found: set[str] = set()
        errors_before = len(self.errors)
        async with aclosing(self._list(res, NAMESPACES, None, None)) as objects:
            async for obj in objects:
                name, _ = self._identity(obj)
                found.add(name)
                if not self._namespaces.should_include(name) or not self._selector.matches(_labels(obj)):
                    continue
                item = self._accept(res, NAMESPACES, None, name, obj)
                if item is not None:
                    yield item
        if len(self.errors) > errors_before:
            return  # the listing failed; "not found" would be a guess
        for ns in wanted:
            if ns not in found:
                self.errors.append(ItemError(NAMESPACES, None, ns, f"namespace {ns} not found"))

    async def _list(
        self, res: Resource, gr: str, namespace: str | None, query: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        try:
            async with aclosing(self._lookahead.pages((res, namespace, query))) as pages:
                async for page in pages:
                    for obj in page:
                        yield obj
        except Exception as exc:  # one failed listing must not stop the rest of the backup
            self.errors.append(ItemError(gr, namespace, None, f"error listing items: {exc}"))

    @staticmethod
    def _identity(obj: Mapping[str, Any]) -> tuple[str, str | None]:
        meta = _meta(obj)
        name = meta.get("name")
        namespace = meta.get("namespace")
        ns = namespace if isinstance(namespace, str) and namespace else None
        return (name if isinstance(name, str) else ""), ns

    def _accept(
        self, res: Resource, gr: str, namespace: str | None, name: str, obj: dict[str, Any]
    ) -> Item | None:
        if not name:
            self.errors.append(ItemError(gr, namespace, None, "object without metadata.name"))
            return None
        key = (gr, namespace, name)
        if key in self._seen:
            return None
        reason = self._skip_reason(gr, obj)
        if reason is not None:
            self.stats.skipped[reason] += 1
            return None
        self._seen.add(key)
        if gr == PODS and namespace is not None:
            self._claims.update((namespace, claim) for claim in pod_claim_names(obj))
        elif gr == PVCS and (pv := bound_volume_name(obj)) is not None:
            self._bound_pvs.add(pv)
        self.stats.yielded[gr] += 1
        return Item(res, gr, namespace, name, obj)
