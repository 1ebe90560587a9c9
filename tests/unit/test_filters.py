"""Backup scope: include/exclude lists, resource names, label selectors and what the collector takes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from arkd.backup.collector import BackupCollector, Item, order_resources
from arkd.backup.filters import (
    FilterValidationError,
    IncludesExcludes,
    LabelSelector,
    ResourceResolver,
    label_selector_query,
    parse_label_selector,
    spec_filters,
    validate_includes_excludes,
)
from arkd.kube.resource import Resource

# What a 1.20 apiserver (plus an old "extensions" deployments and Ark's CRDs) reports, in
# discovery order.
DISCOVERY = [
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",)),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",)),
    Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False, short_names=("pv",)),
    Resource("", "v1", "pods", "Pod", short_names=("po",)),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "services", "Service", short_names=("svc",)),
    Resource("extensions", "v1beta1", "deployments", "Deployment", short_names=("deploy",)),
    Resource("extensions", "v1beta1", "ingresses", "Ingress", short_names=("ing",)),
    Resource("apps", "v1", "deployments", "Deployment", short_names=("deploy",)),
    Resource("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",)),
    Resource("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",)),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("ark.heptio.com", "v1", "backups", "Backup"),
]


# --------------------------------------------------------------------------- includes/excludes


@pytest.mark.parametrize(
    ("includes", "excludes", "item", "expected"),
    [
        ([], [], "anything", True),
        (["*"], [], "anything", True),
        (["a", "b"], [], "b", True),
        (["a", "b"], [], "c", False),
        ([], ["c"], "c", False),
        (["*"], ["c"], "c", False),
        (["c"], ["c"], "c", False),  # excludes win
        ([], ["*"], "a", False),
    ],
)
def test_includes_excludes_semantics(
    includes: list[str], excludes: list[str], item: str, expected: bool
) -> None:
    assert IncludesExcludes(includes, excludes).should_include(item) is expected


def test_include_everything_only_without_excludes() -> None:
    assert IncludesExcludes().include_everything()
    assert IncludesExcludes(["*"]).include_everything()
    assert not IncludesExcludes(["a"]).include_everything()
    assert not IncludesExcludes([], ["kube-system"]).include_everything()
    assert IncludesExcludes().includes_string() == "*"
    assert IncludesExcludes().excludes_string() == "<none>"


def test_validation_uses_arks_messages() -> None:
    assert validate_includes_excludes(["*", "a"], ["*", "a", "b"]) == [
        "includes list must either contain '*' only, or a non-empty list of items",
        "excludes list cannot contain '*'",
        "excludes list cannot contain an item in the includes list: a",
    ]
    assert validate_includes_excludes(["*"], ["kube-system"]) == []
    with pytest.raises(FilterValidationError) as err:
        IncludesExcludes.validated(["ns1"], ["ns1"])
    assert err.value.errors == ["excludes list cannot contain an item in the includes list: ns1"]


# --------------------------------------------------------------------------- resource names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pods", "pods"),
        ("Pods", "pods"),
        ("pod", "pods"),  # kind, case-insensitive
        ("Pod", "pods"),
        ("po", "pods"),
        ("deployments", "deployments.apps"),  # apps over the legacy extensions group
        ("deploy", "deployments.apps"),
        ("Deployment", "deployments.apps"),
        ("deployments.apps", "deployments.apps"),
        ("deployments.extensions", "deployments.extensions"),
        ("deploy.extensions", "deployments.extensions"),
        ("events", "events"),  # core over events.k8s.io
        ("ev", "events"),
        ("events.events.k8s.io", "events.events.k8s.io"),
        ("ingresses", "ingresses.networking.k8s.io"),
        ("netpol", "networkpolicies.networking.k8s.io"),
        ("clusterroles.rbac.authorization.k8s.io", "clusterroles.rbac.authorization.k8s.io"),
        (" pvc ", "persistentvolumeclaims"),
        ("backups.ark.heptio.com", "backups.ark.heptio.com"),
    ],
)
def test_resolver_accepts_what_users_type(name: str, expected: str) -> None:
    assert ResourceResolver(DISCOVERY).resolve(name) == expected


def test_unknown_resources_are_all_reported_at_once() -> None:
    resolver = ResourceResolver(DISCOVERY)
    with pytest.raises(FilterValidationError) as err:
        resolver.includes_excludes(["pods", "foo", "deployments.nosuchgroup"], ["bar"])
    assert err.value.errors == [
        "unknown resource: foo",
        "unknown resource: deployments.nosuchgroup",
        "unknown resource: bar",
    ]
    assert "unknown resource: foo" in str(err.value)


def test_resolved_lists_are_validated_after_resolution() -> None:
    resolver = ResourceResolver(DISCOVERY)
    with pytest.raises(FilterValidationError) as err:
        resolver.includes_excludes(["deploy"], ["deployments.apps"])
    assert err.value.errors == ["excludes list cannot contain an item in the includes list: deployments.apps"]
    with pytest.raises(FilterValidationError, match="must either contain '\\*' only"):
        resolver.includes_excludes(["*", "pods"], [])
    ie = resolver.includes_excludes(["po", "Deployment"], ["svc"])
    assert ie.includes == ["deployments.apps", "pods"]
    assert ie.excludes == ["services"]
    assert resolver.includes_excludes(["*"], []).include_everything()


# --------------------------------------------------------------------------- label selectors


def test_label_selector_dict_to_list_api_string() -> None:
    selector = {
        "matchLabels": {"b": "2", "app.kubernetes.io/name": "web"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "dev"]},
            {"key": "tier", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["b"]},
            {"key": "owner", "operator": "Exists"},
        ],
    }
    # sorted by key, values sorted, like apimachinery's Selector.String()
    assert (
        label_selector_query(selector)
        == "app.kubernetes.io/name=web,b=2,env in (dev,prod),owner,!tier,zone notin (b)"
    )
    assert label_selector_query(None) == ""
    assert label_selector_query({}) == ""


def test_label_selector_matching() -> None:
    sel = LabelSelector.from_dict(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
        }
    )
    assert sel.matches({"app": "web"})
    assert sel.matches({"app": "web", "env": "prod"})
    assert not sel.matches({"app": "web", "env": "dev"})
    assert not sel.matches({"app": "db"})
    assert not sel.matches(None)
    assert LabelSelector.from_dict(None).matches(None)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            "'Equals' is not a valid",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchLabels": {"bad key": "x"}}, "key 'bad key'"),
        ({"matchLabels": {"Example.COM/app": "x"}}, "prefix before '/'"),
        ({"matchLabels": {"app": "-web"}}, "value '-web'"),
        ({"matchLabels": {"app": "x" * 64}}, "1-63 characters"),
        ({"matchLabel": {"app": "x"}}, "unknown field(s) matchLabel"),
    ],
)
def test_invalid_label_selectors_are_explained(selector: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterValidationError) as err:
        LabelSelector.from_dict(selector)
    assert message in str(err.value)


def test_cli_selector_parses_into_a_label_selector() -> None:
    assert parse_label_selector("a=b,c!=d,e in (x,y)") == {
        "matchLabels": {"a": "b"},
        "matchExpressions": [
            {"key": "c", "operator": "NotIn", "values": ["d"]},
            {"key": "e", "operator": "In", "values": ["x", "y"]},
        ],
    }
    assert parse_label_selector(" f notin ( z ) , g , !h , i==j , k= ") == {
        "matchLabels": {"i": "j", "k": ""},
        "matchExpressions": [
            {"key": "f", "operator": "NotIn", "values": ["z"]},
            {"key": "g", "operator": "Exists"},
            {"key": "h", "operator": "DoesNotExist"},
        ],
    }
    assert parse_label_selector("") == {}
    text = "app.kubernetes.io/name=web,env in (dev,prod),!tier"
    assert LabelSelector.parse(text).to_query() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a in x", "expected '(' after 'in'"),
        ("a in (x", "expected ',' or ')'"),
        ("a=b,", "trailing ','"),
        ("a >= 3", "unexpected '>'"),
        ("a=b=c", "expected ',' before '='"),
        ("a=b,a=c", "required to equal both"),
        ("!", "expected a label key after '!'"),
        ("bad key=1", "unexpected 'key' after key 'bad'"),
        ("a=-x", "value '-x'"),
    ],
)
def test_cli_selector_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FilterValidationError) as err:
        parse_label_selector(text)
    assert message in str(err.value)


# --------------------------------------------------------------------------- collector


def obj(
    kind: str, name: str, namespace: str | None = None, labels: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    return {"kind": kind, "metadata": meta, **extra}


def pod(
    name: str, ns: str, claims: Sequence[str] = (), labels: dict[str, str] | None = None, **meta: Any
) -> dict[str, Any]:
    volumes = [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]
    out = obj("Pod", name, ns, labels, spec={"volumes": volumes})
    out["metadata"].update(meta)
    return out


def pvc(name: str, ns: str, pv: str | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec = {"volumeName": pv} if pv else {}
    return obj(
        "PersistentVolumeClaim", name, ns, labels, spec=spec, status={"phase": "Bound" if pv else "Pending"}
    )


CLUSTER: dict[str, list[dict[str, Any]]] = {
    "namespaces": [obj("Namespace", n) for n in ("app", "other", "kube-system")],
    "nodes": [obj("Node", "node-1")],
    "pods": [
        pod("web-0", "app", ["data"], labels={"app": "web"}),
        pod("db-0", "app", [], labels={"app": "db"}),
        pod("x", "other", ["scratch"]),
        pod("dying", "app", labels={"app": "web"}, deletionTimestamp="2024-01-01T00:00:00Z"),
    ],
    "persistentvolumeclaims": [
        pvc("data", "app", "pv-data"),
        pvc("logs", "app", "pv-logs", labels={"app": "web"}),
        pvc("unbound", "app", None),
        pvc("scratch", "other", "pv-other"),
    ],
    "persistentvolumes": [obj("PersistentVolume", n) for n in ("pv-data", "pv-logs", "pv-other", "pv-free")],
    "secrets": [
        obj("Secret", "tls", "app"),
        obj("Secret", "ark-restic-credentials-app", "app", {"ark.heptio.com/restic-key": "app"}),
    ],
    "events": [obj("Event", "e1", "app")],
    "events.events.k8s.io": [obj("Event", "e1", "app")],
    "deployments.apps": [obj("Deployment", "web", "app", {"app": "web"})],
    "deployments.extensions": [obj("Deployment", "web", "app", {"app": "web"})],
    "ingresses.networking.k8s.io": [obj("Ingress", "web", "app")],
    "ingresses.extensions": [obj("Ingress", "web", "app")],
    "clusterroles.rbac.authorization.k8s.io": [obj("ClusterRole", "edit")],
}


class MemoryLister:
    """An in-memory `Lister`: filters by namespace and label selector, two objects per page."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]], fail: frozenset[str] = frozenset()) -> None:
        self.objects = objects
        self.fail = fail

    async def list_pages(
        self, resource: Resource, namespace: str | None, label_selector: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        if resource.group_resource in self.fail:
            raise RuntimeError(f"{resource.group_resource} is forbidden")
        selector = LabelSelector.parse(label_selector or "")
        items = [
            o
            for o in self.objects.get(resource.group_resource, [])
            if (namespace is None or o["metadata"].get("namespace") == namespace)
            and selector.matches(o["metadata"].get("labels"))
        ]
        for i in range(0, len(items), 2):
            yield items[i : i + 2]


async def collect(
    *,
    namespaces: IncludesExcludes | None = None,
    resources: IncludesExcludes | None = None,
    selector: str = "",
    include_cluster: bool | None = None,
    fail: frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, str | None, str]], BackupCollector]:
    collector = BackupCollector(
        MemoryLister(CLUSTER, fail),
        DISCOVERY,
        namespaces=namespaces or IncludesExcludes(),
        resource_filter=resources or IncludesExcludes(),
        label_selector=LabelSelector.parse(selector),
        include_cluster_resources=include_cluster,
    )
    items: list[Item] = [item async for item in collector.items()]
    return [(i.group_resource, i.namespace, i.name) for i in items], collector


def test_walk_order_is_arks() -> None:
    order = [r.group_resource for r in order_resources(DISCOVERY)]
    assert order[:3] == ["pods", "persistentvolumeclaims", "persistentvolumes"]
    assert order[3:9] == ["configmaps", "events", "namespaces", "nodes", "secrets", "services"]
    assert order[-2:] == ["deployments.extensions", "ingresses.extensions"]


async def test_whole_cluster_backup_takes_cluster_resources_and_one_copy_of_cohabitants() -> None:
    got, collector = await collect()
    assert got[:4] == [
        ("pods", "app", "web-0"),
        ("pods", "app", "db-0"),
        ("pods", "other", "x"),
        ("persistentvolumeclaims", "app", "data"),
    ]
    assert ("persistentvolumes", None, "pv-free") in got  # all cluster-scoped resources
    assert ("clusterroles.rbac.authorization.k8s.io", None, "edit") in got
    assert ("nodes", None, "node-1") in got
    assert ("namespaces", None, "kube-system") in got
    assert ("events", "app", "e1") in got and ("events.events.k8s.io", "app", "e1") not in got
    assert ("deployments.apps", "app", "web") in got and ("deployments.extensions", "app", "web") not in got
    assert ("ingresses.networking.k8s.io", "app", "web") in got and (
        "ingresses.extensions",
        "app",
        "web",
    ) in got
    # never in a tarball: restic key secrets and objects being deleted
    assert ("secrets", "app", "tls") in got
    assert ("secrets", "app", "ark-restic-credentials-app") not in got
    assert ("pods", "app", "dying") not in got
    assert collector.stats.skipped["restic key secret"] == 1
    assert collector.stats.skipped["being deleted"] == 1
    assert collector.errors == []
    assert len(got) == len(set(got))


async def test_one_namespace_takes_only_its_volumes_and_namespace_object() -> None:
    got, collector = await collect(namespaces=IncludesExcludes(["app"]))
    cluster_scoped = sorted((gr, name) for gr, ns, name in got if ns is None)
    # PVs bound to app's PVCs (even unused ones), the Namespace, nothing else cluster-scoped
    assert cluster_scoped == [
        ("namespaces", "app"),
        ("persistentvolumes", "pv-data"),
        ("persistentvolumes", "pv-logs"),
    ]
    assert {ns for _, ns, _ in got if ns is not None} == {"app"}
    assert collector.errors == []


async def test_include_cluster_resources_false_keeps_only_namespace_objects() -> None:
    got, _ = await collect(include_cluster=False)
    assert sorted((gr, name) for gr, ns, name in got if ns is None) == [
        ("namespaces", "app"),
        ("namespaces", "kube-system"),
        ("namespaces", "other"),
    ]
    assert ("persistentvolumeclaims", "app", "data") in got


async def test_include_cluster_resources_true_with_one_namespace_takes_every_cluster_resource() -> None:
    got, _ = await collect(namespaces=IncludesExcludes(["app"]), include_cluster=True)
    assert ("persistentvolumes", None, "pv-free") in got
    assert ("clusterroles.rbac.authorization.k8s.io", None, "edit") in got
    assert ("namespaces", None, "other") not in got  # namespaces still follow the namespace filter
    assert ("pods", "other", "x") not in got


async def test_excluded_namespace_is_skipped_and_cluster_scope_narrows() -> None:
    got, _ = await collect(namespaces=IncludesExcludes(["*"], ["other"]))
    assert not [i for i in got if i[1] == "other"]
    assert ("namespaces", None, "other") not in got
    # not "every namespace" any more, so unset includeClusterResources means volumes only
    assert ("clusterroles.rbac.authorization.k8s.io", None, "edit") not in got
    assert ("persistentvolumes", None, "pv-data") in got and (
        "persistentvolumes",
        None,
        "pv-other",
    ) not in got


async def test_label_selector_still_takes_volumes_of_selected_pods() -> None:
    got, _ = await collect(namespaces=IncludesExcludes(["app"]), selector="app=web")
    assert ("pods", "app", "web-0") in got and ("pods", "app", "db-0") not in got
    # "data" has no labels but web-0 mounts it; "logs" matches the selector itself
    assert ("persistentvolumeclaims", "app", "data") in got
    assert ("persistentvolumeclaims", "app", "logs") in got
    assert ("persistentvolumeclaims", "app", "unbound") not in got
    assert ("persistentvolumes", None, "pv-data") in got and ("persistentvolumes", None, "pv-logs") in got
    assert ("secrets", "app", "tls") not in got
    assert ("namespaces", None, "app") not in got  # Ark applies the selector to Namespace objects too
    assert ("deployments.apps", "app", "web") in got


async def test_resource_filter_and_cohabitants() -> None:
    got, _ = await collect(resources=IncludesExcludes(["pods", "persistentvolumes"]))
    assert {gr for gr, _, _ in got} == {"pods", "persistentvolumes"}
    # excluding the preferred group falls back to the other one, as Ark's "first seen" rule did
    got, _ = await collect(resources=IncludesExcludes([], ["deployments.apps"]))
    assert ("deployments.extensions", "app", "web") in got
    # excluding PVCs means no PV is pulled in by reference
    got, _ = await collect(
        namespaces=IncludesExcludes(["app"]), resources=IncludesExcludes([], ["persistentvolumeclaims"])
    )
    assert not [i for i in got if i[0] == "persistentvolumes"]


async def test_failures_are_recorded_and_the_backup_goes_on() -> None:
    got, collector = await collect(
        namespaces=IncludesExcludes(["app", "missing"]), fail=frozenset({"secrets"})
    )
    # what comes before and after the failing listing is still backed up
    assert ("pods", "app", "web-0") in got and ("deployments.apps", "app", "web") in got
    assert [str(e) for e in collector.errors] == [
        "namespaces missing: namespace missing not found",
        "secrets in namespace app: error listing items: secrets is forbidden",
        "secrets in namespace missing: error listing items: secrets is forbidden",
    ]


def test_spec_filters_report_every_problem_of_a_spec_at_once() -> None:
    errors: list[str] = []
    filters = spec_filters(
        {
            "includedNamespaces": ["app", "*"],
            "excludedNamespaces": ["app"],
            "includedResources": ["configmaps", "widgets"],
            "labelSelector": {"matchLabels": {"bad key!": "x"}},
        },
        DISCOVERY,
        errors,
    )
    assert errors == [
        "invalid includedNamespaces/excludedNamespaces: includes list must either contain '*' only, or a "
        "non-empty list of items",
        "invalid includedNamespaces/excludedNamespaces: excludes list cannot contain an item in the includes "
        "list: app",
        "unknown resource: widgets",
        "invalid label selector: key 'bad key!': the name part must be 1-63 characters of alphanumerics, '-', "
        "'_' or '.', starting and ending with an alphanumeric",
    ]
    # What could be read is still returned; the caller refuses the spec because of the errors.
    assert sorted(filters.namespaces.includes) == ["*", "app"]


def test_spec_filters_of_a_valid_spec_resolve_names_to_group_resources() -> None:
    errors: list[str] = []
    filters = spec_filters(
        {"includedResources": ["deploy", "cm"], "labelSelector": {"matchLabels": {"app": "web"}}}, DISCOVERY, errors
    )
    assert errors == []
    assert filters.resources.should_include("deployments.apps")
    assert filters.resources.should_include("configmaps")
    assert not filters.resources.should_include("secrets")
    assert filters.selector.matches({"app": "web"}) and not filters.selector.matches({"app": "db"})
