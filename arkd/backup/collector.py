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

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from arkd.api.constants import RESTIC_KEY_LABEL
from arkd.backup.filters import IncludesExcludes, LabelSelector
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
    """`Lister` over the apiserver's paged list API, one page in memory at a time."""

    def __init__(self, client: PageSource, *, page_size: int = 500) -> None:
        self._client = client
        self._page_size = page_size

    async def list_pages(
        self, resource: Resource, namespace: str | None, label_selector: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        token: str | None = None
        while True:
            try:
                page = await self._client.list_page(
                    resource, namespace, label_selector=label_selector, limit=self._page_size, continue_=token
                )
            except Gone:
                if token is None:
                    raise
                # The continue token outlived etcd compaction: list again in one go; the collector
                # drops the items it has already seen.
                page = await self._client.list_page(
                    resource, namespace, label_selector=label_selector, limit=None
                )
                yield list(page.get("items") or [])
                return
            yield list(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return


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
    included PVCs (and the Namespace objects).
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
    ) -> None:
        self._lister = lister
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

    async def items(self) -> AsyncIterator[Item]:
        skip = _cohabitant_to_skip(self._resources, self._filter)
        for res in self._resources:
            gr = res.group_resource
            if gr in skip:
                self.stats.skipped["cohabiting resource"] += 1
                continue
            if not self._filter.should_include(gr):
                continue
            if res.namespaced:
                async for item in self._namespaced(res, gr):
                    yield item
            elif gr == NAMESPACES:
                async for item in self._namespace_objects(res):
                    yield item
            else:
                async for item in self._cluster_scoped(res, gr):
                    yield item

    async def _namespaced(self, res: Resource, gr: str) -> AsyncIterator[Item]:
        # PVCs referenced by pods are taken regardless of the selector, so list them unfiltered.
        by_reference = gr == PVCS and not self._selector.empty
        query = None if by_reference or self._selector.empty else self._selector.to_query()
        for ns in self._namespaces_to_list():
            async for obj in self._list(res, gr, ns, query):
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

    async def _cluster_scoped(self, res: Resource, gr: str) -> AsyncIterator[Item]:
        allowed = self._cluster_scoped_allowed(gr)
        by_reference = gr == PVS and self._include_cluster is not False
        if not allowed and not (by_reference and self._bound_pvs):
            return
        unfiltered = by_reference and (not allowed or not self._selector.empty)
        query = None if unfiltered or self._selector.empty else self._selector.to_query()
        async for obj in self._list(res, gr, None, query):
            name, _ = self._identity(obj)
            referenced = by_reference and name in self._bound_pvs
            if not referenced and not (allowed and self._selector.matches(_labels(obj))):
                continue
            item = self._accept(res, gr, None, name, obj)
            if item is not None:
                yield item

    async def _namespace_objects(self, res: Resource) -> AsyncIterator[Item]:
        # Listed unfiltered: a named namespace that does not exist is an error, as Ark's Get was.
        wanted = [ns for ns in self._namespaces_to_list() if ns is not None]
        found: set[str] = set()
        errors_before = len(self.errors)
        async for obj in self._list(res, NAMESPACES, None, None):
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
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for page in self._lister.list_pages(res, namespace, query):
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
