"""Restic pod volume backups driven by the Backup controller, on the real kube-apiserver.

There is no node agent or ResticRepository controller in these tests: the tests play them, the way
the real ones would (patching status through the status subresource), and the main flow runs the
real restic against a local repository, so the snapshot IDs in the tarball are real ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from arkd.api.constants import (
    API_VERSION,
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    PVC_UID_LABEL,
    RESTIC_KEY_DATA_KEY,
    restic_key_secret_name,
)
from arkd.controllers.resources import BACKUPS, CONFIGS, PODVOLUMEBACKUPS, RESTICREPOSITORIES
from arkd.kube.client import KubeClient
from arkd.kube.resource import PODS, PVS, SECRETS
from arkd.podvolume.selection import pod_volume_backup_name
from tests.envtest.harness import Envtest
from tests.integration.test_backup_controller import (
    app_namespace,
    ark_server,
    backup_object,
    bound_claim,
    eventually,
    local_config,
    local_root,
    local_store,
    tarball_members,
    wait_phase,
)

Obj = dict[str, Any]
NODE = "n1"
FINAL = {"Completed", "PartiallyFailed", "Failed"}


def pod_object(name: str, volumes: list[Obj], annotation: str | None, node: str = NODE) -> Obj:
    meta: Obj = {"name": name, "labels": {"app": name}}
    if annotation is not None:
        meta["annotations"] = {"backup.ark.heptio.com/backup-volumes": annotation}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.29",
                    "volumeMounts": [{"name": v["name"], "mountPath": f"/{v['name']}"} for v in volumes],
                }
            ],
            "volumes": volumes,
        },
    }


def empty_dir(name: str) -> Obj:
    return {"name": name, "emptyDir": {}}


async def restic_key(kube: KubeClient, ark_ns: str, volume_ns: str) -> bytes:
    found = await kube.get(SECRETS, restic_key_secret_name(volume_ns), ark_ns)
    return base64.b64decode(found["data"][RESTIC_KEY_DATA_KEY])


async def restic(repo: str, key: bytes, *args: str, cwd: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as private:
        password = Path(private) / "password"
        password.write_bytes(key)
        password.chmod(0o600)
        proc = await asyncio.create_subprocess_exec(
            "restic", *args, f"--repo={repo}", f"--password-file={password}", "--no-cache",
            cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"restic {args[0]} failed: {err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def repository_controller(kube: KubeClient, ark_ns: str, *, init: bool) -> AsyncIterator[None]:
    """Plays the ResticRepository controller: `restic init` (optionally), then phase Ready."""

    async def loop() -> None:
        done: set[str] = set()
        while True:
            for repo in await kube.list(RESTICREPOSITORIES, ark_ns):
                name = repo["metadata"]["name"]
                if name in done:
                    continue
                if init:
                    key = await restic_key(kube, ark_ns, name)
                    await restic(repo["spec"]["resticIdentifier"], key, "init")
                await kube.patch(
                    RESTICREPOSITORIES, name, {"status": {"phase": "Ready"}}, ark_ns, subresource="status"
                )
                done.add(name)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def pvbs_of(kube: KubeClient, ark_ns: str, backup_uid: str, count: int) -> list[Obj]:
    async def probe() -> list[Obj] | None:
        found = await kube.list(PODVOLUMEBACKUPS, ark_ns, label_selector=f"{BACKUP_UID_LABEL}={backup_uid}")
        return sorted(found, key=lambda p: p["spec"]["volume"]) if len(found) >= count else None

    return await eventually(probe, f"{count} PodVolumeBackups of backup {backup_uid}")


async def finish_pvb(kube: KubeClient, ark_ns: str, pvb: Obj, **status: Any) -> Obj:
    """What the node agent writes at the end of a volume backup."""
    return await kube.patch(
        PODVOLUMEBACKUPS, pvb["metadata"]["name"], {"status": status}, ark_ns, subresource="status"
    )


async def backup_uid(kube: KubeClient, ark_ns: str, name: str) -> str:
    async def probe() -> str | None:
        obj = await kube.get(BACKUPS, name, ark_ns)
        return obj["metadata"]["uid"] if (obj.get("status") or {}).get("phase") == "InProgress" else None

    return await eventually(probe, f"backup {name} to start")


async def pod_in_tarball(root: str, backup: str, namespace: str, pod: str) -> Obj:
    store = local_store(root)
    try:
        members = tarball_members(await store.get(f"{backup}/{backup}.tar.gz"))
    finally:
        await store.close()
    path = f"resources/pods/namespaces/{namespace}/{pod}.json"
    assert path in members, f"{path} not in the tarball: {sorted(members)}"
    return members[path]


# --------------------------------------------------------------------------- tests


async def test_annotated_pod_volumes_are_backed_up_with_restic(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    pv = f"pv-{namespace}"
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    try:
        async with (
            app_namespace(kube) as app,
            ark_server(envtest, namespace) as server,
            repository_controller(kube, namespace, init=True),
        ):
            claim = await bound_claim(kube, app, "db-data", pv)
            volumes = [
                empty_dir("data"),
                {"name": "db", "persistentVolumeClaim": {"claimName": "db-data"}},
                empty_dir("scratch"),
            ]
            pod = await kube.create(PODS, pod_object("db-0", volumes, "data,db"), app)
            await kube.create(PODS, pod_object("plain", [empty_dir("tmp")], None), app)
            await kube.create(BACKUPS, backup_object(namespace, "with-volumes", includedNamespaces=[app]))
            uid = await backup_uid(kube, namespace, "with-volumes")

            pvbs = await pvbs_of(kube, namespace, uid, 2)
            repo_id = str(Path(root) / "restic" / app)
            assert [p["spec"]["volume"] for p in pvbs] == ["data", "db"]
            for pvb in pvbs:
                volume = pvb["spec"]["volume"]
                assert pvb["metadata"]["name"] == pod_volume_backup_name("with-volumes", app, "db-0", volume)
                assert pvb["metadata"]["labels"][BACKUP_NAME_LABEL] == "with-volumes"
                assert pvb["metadata"]["labels"][BACKUP_UID_LABEL] == uid
                owner = pvb["metadata"]["ownerReferences"]
                assert owner == [
                    {
                        "apiVersion": API_VERSION, "kind": "Backup", "name": "with-volumes", "uid": uid,
                        "controller": True,
                    }
                ]
                assert pvb["spec"]["node"] == NODE
                assert pvb["spec"]["pod"] == {
                    "kind": "Pod", "namespace": app, "name": "db-0", "uid": pod["metadata"]["uid"],
                }
                assert pvb["spec"]["repoIdentifier"] == repo_id
                assert pvb["spec"]["tags"] == {
                    "backup": "with-volumes", "backup-uid": uid, "pod": "db-0",
                    "pod-uid": pod["metadata"]["uid"], "ns": app, "volume": volume,
                }
            assert PVC_UID_LABEL not in pvbs[0]["metadata"]["labels"]
            assert pvbs[1]["metadata"]["labels"][PVC_UID_LABEL] == claim["metadata"]["uid"]
            repo = await kube.get(RESTICREPOSITORIES, app, namespace)
            assert repo["spec"] == {"maintenanceFrequency": "168h0m0s", "resticIdentifier": repo_id}

            # Play the node agent: back up real data with restic, report the snapshot.
            key = await restic_key(kube, namespace, app)
            snapshots: dict[str, str] = {}
            for pvb in pvbs:
                data = Path(tempfile.mkdtemp(prefix="arkd-volume-"))
                (data / "file.txt").write_text(f"contents of {pvb['spec']['volume']}\n")
                tags = [f"--tag={k}={v}" for k, v in pvb["spec"]["tags"].items()]
                out = await restic(repo_id, key, "backup", ".", "--json", "--host=ark", *tags, cwd=str(data))
                summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
                snapshots[pvb["spec"]["volume"]] = summary["snapshot_id"][:8]
                await finish_pvb(
                    kube, namespace, pvb, phase="Completed", snapshotID=snapshots[pvb["spec"]["volume"]],
                    path=str(data),
                )

            done = await wait_phase(kube, namespace, "with-volumes", FINAL)
            assert done["status"]["phase"] == "Completed", done["status"]
            backed_up = await pod_in_tarball(root, "with-volumes", app, "db-0")
            annotations = backed_up["metadata"]["annotations"]
            assert annotations["snapshot.ark.heptio.com/data"] == snapshots["data"]
            assert annotations["snapshot.ark.heptio.com/db"] == snapshots["db"]
            assert "snapshot.ark.heptio.com/scratch" not in annotations
            plain = await pod_in_tarball(root, "with-volumes", app, "plain")
            assert not any(k.startswith("snapshot.") for k in plain["metadata"].get("annotations") or {})

            store = local_store(root)
            listed_gz = await store.get("with-volumes/with-volumes-podvolumebackups.json.gz")
            listed = orjson.loads(gzip.decompress(listed_gz))
            await store.close()
            assert sorted(p["status"]["snapshotID"] for p in listed) == sorted(snapshots.values())
            found = json.loads(await restic(repo_id, key, "snapshots", "--json", f"--tag=backup-uid={uid}"))
            assert sorted(s["short_id"] for s in found) == sorted(snapshots.values())
            assert server.metric("ark_backup_success_total", schedule="") == 1
    finally:
        with contextlib.suppress(Exception):
            await kube.delete(PVS, pv)


async def test_failed_volume_makes_backup_partially_failed(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with (
        app_namespace(kube) as app,
        ark_server(envtest, namespace) as server,
        repository_controller(kube, namespace, init=False),
    ):
        volumes = [empty_dir("good"), empty_dir("bad")]
        await kube.create(PODS, pod_object("worker", volumes, "good,bad"), app)
        await kube.create(BACKUPS, backup_object(namespace, "partial", includedNamespaces=[app]))
        uid = await backup_uid(kube, namespace, "partial")
        bad, good = await pvbs_of(kube, namespace, uid, 2)
        await finish_pvb(kube, namespace, good, phase="Completed", snapshotID="1a2b3c4d")
        await finish_pvb(
            kube, namespace, bad, phase="Failed", message="error running restic backup: permission denied"
        )

        done = await wait_phase(kube, namespace, "partial", FINAL)
        status = done["status"]
        assert status["phase"] == "PartiallyFailed"
        assert status["errors"] == 1
        assert "volume bad of pod" in status["failureReason"]
        assert "permission denied" in status["failureReason"]
        # The pod is kept, with the snapshot of the volume that worked.
        backed_up = await pod_in_tarball(root, "partial", app, "worker")
        assert backed_up["metadata"]["annotations"]["snapshot.ark.heptio.com/good"] == "1a2b3c4d"
        assert "snapshot.ark.heptio.com/bad" not in backed_up["metadata"]["annotations"]
        assert server.metric("ark_backup_partial_failure_total", schedule="") == 1


async def test_missing_volume_is_a_warning(envtest: Envtest, namespace: str, kube: KubeClient) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with (
        app_namespace(kube) as app,
        ark_server(envtest, namespace),
        repository_controller(kube, namespace, init=False),
    ):
        await kube.create(PODS, pod_object("web", [empty_dir("data")], "data,nosuch"), app)
        await kube.create(BACKUPS, backup_object(namespace, "warned", includedNamespaces=[app]))
        uid = await backup_uid(kube, namespace, "warned")
        (only,) = await pvbs_of(kube, namespace, uid, 1)
        assert only["spec"]["volume"] == "data"
        await finish_pvb(kube, namespace, only, phase="Completed", snapshotID="0f0f0f0f")

        done = await wait_phase(kube, namespace, "warned", FINAL)
        assert done["status"]["phase"] == "Completed"
        assert done["status"]["warnings"] == 1
        store = local_store(root)
        log_text = gzip.decompress(await store.get("warned/warned-logs.gz")).decode()
        await store.close()
        assert "volume nosuch named in backup.ark.heptio.com/backup-volumes is not in pod" in log_text
        assert "level=warning" in log_text


async def test_stalled_volume_is_failed_with_a_hint(envtest: Envtest, namespace: str, kube: KubeClient) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with (
        app_namespace(kube) as app,
        ark_server(envtest, namespace, pod_volume_stall_timeout=1.0),
        repository_controller(kube, namespace, init=False),
    ):
        await kube.create(PODS, pod_object("idle", [empty_dir("data")], "data"), app)
        await kube.create(BACKUPS, backup_object(namespace, "stalled", includedNamespaces=[app]))
        # Nobody plays the node agent: the PodVolumeBackup never moves.
        done = await wait_phase(kube, namespace, "stalled", FINAL)
        assert done["status"]["phase"] == "PartiallyFailed"
        (pvb,) = await pvbs_of(kube, namespace, done["metadata"]["uid"], 1)
        assert pvb["status"]["phase"] == "Failed"
        hint = "no progress for 1s: is the node agent (ark restic server) running on node n1?"
        assert pvb["status"]["message"] == hint
        assert hint in done["status"]["failureReason"]


async def test_overall_timeout_fails_unfinished_volumes(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with (
        app_namespace(kube) as app,
        ark_server(envtest, namespace),
        repository_controller(kube, namespace, init=False),
    ):
        await kube.create(PODS, pod_object("slow", [empty_dir("data")], "data"), app)
        backup = backup_object(namespace, "impatient", includedNamespaces=[app])
        backup["metadata"]["annotations"] = {"ark.heptio.com/pod-volume-timeout": "2s"}
        await kube.create(BACKUPS, backup)
        done = await wait_phase(kube, namespace, "impatient", FINAL)
        assert done["status"]["phase"] == "PartiallyFailed"
        (pvb,) = await pvbs_of(kube, namespace, done["metadata"]["uid"], 1)
        assert pvb["status"]["phase"] == "Failed"
        assert pvb["status"]["message"].startswith("timed out after 2s waiting for the pod volume backup")
        assert "volume data of pod" in done["status"]["failureReason"]


async def test_pods_are_handled_concurrently_up_to_the_limit(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with app_namespace(kube) as app, repository_controller(kube, namespace, init=False):
        for name in ("a", "b", "c"):
            await kube.create(PODS, pod_object(name, [empty_dir("data")], "data"), app)
        async with ark_server(envtest, namespace):
            await kube.create(BACKUPS, backup_object(namespace, "parallel", includedNamespaces=[app]))
            uid = await backup_uid(kube, namespace, "parallel")
            # All three pods' volumes are in flight at once, none waits for another to finish.
            pvbs = await pvbs_of(kube, namespace, uid, 3)
            for pvb in pvbs:
                await finish_pvb(kube, namespace, pvb, phase="Completed", snapshotID="abcdef01")
            assert (await wait_phase(kube, namespace, "parallel", FINAL))["status"]["phase"] == "Completed"
        async with ark_server(envtest, namespace, pod_concurrency=1):
            await kube.create(BACKUPS, backup_object(namespace, "serial", includedNamespaces=[app]))
            uid = await backup_uid(kube, namespace, "serial")
            seen: list[str] = []
            for _ in range(3):
                current = await pvbs_of(kube, namespace, uid, len(seen) + 1)
                (pvb,) = [p for p in current if p["metadata"]["name"] not in seen]
                # With a limit of one pod, the next pod's volume only appears once this one is done.
                listed = await kube.list(PODVOLUMEBACKUPS, namespace, label_selector=f"{BACKUP_UID_LABEL}={uid}")
                assert len(listed) == len(seen) + 1
                seen.append(pvb["metadata"]["name"])
                await finish_pvb(kube, namespace, pvb, phase="Completed", snapshotID="abcdef02")
            assert (await wait_phase(kube, namespace, "serial", FINAL))["status"]["phase"] == "Completed"


async def test_missing_key_is_reported_when_keys_are_required(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with app_namespace(kube) as app, ark_server(envtest, namespace, require_restic_keys=True):
        await kube.create(PODS, pod_object("keyless", [empty_dir("data")], "data"), app)
        await kube.create(BACKUPS, backup_object(namespace, "no-key", includedNamespaces=[app]))
        done = await wait_phase(kube, namespace, "no-key", FINAL)
        assert done["status"]["phase"] == "PartiallyFailed"
        assert f"no restic key for namespace {app}" in done["status"]["failureReason"]
        assert f"ark restic init-repository --namespace {app}" in done["status"]["failureReason"]
        assert await kube.list(PODVOLUMEBACKUPS, namespace) == []
        # The pod itself is still backed up (without volume data).
        await pod_in_tarball(root, "no-key", app, "keyless")


async def test_restic_disabled_backs_up_pods_without_volumes(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=False), namespace)
    async with app_namespace(kube) as app, ark_server(envtest, namespace):
        await kube.create(PODS, pod_object("annotated", [empty_dir("data")], "data"), app)
        await kube.create(BACKUPS, backup_object(namespace, "no-restic", includedNamespaces=[app]))
        done = await wait_phase(kube, namespace, "no-restic", FINAL)
        assert done["status"]["phase"] == "Completed"
        assert done["status"]["warnings"] == 1
        assert await kube.list(PODVOLUMEBACKUPS, namespace) == []
        backed_up = await pod_in_tarball(root, "no-restic", app, "annotated")
        assert not any(k.startswith("snapshot.") for k in backed_up["metadata"]["annotations"])


async def test_restarted_server_finishes_the_backup(envtest: Envtest, namespace: str, kube: KubeClient) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restic=True), namespace)
    async with app_namespace(kube) as app, repository_controller(kube, namespace, init=False):
        await kube.create(PODS, pod_object("survivor", [empty_dir("data")], "data"), app)
        async with ark_server(envtest, namespace):
            await kube.create(BACKUPS, backup_object(namespace, "resumed", includedNamespaces=[app]))
            uid = await backup_uid(kube, namespace, "resumed")
            (first,) = await pvbs_of(kube, namespace, uid, 1)
        # The server is gone mid-wait; the cluster still says InProgress.
        assert (await kube.get(BACKUPS, "resumed", namespace))["status"]["phase"] == "InProgress"
        async with ark_server(envtest, namespace) as second:
            await finish_pvb(kube, namespace, first, phase="Completed", snapshotID="feedbeef")
            done = await wait_phase(kube, namespace, "resumed", FINAL)
            assert done["status"]["phase"] == "Completed", done["status"]
            (again,) = await pvbs_of(kube, namespace, uid, 1)
            assert again["metadata"]["uid"] == first["metadata"]["uid"], "the PodVolumeBackup was reused"
            backed_up = await pod_in_tarball(root, "resumed", app, "survivor")
            assert backed_up["metadata"]["annotations"]["snapshot.ark.heptio.com/data"] == "feedbeef"
            assert second.metric("ark_backup_success_total", schedule="") == 1

