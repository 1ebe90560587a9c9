"""The prereqs' RBAC on a real apiserver: each service account can do its job and no more.

The harness applied manifests/common/00-prereqs.yaml. Each test mints a token for a service account
through the TokenRequest API, connects a KubeClient with it, and makes the calls `ark restic server`
or `ark server` make, then calls they must not be able to make.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from arkd.api.constants import BACKUP_UID_LABEL, RESTIC_KEY_LABEL
from arkd.controllers.resources import BACKUPS, CONFIGS, PODVOLUMEBACKUPS, PODVOLUMERESTORES
from arkd.kube.client import KubeClient
from arkd.kube.errors import Forbidden
from arkd.kube.resource import CONFIGMAPS, EVENTS, LEASES, NAMESPACES, PODS, PVCS, SECRETS, Resource
from tests.envtest.harness import Envtest

ARK_NS = "heptio-ark"
NODE = "node-rbac"
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False
)


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def _client_for(envtest: Envtest, kube: KubeClient, account: str, tmp_path: Path) -> KubeClient:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    answer = await kube.request("POST", f"/api/v1/namespaces/{ARK_NS}/serviceaccounts/{account}/token", body=request)
    kubeconfig = envtest.make_kubeconfig(answer["status"]["token"], str(tmp_path / f"{account}.kubeconfig"))
    return await KubeClient.connect(kubeconfig)


@pytest.fixture
async def node_agent(envtest: Envtest, kube: KubeClient, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await _client_for(envtest, kube, "ark-restic", tmp_path)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def ark_server(envtest: Envtest, kube: KubeClient, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await _client_for(envtest, kube, "ark", tmp_path)
    try:
        yield client
    finally:
        await client.close()


async def _forbidden(call: Awaitable[Any]) -> None:
    with pytest.raises(Forbidden):
        await call


def _pod(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "nginx"}]},
    }


def _pvc(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def _pod_ref(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}


def _pvb(name: str, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "PodVolumeBackup",
        "metadata": {"name": name, "namespace": ARK_NS, "labels": {BACKUP_UID_LABEL: "b-uid"}},
        "spec": {
            "node": NODE,
            "pod": _pod_ref(pod),
            "volume": "data",
            "repoIdentifier": f"s3:http://minio.heptio-ark.svc:9000/restic/{pod['metadata']['namespace']}",
            "tags": {"backup": "b", "volume": "data"},
        },
    }


def _pvr(name: str, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "PodVolumeRestore",
        "metadata": {"name": name, "namespace": ARK_NS},
        "spec": {
            "pod": _pod_ref(pod),
            "volume": "data",
            "repoIdentifier": f"s3:http://minio.heptio-ark.svc:9000/restic/{pod['metadata']['namespace']}",
            "snapshotID": "abcd1234",
        },
    }


def _backup(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": ARK_NS},
        "spec": {"includedNamespaces": ["nginx-example"]},
    }


def _secret(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "stringData": {"repository-password": secrets.token_hex(16)},
    }


def _event(name: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": obj["metadata"]["namespace"]},
        "involvedObject": _pod_ref(obj),
        "reason": "Completed",
        "message": "rbac test",
        "type": "Normal",
        "count": 1,
        "source": {"component": "ark-restic"},
    }


def _names(objs: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["name"] for o in objs}


# -- the node agent -------------------------------------------------------------------------------


async def test_node_agent_reads_its_pods_claims_work_and_keys(
    kube: KubeClient, node_agent: KubeClient, namespace: str
) -> None:
    pod = await kube.create(PODS, _pod(_name("app"), namespace))
    pvc = await kube.create(PVCS, _pvc(_name("data"), namespace))
    pvb = await kube.create(PODVOLUMEBACKUPS, _pvb(_name("pvb"), pod))
    pvr = await kube.create(PODVOLUMERESTORES, _pvr(_name("pvr"), pod))
    key = await kube.create(
        SECRETS, _secret(f"ark-restic-credentials-{namespace}", ARK_NS, {RESTIC_KEY_LABEL: namespace})
    )
    try:
        # Its informers: this node's pods in every namespace, all claims, its work, the keys.
        on_node = await node_agent.list(PODS, field_selector=f"spec.nodeName={NODE}")
        assert pod["metadata"]["name"] in _names(on_node)
        page = await node_agent.list_page(PODS, field_selector=f"spec.nodeName={NODE}")
        async with node_agent.watch(
            PODS,
            resource_version=page["metadata"]["resourceVersion"],
            field_selector=f"spec.nodeName={NODE}",
            timeout_seconds=1,
        ) as stream:
            async for _ in stream:
                pass
        assert (await node_agent.get(PVCS, pvc["metadata"]["name"], namespace))["metadata"]["uid"]
        assert pvc["metadata"]["name"] in _names(await node_agent.list(PVCS))
        assert pvb["metadata"]["name"] in _names(await node_agent.list(PODVOLUMEBACKUPS, ARK_NS))
        keys = await node_agent.list(SECRETS, ARK_NS, label_selector=RESTIC_KEY_LABEL)
        assert key["metadata"]["name"] in _names(keys)
        got = await node_agent.get(SECRETS, key["metadata"]["name"], ARK_NS)
        assert got["data"]["repository-password"]

        # Its writes: PodVolumeBackup/Restore status and the pod-owner annotation, Events.
        status = {
            "metadata": {"resourceVersion": pvb["metadata"]["resourceVersion"]},
            "status": {"phase": "InProgress"},
        }
        updated = await node_agent.patch(
            PODVOLUMEBACKUPS, pvb["metadata"]["name"], status, ARK_NS, subresource="status"
        )
        assert updated["status"]["phase"] == "InProgress"
        annotated = await node_agent.patch(
            PODVOLUMEBACKUPS, pvb["metadata"]["name"], {"metadata": {"annotations": {"a": "b"}}}, ARK_NS
        )
        assert annotated["metadata"]["annotations"] == {"a": "b"}
        restored = await node_agent.patch(
            PODVOLUMERESTORES,
            pvr["metadata"]["name"],
            {"status": {"phase": "Completed"}},
            ARK_NS,
            subresource="status",
        )
        assert restored["status"]["phase"] == "Completed"
        event = await node_agent.create(EVENTS, _event(_name("ev"), pod))
        await node_agent.patch(EVENTS, event["metadata"]["name"], {"count": 2}, namespace)
    finally:
        for res, obj in ((PODVOLUMEBACKUPS, pvb), (PODVOLUMERESTORES, pvr), (SECRETS, key)):
            await kube.delete(res, obj["metadata"]["name"], ARK_NS)


async def test_node_agent_cannot_read_secrets_elsewhere_or_touch_other_ark_objects(
    kube: KubeClient, node_agent: KubeClient, namespace: str
) -> None:
    app_secret = await kube.create(SECRETS, _secret(_name("app"), namespace))
    backup = await kube.create(BACKUPS, _backup(_name("backup")))
    pod = await kube.create(PODS, _pod(_name("app"), namespace))
    pvb = await kube.create(PODVOLUMEBACKUPS, _pvb(_name("pvb"), pod))
    try:
        # Keys are read in the Ark namespace only: no Secrets of applications, anywhere.
        await _forbidden(node_agent.get(SECRETS, app_secret["metadata"]["name"], namespace))
        await _forbidden(node_agent.list(SECRETS))
        await _forbidden(node_agent.create(SECRETS, _secret(_name("k"), ARK_NS)))
        # Backups are the server's: no reading, creating or patching them.
        await _forbidden(node_agent.create(BACKUPS, _backup(_name("backup"))))
        await _forbidden(
            node_agent.patch(BACKUPS, backup["metadata"]["name"], {"metadata": {"labels": {"x": "y"}}}, ARK_NS)
        )
        await _forbidden(
            node_agent.patch(
                BACKUPS, backup["metadata"]["name"], {"status": {"phase": "Completed"}}, ARK_NS, subresource="status"
            )
        )
        await _forbidden(node_agent.list(BACKUPS, ARK_NS))
        await _forbidden(node_agent.get(CONFIGS, "default", ARK_NS))
        # It works on PodVolumeBackups the server made: no creating or deleting them, none elsewhere.
        await _forbidden(node_agent.create(PODVOLUMEBACKUPS, _pvb(_name("pvb"), pod)))
        await _forbidden(node_agent.delete(PODVOLUMEBACKUPS, pvb["metadata"]["name"], ARK_NS))
        await _forbidden(node_agent.list(PODVOLUMEBACKUPS, namespace))
        # Pods are read-only.
        await _forbidden(node_agent.create(PODS, _pod(_name("evil"), namespace)))
        await _forbidden(
            node_agent.patch(PODS, pod["metadata"]["name"], {"metadata": {"labels": {"x": "y"}}}, namespace)
        )
    finally:
        await kube.delete(BACKUPS, backup["metadata"]["name"], ARK_NS)
        await kube.delete(PODVOLUMEBACKUPS, pvb["metadata"]["name"], ARK_NS)


# -- the server -----------------------------------------------------------------------------------


async def test_server_runs_backups_and_its_namespace_state(kube: KubeClient, ark_server: KubeClient) -> None:
    backup = await ark_server.create(BACKUPS, _backup(_name("backup")))
    name = backup["metadata"]["name"]
    status = {"metadata": {"resourceVersion": backup["metadata"]["resourceVersion"]}, "status": {"phase": "InProgress"}}
    updated = await ark_server.patch(BACKUPS, name, status, ARK_NS, subresource="status")
    assert updated["status"]["phase"] == "InProgress"
    assert name in _names(await ark_server.list(BACKUPS, ARK_NS))
    await ark_server.delete(BACKUPS, name, ARK_NS)  # garbage collection
    # Discovery, for the resources a backup collects.
    groups = await ark_server.request("GET", "/apis")
    assert "ark.heptio.com" in {g["name"] for g in groups["groups"]}
    # Leader election in its namespace.
    lease_body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": _name("ark-server"), "namespace": ARK_NS},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }
    lease = await ark_server.create(LEASES, lease_body)
    lease["spec"]["holderIdentity"] = "pod-b"
    renewed = await ark_server.replace(LEASES, lease["metadata"]["name"], lease, ARK_NS)
    assert renewed["spec"]["holderIdentity"] == "pod-b"
    # The restic key Secrets in its namespace: created on first use, replaced on rotation.
    key = await ark_server.create(SECRETS, _secret(_name("ark-restic-credentials"), ARK_NS, {RESTIC_KEY_LABEL: "x"}))
    key["stringData"] = {"repository-password": "rotated"}
    await ark_server.replace(SECRETS, key["metadata"]["name"], key, ARK_NS)
    await kube.delete(LEASES, lease["metadata"]["name"], ARK_NS)
    await kube.delete(SECRETS, key["metadata"]["name"], ARK_NS)


async def test_server_reads_everything_and_restores_anything(
    kube: KubeClient, ark_server: KubeClient, namespace: str
) -> None:
    app_secret = await kube.create(SECRETS, _secret(_name("app"), namespace))
    # Backups read every resource, application Secrets included.
    assert app_secret["metadata"]["name"] in _names(await ark_server.list(SECRETS))
    assert (await ark_server.get(SECRETS, app_secret["metadata"]["name"], namespace))["data"]
    # Restores create namespaces and any kind of object, and patch what they restore into.
    restored_ns = _name("restored")
    await ark_server.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": restored_ns}})
    try:
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": namespace}}
        await ark_server.create(CONFIGMAPS, config_map)
        await ark_server.patch(CONFIGMAPS, "settings", {"metadata": {"labels": {"ark-restore": "r1"}}}, namespace)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        }
        await ark_server.create(DEPLOYMENTS, deployment)
        await ark_server.create(EVENTS, _event(_name("ev"), await kube.create(PODS, _pod(_name("p"), namespace))))
        # An application's RBAC is restored too, as long as it grants nothing the server lacks.
        reader = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "reader", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        }
        await ark_server.create(ROLES, reader)
        await ark_server.create(ROLE_BINDINGS, _binding("reader", namespace, "Role", "reader"))
    finally:
        await kube.delete(NAMESPACES, restored_ns)


def _binding(name: str, namespace: str | None, role_kind: str, role: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    kind = "ClusterRoleBinding"
    if namespace is not None:
        meta["namespace"] = namespace
        kind = "RoleBinding"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "ark", "namespace": ARK_NS}],
    }


async def test_server_cannot_replace_delete_or_escalate(
    kube: KubeClient, ark_server: KubeClient, namespace: str
) -> None:
    config_map = await kube.create(
        CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": namespace}}
    )
    app_secret = await kube.create(SECRETS, _secret(_name("app"), namespace))
    # No update or delete outside Ark's resources: a restore never replaces or removes others' objects.
    await _forbidden(ark_server.replace(CONFIGMAPS, "app", config_map, namespace))
    await _forbidden(ark_server.delete(CONFIGMAPS, "app", namespace))
    await _forbidden(ark_server.replace(SECRETS, app_secret["metadata"]["name"], app_secret, namespace))
    await _forbidden(ark_server.delete(NAMESPACES, namespace))
    # RBAC's escalation check: it cannot make itself cluster-admin, nor grant rights it lacks.
    await _forbidden(
        ark_server.create(CLUSTER_ROLE_BINDINGS, _binding(_name("ark-admin"), None, "ClusterRole", "cluster-admin"))
    )
    deleter = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "deleter", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}],
    }
    await _forbidden(ark_server.create(ROLES, deleter))
    # Leases only in its own namespace.
    lease = await kube.create(
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "other", "namespace": namespace},
        },
    )
    await _forbidden(ark_server.replace(LEASES, "other", lease, namespace))
