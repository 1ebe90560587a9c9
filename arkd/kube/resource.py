"""Identity of a Kubernetes API resource and how its URL paths are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote


@dataclass(frozen=True)
class Resource:
    """One REST resource at one version, e.g. ``apps/v1 deployments``.

    Equality and hashing use only the identifying fields, so a resource found by discovery
    equals the matching predefined constant below.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = field(default=(), compare=False)
    verbs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` value of this resource's objects (``v1`` for the core group)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group`` (just ``plural`` for the core group), the form RBAC and kubectl use."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base_path(self) -> str:
        """The group-version prefix: ``/api/v1`` or ``/apis/<group>/<version>``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path of the collection, one object, or one object's subresource.

        ``namespace=None`` on a namespaced resource addresses all namespaces (collections only).
        """
        if not self.namespaced and namespace is not None:
            raise ValueError(
                f"{self.group_resource} is cluster-scoped; call without a namespace (got {namespace!r})"
            )
        if subresource is not None and name is None:
            raise ValueError(f"subresource {subresource!r} of {self.group_resource} needs an object name")
        if self.namespaced and name is not None and namespace is None:
            raise ValueError(f"{self.group_resource} is namespaced; pass the namespace of object {name!r}")
        parts = [self.base_path()]
        if namespace is not None:
            if not namespace:
                raise ValueError(f"empty namespace for {self.group_resource}; pass a namespace name or None")
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            if not name:
                raise ValueError(f"empty object name for {self.group_resource}")
            parts.append(quote(name, safe=""))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    def __str__(self) -> str:
        return f"{self.api_version}/{self.plural}"


PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
PVS = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)
