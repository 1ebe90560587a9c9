"""KubeClient against the real kube-apiserver: CRUD, paging, patches, errors, watches, discovery."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from arkd.kube.client import KubeClient, load_configuration
from arkd.kube.discovery import discover, preferred_versions, resolve
from arkd.kube.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    Unauthorized,
)
from arkd.kube.patch import add_finalizer_patch, guarded_merge_patch, remove_finalizer_patch, status_merge_patch
from arkd.kube.resource import CONFIGMAPS, NAMESPACES, PODS, SERVICEACCOUNTS, Resource

WIDGETS = Resource("test.arkd.io", "v1", "widgets", "Widget")

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.arkd.io"},
    "spec": {
        "group": "test.arkd.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": name,
                "served": True,
                "storage": name == "v1",
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0}}},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }
            for name in ("v1", "v1alpha1")
        ],
    },
}


@pytest.fixture(scope="session")
def widget_crd(envtest: Any) -> Resource:
    """A CRD of the tests' own with the status subresource (kube is generic, so no Ark kinds here)."""
    envtest.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    envtest.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.test.arkd.io")
    return WIDGETS


def configmap(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": data}


# ------------------------------------------------------------------------------ CRUD and errors


async def test_create_get_replace_delete_round_trip(kube: KubeClient, namespace: str) -> None:
    created = await kube.create(CONFIGMAPS, configmap("a", namespace, k="v"))
    assert created["metadata"]["uid"]
    got = await kube.get(CONFIGMAPS, "a", namespace)
    assert got["data"] == {"k": "v"}
    got["data"]["k"] = "w"
    replaced = await kube.replace(CONFIGMAPS, "a", got)
    assert replaced["data"] == {"k": "w"}
    assert await kube.delete(CONFIGMAPS, "a", namespace) is None
    with pytest.raises(NotFound):
        await kube.get(CONFIGMAPS, "a", namespace)


async def test_errors_carry_the_servers_message(kube: KubeClient, namespace: str) -> None:
    with pytest.raises(NotFound) as missing:
        await kube.get(CONFIGMAPS, "nope", namespace)
    assert str(missing.value) == 'configmaps "nope" not found'

    await kube.create(CONFIGMAPS, configmap("taken", namespace))
    with pytest.raises(AlreadyExists) as taken:
        await kube.create(CONFIGMAPS, configmap("taken", namespace))
    assert str(taken.value) == 'configmaps "taken" already exists'

    with pytest.raises(Invalid) as invalid:
        await kube.create(CONFIGMAPS, configmap("Not_A_Name", namespace))
    assert 'ConfigMap "Not_A_Name" is invalid' in str(invalid.value)
    assert [c.get("field") for c in invalid.value.causes] == ["metadata.name"]


async def test_a_replace_from_a_stale_copy_gets_conflict(kube: KubeClient, namespace: str) -> None:
    stale = await kube.create(CONFIGMAPS, configmap("c", namespace, n="1"))
    await kube.patch(CONFIGMAPS, "c", {"data": {"n": "2"}}, namespace)
    stale["data"]["n"] = "3"
    with pytest.raises(Conflict) as caught:
        await kube.replace(CONFIGMAPS, "c", stale)
    assert "the object has been modified" in str(caught.value)
    with pytest.raises(Conflict):
        await kube.patch(CONFIGMAPS, "c", guarded_merge_patch(stale, {"data": {"n": "4"}}), namespace)
    assert (await kube.get(CONFIGMAPS, "c", namespace))["data"] == {"n": "2"}


def test_guarded_patches_need_a_resource_version() -> None:
    with pytest.raises(ValueError, match=r"metadata\.resourceVersion"):
        status_merge_patch({"metadata": {"name": "x"}}, {"phase": "Done"})


async def test_delete_with_a_wrong_uid_precondition_is_refused(kube: KubeClient, namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("p", namespace))
    with pytest.raises(Conflict) as caught:
        await kube.delete(CONFIGMAPS, "p", namespace, preconditions_uid="00000000-0000-0000-0000-000000000000")
    assert "the UID in the precondition" in str(caught.value)
    await kube.get(CONFIGMAPS, "p", namespace)


async def test_a_cluster_scoped_create_needs_no_namespace(kube: KubeClient) -> None:
    created = await kube.create(NAMESPACES, {"metadata": {"generateName": "t-cluster-"}})
    name = created["metadata"]["name"]
    assert (await kube.get(NAMESPACES, name))["metadata"]["uid"] == created["metadata"]["uid"]
    await kube.delete(NAMESPACES, name)


# ------------------------------------------------------------------------------ lists


async def test_list_follows_continue_tokens_past_500(kube: KubeClient, namespace: str) -> None:
    gate = asyncio.Semaphore(50)

    async def make(i: int) -> None:
        async with gate:
            await kube.create(CONFIGMAPS, configmap(f"cm-{i:04d}", namespace, i=str(i)))

    await asyncio.gather(*(make(i) for i in range(1105)))
    first = await kube.list_page(CONFIGMAPS, namespace)
    assert len(first["items"]) == 500
    assert first["metadata"]["continue"]

    items = await kube.list(CONFIGMAPS, namespace)
    names = [item["metadata"]["name"] for item in items]
    assert len(names) == 1105
    assert sorted(names) == [f"cm-{i:04d}" for i in range(1105)]
    # List items arrive without apiVersion/kind from the server; the client fills them in.
    assert {(item["apiVersion"], item["kind"]) for item in items} == {("v1", "ConfigMap")}


async def test_list_with_a_label_selector(kube: KubeClient, namespace: str) -> None:
    for i, team in enumerate(["a", "b", "a"]):
        obj = configmap(f"l{i}", namespace)
        obj["metadata"]["labels"] = {"team": team}
        await kube.create(CONFIGMAPS, obj)
    picked = await kube.list(CONFIGMAPS, namespace, label_selector="team=a")
    assert sorted(o["metadata"]["name"] for o in picked) == ["l0", "l2"]


# ------------------------------------------------------------------------------ patches


async def test_merge_patch_sets_and_removes_keys(kube: KubeClient, namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("m", namespace, keep="1", drop="2"))
    patched = await kube.patch(CONFIGMAPS, "m", {"data": {"drop": None, "new": "3"}}, namespace)
    assert patched["data"] == {"keep": "1", "new": "3"}


async def test_json_patch_applies_only_when_its_test_holds(kube: KubeClient, namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("j", namespace, phase="New"))
    claim = [{"op": "test", "path": "/data/phase", "value": "New"},
             {"op": "replace", "path": "/data/phase", "value": "InProgress"}]
    assert (await kube.patch(CONFIGMAPS, "j", claim, namespace, patch_type="json"))["data"]["phase"] == "InProgress"
    # The same claim again: the test op fails, so nothing changes.
    with pytest.raises(Invalid):
        await kube.patch(CONFIGMAPS, "j", claim, namespace, patch_type="json")
    assert (await kube.get(CONFIGMAPS, "j", namespace))["data"]["phase"] == "InProgress"


async def test_strategic_merge_patch_merges_lists_by_key(kube: KubeClient, namespace: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
        "spec": {"containers": [{"name": "a", "image": "busybox:1"}, {"name": "b", "image": "busybox:1"}]},
    }
    await kube.create(PODS, pod)
    patch = {"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}
    patched = await kube.patch(PODS, "p", patch, namespace, patch_type="strategic")
    assert [(c["name"], c["image"]) for c in patched["spec"]["containers"]] == [
        ("a", "busybox:1"), ("b", "busybox:2")]


async def test_finalizer_patches_add_and_remove_exactly_one(kube: KubeClient, namespace: str) -> None:
    obj = await kube.create(CONFIGMAPS, configmap("f", namespace))
    obj = await kube.patch(CONFIGMAPS, "f", add_finalizer_patch(obj, "example.com/one"), namespace,
                           patch_type="json")
    obj = await kube.patch(CONFIGMAPS, "f", add_finalizer_patch(obj, "example.com/two"), namespace,
                           patch_type="json")
    assert obj["metadata"]["finalizers"] == ["example.com/one", "example.com/two"]
    assert add_finalizer_patch(obj, "example.com/one") == []

    stale = obj
    obj = await kube.patch(CONFIGMAPS, "f", remove_finalizer_patch(obj, "example.com/one"), namespace,
                           patch_type="json")
    assert obj["metadata"]["finalizers"] == ["example.com/two"]
    # A removal computed from the stale copy targets index 0, which now holds another finalizer.
    with pytest.raises(Invalid):
        await kube.patch(CONFIGMAPS, "f", remove_finalizer_patch(stale, "example.com/one"), namespace,
                         patch_type="json")
    obj = await kube.patch(CONFIGMAPS, "f", remove_finalizer_patch(obj, "example.com/two"), namespace,
                           patch_type="json")
    assert not obj["metadata"].get("finalizers")


async def test_status_subresource_patch_and_stale_resource_version(
    kube: KubeClient, namespace: str, widget_crd: Resource
) -> None:
    widget = await kube.create(widget_crd, {
        "apiVersion": widget_crd.api_version, "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace}, "spec": {"size": 1},
    })
    updated = await kube.patch(widget_crd, "w", status_merge_patch(widget, {"phase": "InProgress"}), namespace,
                               subresource="status")
    assert updated["status"] == {"phase": "InProgress"}
    assert updated["spec"] == {"size": 1}

    # Written from the first read, whose resourceVersion is now stale: the server refuses it.
    with pytest.raises(Conflict) as caught:
        await kube.patch(widget_crd, "w", status_merge_patch(widget, {"phase": "Completed"}), namespace,
                         subresource="status")
    assert "the object has been modified" in str(caught.value)
    assert (await kube.get(widget_crd, "w", namespace))["status"] == {"phase": "InProgress"}

    # Status written through the main resource is ignored when the status subresource is enabled.
    main = await kube.patch(widget_crd, "w", {"spec": {"size": 2}, "status": {"phase": "Hacked"}}, namespace)
    assert main["spec"] == {"size": 2}
    assert main["status"] == {"phase": "InProgress"}


async def test_crd_schema_validation_gives_invalid(kube: KubeClient, namespace: str, widget_crd: Resource) -> None:
    with pytest.raises(Invalid) as caught:
        await kube.create(widget_crd, {"apiVersion": widget_crd.api_version, "kind": "Widget",
                                       "metadata": {"name": "neg", "namespace": namespace},
                                       "spec": {"size": -1}})
    assert "spec.size" in str(caught.value)


# ------------------------------------------------------------------------------ watch


async def collect_watch(kube: KubeClient, namespace: str, rv: str, until: set[str],
                        out: list[dict[str, Any]]) -> None:
    async for event in kube.watch(CONFIGMAPS, namespace, resource_version=rv, timeout_seconds=5):
        out.append(event)
        if until <= {e["type"] for e in out}:
            return


async def test_watch_reports_added_modified_deleted_and_bookmarks(kube: KubeClient, namespace: str) -> None:
    rv = (await kube.list_page(CONFIGMAPS, namespace))["metadata"]["resourceVersion"]
    events: list[dict[str, Any]] = []
    # The apiserver sends a bookmark 2s before a watch's deadline, so a 5s watch gets one.
    watcher = asyncio.create_task(collect_watch(kube, namespace, rv,
                                                {"ADDED", "MODIFIED", "DELETED", "BOOKMARK"}, events))
    await kube.create(CONFIGMAPS, configmap("w", namespace, n="1"))
    await kube.patch(CONFIGMAPS, "w", {"data": {"n": "2"}}, namespace)
    await kube.delete(CONFIGMAPS, "w", namespace)
    await asyncio.wait_for(watcher, 30)

    changes = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    modified = next(e for e in events if e["type"] == "MODIFIED")
    assert modified["object"]["data"] == {"n": "2"}
    # A bookmark carries just the resourceVersion to resume from, at or after what was already seen.
    types = [e["type"] for e in events]
    last_bookmark = len(types) - 1 - types[::-1].index("BOOKMARK")
    seen_before = [int(e["object"]["metadata"]["resourceVersion"]) for e in events[:last_bookmark]]
    bookmark_rv = int(events[last_bookmark]["object"]["metadata"]["resourceVersion"])
    assert bookmark_rv >= max(seen_before, default=int(rv))


async def test_watch_from_an_expired_resource_version_raises_gone(
    kube: KubeClient, namespace: str, widget_crd: Resource
) -> None:
    # The server's watch history for a resource starts when it began caching it (for this CRD:
    # when the CRD was established), so resourceVersion "1" is older than anything it can replay.
    with pytest.raises(Gone) as caught:
        async for _ in kube.watch(widget_crd, namespace, resource_version="1", timeout_seconds=5):
            pass
    assert "too old resource version" in str(caught.value)


async def test_a_watch_can_be_closed_early(kube: KubeClient, namespace: str) -> None:
    rv = (await kube.list_page(CONFIGMAPS, namespace))["metadata"]["resourceVersion"]
    await kube.create(CONFIGMAPS, configmap("x", namespace))
    async with kube.watch(CONFIGMAPS, namespace, resource_version=rv) as stream:
        async for event in stream:
            assert event["type"] == "ADDED"
            break
    # The client still works after abandoning a long-running watch.
    assert (await kube.get(CONFIGMAPS, "x", namespace))["metadata"]["name"] == "x"


# ------------------------------------------------------------------------------ auth and config


async def test_rbac_denial_is_forbidden_and_a_bad_token_is_unauthorized(
    kube: KubeClient, namespace: str, envtest: Any, tmp_path: Path
) -> None:
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "nobody", "namespace": namespace}})
    review = await kube.request(
        "POST", SERVICEACCOUNTS.path(namespace, "nobody", "token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )
    token = review["status"]["token"]
    async with await KubeClient.connect(envtest.make_kubeconfig(token, str(tmp_path / "sa.kubeconfig"))) as sa:
        with pytest.raises(Forbidden) as denied:
            await sa.list(CONFIGMAPS, namespace)
    assert f'User "system:serviceaccount:{namespace}:nobody" cannot list resource "configmaps"' in str(denied.value)

    async with await KubeClient.connect(envtest.make_kubeconfig("wrong", str(tmp_path / "bad.kubeconfig"))) as bad:
        with pytest.raises(Unauthorized):
            await bad.list(CONFIGMAPS, namespace)


async def test_in_cluster_configuration_reaches_the_apiserver(envtest: Any, tmp_path: Path) -> None:
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(envtest.token)
    (sa_dir / "ca.crt").write_text(Path(envtest.ca_file).read_text())
    host, port = envtest.server.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    configuration = await load_configuration(None, environ=env, home=str(tmp_path), service_account_dir=str(sa_dir))
    async with KubeClient.from_configuration(configuration) as client:
        assert (await client.get(NAMESPACES, "default"))["metadata"]["name"] == "default"


async def test_binary_data_round_trips(kube: KubeClient, namespace: str) -> None:
    payload = bytes(range(256))
    obj = configmap("bin", namespace)
    obj["binaryData"] = {"blob": base64.b64encode(payload).decode()}
    await kube.create(CONFIGMAPS, obj)
    got = await kube.get(CONFIGMAPS, "bin", namespace)
    assert base64.b64decode(got["binaryData"]["blob"]) == payload


# ------------------------------------------------------------------------------ discovery


async def test_discovery_lists_every_listable_resource_at_its_preferred_version(
    kube: KubeClient, widget_crd: Resource
) -> None:
    resources = await discover(kube)
    by_name = {r.group_resource: r for r in resources}
    assert by_name["pods"] == PODS
    assert by_name["pods"].namespaced and by_name["pods"].kind == "Pod"
    assert not by_name["namespaces"].namespaced
    assert by_name["deployments.apps"].api_version == "apps/v1"
    # The CRD serves v1 and v1alpha1; v1 is preferred.
    assert by_name["widgets.test.arkd.io"] == widget_crd
    assert "wd" in by_name["widgets.test.arkd.io"].short_names
    assert all("/" not in r.plural and "list" in r.verbs for r in resources)
    # Create-only resources (bindings, tokenreviews) cannot be listed and are left out.
    assert "bindings" not in by_name and "tokenreviews.authentication.k8s.io" not in by_name
    assert len(by_name) == len(resources), "each resource appears once, at one version"

    versions = await preferred_versions(kube)
    assert versions[""] == "v1"
    assert versions["test.arkd.io"] == "v1"
    assert versions["apps"] == "v1"

    assert resolve(resources, "deploy").group_resource == "deployments.apps"
    assert resolve(resources, "Pod") == PODS
    assert resolve(resources, "widgets.test.arkd.io") == widget_crd
    assert resolve(resources, "events").group == ""  # core wins over events.k8s.io, like kubectl
    with pytest.raises(LookupError, match="no-such-things"):
        resolve(resources, "no-such-things")


async def test_an_unknown_resource_type_is_not_found(kube: KubeClient) -> None:
    with pytest.raises(NotFound):
        await kube.list(Resource("nothing.example.com", "v1", "things", "Thing"))


async def test_raw_request_returns_parsed_json_and_text(kube: KubeClient) -> None:
    version = await kube.request("GET", "/version")
    assert version["goVersion"].startswith("go")
    assert await kube.request("GET", "/healthz") == "ok"
    with pytest.raises(ApiError):
        await kube.request("GET", "/api/v1/nonsense-path")
