"""Per-kind restore transforms, the restic-wait init container, and RestoreResult."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import orjson
import pytest

from arkd.restore.actions import (
    PVDecision,
    add_restic_wait_init_container,
    job_action,
    merge_service_accounts,
    namespace_for_restore,
    prepare_item,
    pv_action,
    pv_decision,
    pvc_action,
    reset_metadata_and_status,
    service_action,
    skip_reason,
    snapshot_annotations,
    target_namespace,
)
from arkd.restore.results import RestoreResult, RestoreResults

IMAGE = "registry.example/arkd:0.1.0"
RESTORE_UID = "2f6f3c52-4b59-4c4b-9e1e-6f1c2b7a9d10"
K8S_SCHEMA = "1.25.0"


def backed_up_pod(**spec: Any) -> dict[str, Any]:
    """A pod as it sits in a tarball: live metadata, status, token volume, restic annotations."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "uid": "old-uid",
            "resourceVersion": "1234",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "generateName": "web-",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "web",
                    "uid": "u",
                    "controller": True,
                }
            ],
            "labels": {"app": "web"},
            "annotations": {
                "snapshot.ark.heptio.com/data": "4d1e8f3a",
                "snapshot.ark.heptio.com/cache": "9a0b1c2d",
                "backup.ark.heptio.com/backup-volumes": "data,cache",
            },
        },
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "builder",
            "containers": [
                {
                    "name": "app",
                    "image": "nginx",
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {
                            "name": "builder-token-x7k2p",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        },
                    ],
                }
            ],
            "initContainers": [
                {
                    "name": "migrate",
                    "image": "busybox",
                    "volumeMounts": [{"name": "builder-token-x7k2p", "mountPath": "/var/run/secrets/x"}],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "builder-token-x7k2p", "secret": {"secretName": "builder-token-x7k2p"}},
            ],
            **spec,
        },
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    }
    return pod


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards "restricted" checks that apply to one container (helper only)."""
    problems = []
    pod_sc = pod["spec"].get("securityContext") or {}
    for c in pod["spec"]["initContainers"][:1]:
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append("runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append("runAsUser=0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append("capabilities.drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append("capabilities.add")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile")
        if sc.get("privileged"):
            problems.append("privileged")
    return problems


# --------------------------------------------------------------------------- generic


def test_metadata_is_reset_and_status_dropped_without_touching_the_input() -> None:
    pod = backed_up_pod()
    original = copy.deepcopy(pod)
    out = reset_metadata_and_status(pod)
    assert out["metadata"] == {
        "name": "web-0",
        "namespace": "shop",
        "labels": {"app": "web"},
        "annotations": original["metadata"]["annotations"],
    }
    assert "status" not in out
    assert pod == original


def test_prepare_pod_maps_namespace_labels_and_unschedules() -> None:
    pod = backed_up_pod()
    out = prepare_item(
        "pods", pod, restore_name="r1", namespace=target_namespace("shop", {"shop": "shop-copy"})
    )
    assert out["metadata"]["namespace"] == "shop-copy"
    assert out["metadata"]["labels"] == {"app": "web", "ark-restore": "r1"}
    # snapshot annotations survive, so restic restores can be driven from the live pod
    assert snapshot_annotations(out) == {"data": "4d1e8f3a", "cache": "9a0b1c2d"}
    assert "nodeName" not in out["spec"]
    assert [v["name"] for v in out["spec"]["volumes"]] == ["data", "cache"]
    assert out["spec"]["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert out["spec"]["initContainers"][0]["volumeMounts"] == []
    assert "status" not in out and "uid" not in out["metadata"] and "ownerReferences" not in out["metadata"]
    kubernetes_validate.validate(out, K8S_SCHEMA, strict=True)


def test_pod_action_uses_the_default_service_account_when_none_is_named() -> None:
    pod = backed_up_pod()
    del pod["spec"]["serviceAccountName"]
    pod["spec"]["volumes"].append(
        {"name": "default-token-abcde", "secret": {"secretName": "default-token-abcde"}}
    )
    out = prepare_item("pods", pod, restore_name="r", namespace="shop")
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert "default-token-abcde" not in names
    assert "builder-token-x7k2p" in names  # not this pod's service account: kept


def test_target_namespace() -> None:
    assert target_namespace("a", {"a": "b"}) == "b"
    assert target_namespace("c", {"a": "b"}) == "c"
    assert target_namespace(None, {"a": "b"}) is None
    assert target_namespace("a", None) == "a"


def test_cluster_scoped_items_lose_any_namespace() -> None:
    pv = {"kind": "PersistentVolume", "metadata": {"name": "pv-1", "namespace": "stray"}, "spec": {}}
    assert (
        "namespace" not in prepare_item("persistentvolumes", pv, restore_name="r", namespace=None)["metadata"]
    )


# --------------------------------------------------------------------------- what is skipped


def test_skip_rules() -> None:
    pod = backed_up_pod()
    assert skip_reason("pods", pod) is None  # controlled, but carries restic snapshots
    plain = copy.deepcopy(pod)
    plain["metadata"]["annotations"] = {}
    assert skip_reason("pods", plain) == "it has a controller owner"
    rs = {"metadata": {"name": "web-1", "ownerReferences": [{"kind": "Deployment", "controller": True}]}}
    assert skip_reason("replicasets.apps", rs) == "it has a controller owner"
    assert skip_reason("replicasets.apps", {"metadata": {"ownerReferences": [{"kind": "X"}]}}) is None
    done = backed_up_pod()
    done["status"]["phase"] = "Succeeded"
    assert skip_reason("pods", done) == "it is complete"
    mirror = {"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}}
    assert skip_reason("pods", mirror) == "it is a mirror pod"
    assert (
        skip_reason("jobs.batch", {"status": {"completionTime": "2024-01-01T00:00:00Z"}}) == "it is complete"
    )
    assert skip_reason("jobs.batch", {"status": {"active": 1}}) is None


def test_snapshot_annotations_ignore_unrelated_and_empty_entries() -> None:
    pod = {
        "metadata": {
            "annotations": {
                "snapshot.ark.heptio.com/data": "abc",
                "snapshot.ark.heptio.com/": "x",
                "snapshot.ark.heptio.com/empty": "",
                "other/data": "y",
            }
        }
    }
    assert snapshot_annotations(pod) == {"data": "abc"}
    assert snapshot_annotations({}) == {}


# --------------------------------------------------------------------------- restic-wait


def test_restic_wait_is_prepended_with_mounts_resources_and_restricted_security() -> None:
    pod = prepare_item("pods", backed_up_pod(), restore_name="r1", namespace="shop")
    out = add_restic_wait_init_container(pod, RESTORE_UID, IMAGE, snapshot_annotations(pod))
    init = out["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["restic-wait", "migrate"]
    helper = init[0]
    assert helper["image"] == IMAGE
    assert helper["command"] == ["ark", "restic", "wait", RESTORE_UID]
    assert helper["env"] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    assert helper["volumeMounts"] == [
        {"name": "cache", "mountPath": "/restores/cache"},
        {"name": "data", "mountPath": "/restores/data"},
    ]
    assert helper["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"cpu": "100m", "memory": "128Mi"},
    }
    sc = helper["securityContext"]
    assert sc["runAsUser"] == 65534 and isinstance(sc["runAsUser"], int)
    assert restricted_violations(out) == []
    assert (
        "initContainers" in pod["spec"] and pod["spec"]["initContainers"][0]["name"] == "migrate"
    )  # input kept
    kubernetes_validate.validate(out, K8S_SCHEMA, strict=True)


def test_existing_restic_wait_is_replaced_not_duplicated() -> None:
    pod = prepare_item("pods", backed_up_pod(), restore_name="r1", namespace="shop")
    first = add_restic_wait_init_container(pod, "uid-1", IMAGE, ["data"])
    second = add_restic_wait_init_container(first, "uid-2", IMAGE, ["data", "cache"])
    names = [c["name"] for c in second["spec"]["initContainers"]]
    assert names == ["restic-wait", "migrate"]
    assert second["spec"]["initContainers"][0]["command"][-1] == "uid-2"
    assert len(second["spec"]["initContainers"][0]["volumeMounts"]) == 2
    # a pod restored from a backup of an earlier restore carries one too
    assert [
        c["name"]
        for c in add_restic_wait_init_container(second, "uid-3", IMAGE, ["data"])["spec"]["initContainers"]
    ] == ["restic-wait", "migrate"]


def test_restic_wait_runs_as_the_pods_own_non_root_user() -> None:
    pod = backed_up_pod(securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000})
    out = add_restic_wait_init_container(pod, RESTORE_UID, IMAGE, ["data"])
    sc = out["spec"]["initContainers"][0]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (1000, 3000)
    root = backed_up_pod(securityContext={"runAsUser": 0})
    assert (
        add_restic_wait_init_container(root, RESTORE_UID, IMAGE, ["data"])["spec"]["initContainers"][0][
            "securityContext"
        ]["runAsUser"]
        == 65534
    )


def test_restic_wait_refuses_volumes_the_pod_does_not_have() -> None:
    with pytest.raises(ValueError, match=r"shop/web-0 .* volume\(s\) ghost that are not in spec\.volumes"):
        add_restic_wait_init_container(backed_up_pod(), RESTORE_UID, IMAGE, ["data", "ghost"])
    with pytest.raises(ValueError, match="at least one volume"):
        add_restic_wait_init_container(backed_up_pod(), RESTORE_UID, IMAGE, [])
    with pytest.raises(ValueError, match="UID"):
        add_restic_wait_init_container(backed_up_pod(), "", IMAGE, ["data"])


# --------------------------------------------------------------------------- services, SAs, jobs


def test_service_gets_new_cluster_ip_and_node_ports_except_pinned_ones() -> None:
    applied = {"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(applied).decode()
            },
        },
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.0.0.12",
            "clusterIPs": ["10.0.0.12"],
            "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "metrics", "port": 9090, "nodePort": 31234},
            ],
        },
    }
    out = prepare_item("services", svc, restore_name="r", namespace="shop")
    assert "clusterIP" not in out["spec"] and "clusterIPs" not in out["spec"]
    assert out["spec"]["ports"] == [
        {"name": "http", "port": 80, "nodePort": 30080},
        {"name": "metrics", "port": 9090},
    ]
    kubernetes_validate.validate(out, K8S_SCHEMA, strict=True)

    headless = {
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": []},
    }
    assert service_action(headless)["spec"]["clusterIP"] == "None"
    lb = {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "healthCheckNodePort": 32000}}
    assert "healthCheckNodePort" not in service_action(lb)["spec"]
    external = {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}
    assert service_action(external)["spec"] == {"type": "ExternalName", "externalName": "example.com"}


def test_service_account_drops_old_token_secrets_and_merges_into_existing() -> None:
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "builder", "namespace": "shop", "labels": {"team": "a"}},
        "secrets": [{"name": "builder-token-x7k2p"}, {"name": "registry-creds"}],
        "imagePullSecrets": [{"name": "pull"}],
    }
    out = prepare_item("serviceaccounts", sa, restore_name="r", namespace="shop")
    assert out["secrets"] == [{"name": "registry-creds"}]

    live = {
        "metadata": {"name": "builder", "namespace": "shop", "labels": {"team": "b"}},
        "secrets": [{"name": "builder-token-new12"}],
    }
    merged = merge_service_accounts(live, sa)
    assert merged["secrets"] == [{"name": "builder-token-new12"}, {"name": "registry-creds"}]
    assert merged["imagePullSecrets"] == [{"name": "pull"}]
    assert merged["metadata"]["labels"] == {"team": "b"}  # the cluster's value wins


def test_job_loses_the_old_controller_uid() -> None:
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"controller-uid": "old"}},
            "template": {
                "metadata": {
                    "labels": {
                        "controller-uid": "old",
                        "batch.kubernetes.io/controller-uid": "old",
                        "job-name": "migrate",
                    }
                },
                "spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "busybox"}]},
            },
        },
    }
    out = prepare_item("jobs.batch", job, restore_name="r", namespace="shop")
    assert out["spec"]["selector"]["matchLabels"] == {}
    assert out["spec"]["template"]["metadata"]["labels"] == {"job-name": "migrate"}
    assert job["spec"]["selector"]["matchLabels"] == {"controller-uid": "old"}
    assert job_action({"metadata": {"name": "x"}}) == {"metadata": {"name": "x"}}


# --------------------------------------------------------------------------- volumes and namespaces


@pytest.mark.parametrize(
    ("policy", "has_snapshot", "restore_pvs", "snapshot_volumes", "expected"),
    [
        ("Delete", False, None, None, PVDecision.PROVISION),  # the restic path: a fresh dynamic volume
        ("Retain", False, None, None, PVDecision.RESTORE),
        ("Delete", True, None, None, PVDecision.RESTORE_FROM_SNAPSHOT),
        ("Delete", True, True, True, PVDecision.RESTORE_FROM_SNAPSHOT),
        ("Delete", True, False, None, PVDecision.RESTORE),
        ("Retain", True, None, False, PVDecision.RESTORE),
    ],
)
def test_pv_decision_follows_ark(
    policy: str,
    has_snapshot: bool,
    restore_pvs: bool | None,
    snapshot_volumes: bool | None,
    expected: PVDecision,
) -> None:
    pv = {"spec": {"persistentVolumeReclaimPolicy": policy}}
    got = pv_decision(
        pv, has_snapshot=has_snapshot, restore_pvs=restore_pvs, snapshot_volumes=snapshot_volumes
    )
    assert got is expected


def test_pv_and_pvc_binding_for_restore() -> None:
    pv = {
        "metadata": {"name": "pv-1"},
        "spec": {"claimRef": {"name": "data", "uid": "old"}, "storageClassName": "ssd"},
    }
    assert pv_action(pv)["spec"] == {"storageClassName": "ssd"}
    claim = {
        "metadata": {
            "name": "data",
            "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.beta.kubernetes.io/storage-provisioner": "x",
            },
        },
        "spec": {"volumeName": "pv-1", "storageClassName": "ssd"},
    }
    reset = pvc_action(claim, {"pv-1"})
    assert reset["spec"] == {"storageClassName": "ssd"}
    assert reset["metadata"]["annotations"] == {"volume.beta.kubernetes.io/storage-provisioner": "x"}
    assert pvc_action(claim, {"pv-2"}) == claim  # its PV is restored: keep the binding


def test_namespace_for_restore_keeps_backed_up_labels_under_the_new_name() -> None:
    backed_up = {
        "metadata": {"name": "shop", "uid": "x", "labels": {"team": "a"}, "annotations": {"note": "n"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    assert namespace_for_restore(backed_up, "shop-copy", "r1") == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "shop-copy",
            "labels": {"team": "a", "ark-restore": "r1"},
            "annotations": {"note": "n"},
        },
        "spec": {"finalizers": ["kubernetes"]},
    }
    assert namespace_for_restore(None, "fresh", "r1")["metadata"] == {
        "name": "fresh",
        "labels": {"ark-restore": "r1"},
    }


# --------------------------------------------------------------------------- results


def test_restore_results_have_arks_shape_and_counts() -> None:
    results = RestoreResults()
    results.errors.add("shop", "error restoring pods/shop/web-0: boom")
    results.errors.add(None, "error restoring persistentvolumes/pv-1: boom")
    results.errors.add_ark("timed out waiting for all PodVolumeRestores to complete")
    results.warnings.add("shop", "not restored: already exists and is different from backed up version.")
    more = RestoreResult()
    more.add("shop", "second")
    more.add("other", "third")
    results.warnings.merge(more)

    assert results.errors.count() == 3 and results.warnings.count() == 3
    assert results.to_obj() == {
        "warnings": {
            "ark": [],
            "cluster": [],
            "namespaces": {
                "other": ["third"],
                "shop": ["not restored: already exists and is different from backed up version.", "second"],
            },
        },
        "errors": {
            "ark": ["timed out waiting for all PodVolumeRestores to complete"],
            "cluster": ["error restoring persistentvolumes/pv-1: boom"],
            "namespaces": {"shop": ["error restoring pods/shop/web-0: boom"]},
        },
    }
    assert RestoreResults.from_obj(orjson.loads(orjson.dumps(results.to_obj()))) == results
    assert not RestoreResult()


def test_results_written_by_ark_with_nulls_are_read() -> None:
    ark_written = {"warnings": {"ark": None, "cluster": None, "namespaces": None}, "errors": {"ark": ["x"]}}
    parsed = RestoreResults.from_obj(ark_written)
    assert parsed.warnings.count() == 0
    assert parsed.errors.ark == ["x"]
