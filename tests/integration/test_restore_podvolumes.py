"""Restic pod volume restores driven by the Restore controller, on the real kube-apiserver.

No node agent runs here: the tests play it the way the real one would, by patching each
PodVolumeRestore's status through the status subresource, and check what the server asked it to do
(names, labels, owner, the pod's new UID, the repository of the SOURCE namespace) and how the
Restore ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arkd.api.constants import (
    API_VERSION,
    POD_UID_LABEL,
    RESTORE_LABEL,
    RESTORE_NAME_LABEL,
    RESTORE_UID_LABEL,
)
from arkd.controllers.resources import CONFIGS, PODVOLUMERESTORES, RESTORES
from arkd.controllers.restore_run import pod_volume_restore_name
from arkd.kube.client import KubeClient
from arkd.kube.resource import PODS, SECRETS
from arkd.podvolume.keys import key_secret
from tests.envtest.harness import Envtest
from tests.integration.test_restore_controller import (
    Item,
    ark_server,
    create_restore,
    delete_namespaces,
    eventually,
    live,
    local_config,
    local_root,
    local_store,
    random_name,
    results_of,
    store_backup,
    wait_restore,
)

Obj = dict[str, Any]
HELPER_IMAGE = "registry.local/arkd:test"


def pod(name: str, namespace: str, volumes: list[str], snapshots: dict[str, str], owner: str | None = None) -> Obj:
    """A pod as backed up: scheduled, running, with the snapshot annotations the backup added."""
    annotations = {f"snapshot.ark.heptio.com/{v}": s for v, s in snapshots.items()}
    meta: Obj = {"labels": {"app": name}, "annotations": annotations}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": "rs-uid", "controller": True}
        ]
    return live(
        "v1", "Pod", name, namespace,
        metadata=meta,
        spec={
            "nodeName": "old-node",
            "initContainers": [{"name": "migrate", "image": "busybox:1.29", "command": ["true"]}],
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.29",
                    "volumeMounts": [{"name": v, "mountPath": f"/{v}"} for v in volumes],
                }
            ],
            "volumes": [{"name": v, "emptyDir": {}} for v in volumes],
        },
        status={"phase": "Running"},
    )


def pods_backup(src: str) -> list[Item]:
    return [
        (
            "pods", src, "db",
            pod("db", src, ["data", "logs", "scratch"], {"data": "1a2b3c4d", "logs": "5e6f7a8b", "gone": "9c0d1e2f"}),
        ),
        (
            "pods", src, "cache-7f9c-xk2p",
            pod("cache-7f9c-xk2p", src, ["cache"], {"cache": "aabbccdd"}, owner="cache-7f9c"),
        ),
        ("pods", src, "web-5d4f8-abcde", pod("web-5d4f8-abcde", src, ["tmp"], {}, owner="web-5d4f8")),
    ]


async def pvrs_of(kube: KubeClient, ark_ns: str, restore_uid: str) -> list[Obj]:
    return await kube.list(PODVOLUMERESTORES, ark_ns, label_selector=f"{RESTORE_UID_LABEL}={restore_uid}")


async def wait_pvrs(kube: KubeClient, ark_ns: str, restore_uid: str, count: int) -> list[Obj]:
    async def probe() -> list[Obj] | None:
        found = await pvrs_of(kube, ark_ns, restore_uid)
        return found if len(found) == count else None

    return await eventually(probe, f"{count} PodVolumeRestores")


async def play_node_agent(kube: KubeClient, ark_ns: str, pvr: Obj, phase: str, message: str | None = None) -> None:
    """What `ark restic server` writes when it has run (or failed to run) restic for a volume."""
    status: Obj = {"phase": phase}
    if message:
        status["message"] = message
    await kube.patch(PODVOLUMERESTORES, pvr["metadata"]["name"], {"status": status}, ark_ns, subresource="status")


async def start(
    envtest: Envtest, kube: KubeClient, ark_ns: str, *, restic: bool = True, key: bool = True
) -> tuple[str, str]:
    root = local_root()
    await kube.create(CONFIGS, local_config(ark_ns, root, restic=restic), ark_ns)
    src = random_name("db")
    if key:
        # The source namespace's restic key, as the backup left it in the Ark namespace.
        await kube.create(SECRETS, key_secret(ark_ns, src, b"the key the backup used"), ark_ns)
    await store_backup(local_store(root), kube, ark_ns, "with-volumes", pods_backup(src))
    return root, src


async def test_pods_get_restic_wait_and_one_pod_volume_restore_per_volume(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace)
    dst = random_name("db-copy")
    try:
        async with ark_server(envtest, namespace, restore_helper_image=HELPER_IMAGE) as server:
            restore = await create_restore(
                kube, namespace, "with-data", backupName="with-volumes", namespaceMapping={src: dst}
            )
            uid = restore["metadata"]["uid"]
            pvrs = await wait_pvrs(kube, namespace, uid, 3)

            # The annotated pod, and the ReplicaSet's pod that has snapshots, are restored into dst.
            db = await kube.get(PODS, "db", dst)
            cache = await kube.get(PODS, "cache-7f9c-xk2p", dst)
            assert [p["metadata"]["name"] for p in await kube.list(PODS, dst)] == ["cache-7f9c-xk2p", "db"]
            assert "ownerReferences" not in cache["metadata"]
            assert db["metadata"]["labels"][RESTORE_LABEL] == "with-data"
            assert "nodeName" not in db["spec"]

            init = db["spec"]["initContainers"]
            assert [c["name"] for c in init] == ["restic-wait", "migrate"]
            helper = init[0]
            assert helper["image"] == HELPER_IMAGE
            assert helper["command"] == ["ark", "restic", "wait", uid]
            assert helper["volumeMounts"] == [
                {"name": "data", "mountPath": "/restores/data"},
                {"name": "logs", "mountPath": "/restores/logs"},
            ]

            by_volume = {p["spec"]["volume"]: p for p in pvrs}
            assert set(by_volume) == {"data", "logs", "cache"}
            expected_pods = {"data": db, "logs": db, "cache": cache}
            snapshots = {"data": "1a2b3c4d", "logs": "5e6f7a8b", "cache": "aabbccdd"}
            for volume, pvr in by_volume.items():
                target = expected_pods[volume]
                pod_name, pod_uid = target["metadata"]["name"], target["metadata"]["uid"]
                assert pvr["metadata"]["name"] == pod_volume_restore_name("with-data", dst, pod_name, volume)
                assert pvr["metadata"]["labels"] == {
                    RESTORE_NAME_LABEL: "with-data",
                    RESTORE_UID_LABEL: uid,
                    POD_UID_LABEL: pod_uid,
                }
                assert pvr["metadata"]["ownerReferences"] == [
                    {"apiVersion": API_VERSION, "kind": "Restore", "name": "with-data", "uid": uid, "controller": True}
                ]
                assert pvr["spec"] == {
                    "pod": {"kind": "Pod", "namespace": dst, "name": pod_name, "uid": pod_uid},
                    "volume": volume,
                    "snapshotID": snapshots[volume],
                    # The repository (and so the key) of the namespace the data was backed up from.
                    "repoIdentifier": f"{Path(root) / 'restic'}/{src}",
                }

            # Not done until the node agent says so.
            assert (await kube.get(RESTORES, "with-data", namespace))["status"]["phase"] == "InProgress"
            for pvr in pvrs:
                await play_node_agent(kube, namespace, pvr, "Completed")
            final = await wait_restore(kube, namespace, "with-data")
            assert final["status"]["phase"] == "Completed", final["status"]
            assert final["status"]["errors"] == 0
            warnings = (await results_of(local_store(root), "with-volumes", "with-data"))["warnings"]
            assert warnings["namespaces"][dst] == [
                "volume gone of pods dst/db has a restic snapshot (9c0d1e2f) but is no longer in the pod's "
                "spec.volumes; not restoring its data".replace("dst", dst)
            ]
            assert final["status"]["warnings"] == 1
            assert server.metric("ark_restore_success_total") == 1
    finally:
        await delete_namespaces(kube, dst)


async def test_a_failed_volume_partially_fails_the_restore_and_names_it(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace)
    try:
        async with ark_server(envtest, namespace) as server:
            restore = await create_restore(kube, namespace, "r", backupName="with-volumes", includedNamespaces=[src])
            pvrs = await wait_pvrs(kube, namespace, restore["metadata"]["uid"], 3)
            for pvr in pvrs:
                if pvr["spec"]["volume"] == "logs":
                    await play_node_agent(kube, namespace, pvr, "Failed", "error running restic restore: exit 1")
                else:
                    await play_node_agent(kube, namespace, pvr, "Completed")
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "PartiallyFailed", status
            assert status["errors"] == 1
            assert status["failureReason"] == f"1 pod volume not restored: volume logs of pod {src}/db"
            errors = (await results_of(local_store(root), "with-volumes", "r"))["errors"]
            assert errors["namespaces"][src] == [
                f"pod volume restore failed: volume logs of pod {src}/db: error running restic restore: exit 1"
            ]
            assert server.metric("ark_restore_partial_failure_total") == 1
    finally:
        await delete_namespaces(kube, src)


async def test_pod_volume_timeout_fails_the_waiting_volumes(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace)
    try:
        async with ark_server(envtest, namespace):
            restore = await create_restore(
                kube, namespace, "r", backupName="with-volumes", includedNamespaces=[src],
                annotations={"ark.heptio.com/pod-volume-timeout": "2s"},
            )
            pvrs = await wait_pvrs(kube, namespace, restore["metadata"]["uid"], 3)
            cache = next(p for p in pvrs if p["spec"]["volume"] == "cache")
            await play_node_agent(kube, namespace, cache, "Completed")  # only one node agent answered
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "PartiallyFailed", status
            assert status["failureReason"] == (
                f"2 pod volumes not restored: volume data of pod {src}/db, volume logs of pod {src}/db"
            )
            timed_out = (
                "timed out after 2s waiting for pod volume restore; is the pod's restic-wait init container "
                "running on a node with the node agent (ark restic server)?"
            )
            for pvr in await pvrs_of(kube, namespace, restore["metadata"]["uid"]):
                expected = ("Completed", None) if pvr["spec"]["volume"] == "cache" else ("Failed", timed_out)
                assert (pvr["status"]["phase"], pvr["status"].get("message")) == expected
            errors = (await results_of(local_store(root), "with-volumes", "r"))["errors"]["namespaces"][src]
            assert sorted(errors) == [
                f"pod volume restore failed: volume data of pod {src}/db: {timed_out}",
                f"pod volume restore failed: volume logs of pod {src}/db: {timed_out}",
            ]
    finally:
        await delete_namespaces(kube, src)


async def test_a_restarted_server_resumes_and_reuses_its_pod_volume_restores(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace)
    try:
        async with ark_server(envtest, namespace):
            restore = await create_restore(kube, namespace, "r", backupName="with-volumes", includedNamespaces=[src])
            uid = restore["metadata"]["uid"]
            before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await wait_pvrs(kube, namespace, uid, 3)}
        # The first server is gone while the restore waits for its volumes.
        assert (await kube.get(RESTORES, "r", namespace))["status"]["phase"] == "InProgress"
        pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await kube.list(PODS, src)}
        async with ark_server(envtest, namespace) as server:

            async def resumed() -> bool | None:
                return True if server.metric("ark_restore_attempt_total") == 1 else None

            await eventually(resumed, "the restore to be resumed")
            pvrs = await wait_pvrs(kube, namespace, uid, 3)
            assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in pvrs} == before
            for pvr in pvrs:
                await play_node_agent(kube, namespace, pvr, "Completed")
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "Completed", status
            # The pods of the first attempt were kept and their volumes restored; nothing else was said
            # about objects that attempt had already created.
            assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in await kube.list(PODS, src)} == pods
            assert status["warnings"] == 1  # the volume that is no longer in the pod
            restore_log = (await results_of(local_store(root), "with-volumes", "r"))
            assert restore_log["errors"]["namespaces"] == {}
    finally:
        await delete_namespaces(kube, src)


async def test_without_restic_pods_are_restored_without_their_data(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace, restic=False)
    try:
        async with ark_server(envtest, namespace):
            await create_restore(kube, namespace, "r", backupName="with-volumes", includedNamespaces=[src])
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "Completed", status
        db = await kube.get(PODS, "db", src)
        assert [c["name"] for c in db["spec"]["initContainers"]] == ["migrate"]
        assert [p["metadata"]["name"] for p in await kube.list(PODS, src)] == ["db"]
        assert await kube.list(PODVOLUMERESTORES, namespace) == []
        warnings = (await results_of(local_store(root), "with-volumes", "r"))["warnings"]["namespaces"][src]
        assert sorted(warnings) == [
            f"not restoring pods {src}/cache-7f9c-xk2p: it has a controller owner, and its restic snapshots of "
            "volumes cache cannot be restored because restic is disabled (Config "
            "backupStorageProvider.resticLocation is empty); its controller re-creates it empty",
            f"pods {src}/db has restic snapshots of volumes data, gone, logs, but restic is disabled (Config "
            "backupStorageProvider.resticLocation is empty); restoring the pod without their data",
        ]
        assert status["warnings"] == 2
    finally:
        await delete_namespaces(kube, src)


async def test_a_missing_restic_key_fails_the_volumes_up_front(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root, src = await start(envtest, kube, namespace, key=False)
    try:
        async with ark_server(envtest, namespace):
            await create_restore(kube, namespace, "r", backupName="with-volumes", includedNamespaces=[src])
            status = (await wait_restore(kube, namespace, "r"))["status"]
        assert status["phase"] == "PartiallyFailed", status
        assert status["failureReason"] == (
            f"3 pod volumes not restored: volume cache of pod {src}/cache-7f9c-xk2p, volume data of pod {src}/db, "
            f"volume logs of pod {src}/db"
        )
        errors = (await results_of(local_store(root), "with-volumes", "r"))["errors"]["namespaces"][src]
        assert (
            f"pod volume restore failed: volume data of pod {src}/db: no restic key for namespace {src}: Secret "
            f"{namespace}/ark-restic-credentials-{src} does not exist; run `ark restic init-repository --namespace "
            f"{src}` with the key its backups were made with; the pod is restored without its data"
        ) in errors
        # Nothing waits for data that cannot come: no restic-wait, no PodVolumeRestores.
        db = await kube.get(PODS, "db", src)
        assert [c["name"] for c in db["spec"]["initContainers"]] == ["migrate"]
        assert await kube.list(PODVOLUMERESTORES, namespace) == []
    finally:
        await delete_namespaces(kube, src)
