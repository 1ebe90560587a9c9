"""The node agent (`ark restic server`) on a real apiserver with real restic.

The tests play the kubelet: they create pods with spec.nodeName set, make the volume folders under
a temporary host pods directory (`<host>/<pod uid>/volumes/<plugin>/<volume>/`), patch pod status
through the status subresource, and create the PodVolumeBackup/Restore objects as the Ark server
would. The restic repositories are local directories named after the volume namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from arkd.api.constants import (
    BACKUP_NAME_LABEL,
    BACKUP_UID_LABEL,
    POD_UID_LABEL,
    PVC_UID_LABEL,
    RESTORE_NAME_LABEL,
    RESTORE_UID_LABEL,
)
from arkd.config import NodeAgentSettings
from arkd.controllers.node_agent import NodeAgent
from arkd.controllers.pod_volume_backup import POD_OWNER_ANNOTATION
from arkd.controllers.resources import PODVOLUMEBACKUPS, PODVOLUMERESTORES
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.errors import Conflict
from arkd.kube.events import EventRecorder
from arkd.kube.informer import Informer
from arkd.kube.resource import EVENTS, NAMESPACES, PODS, PVCS, SECRETS
from arkd.podvolume.keys import RepositoryKeys, ResticKeyError, SecretCache, key_secret
from arkd.podvolume.selection import pod_volume_backup_name, restic_tags
from arkd.podvolume.tracker import PodVolumeTracker, stall_message
from arkd.restic.messages import Snapshot
from arkd.restic.repository import Repository

Obj = dict[str, Any]
EMPTY_DIR = "kubernetes.io~empty-dir"
CSI = "kubernetes.io~csi"
WAIT = 180.0


# ----------------------------------------------------------------------------------- helpers


@dataclass
class Env:
    kube: KubeClient
    ns: str  # both the Ark namespace and the pods' namespace
    node: str
    host: Path
    scratch: Path
    key: bytes
    repo: Repository

    @property
    def repo_id(self) -> str:
        return self.repo.identifier


@pytest.fixture
async def env(kube: KubeClient, namespace: str, tmp_path: Path) -> Env:
    key = secrets.token_bytes(1024)
    await kube.create(SECRETS, key_secret(namespace, namespace, key), namespace)
    # The repository path ends in the volume namespace, like every repository identifier.
    repo = Repository(str(tmp_path / "repos" / namespace), key)
    await repo.init()
    host = tmp_path / "host_pods"
    host.mkdir()
    return Env(kube, namespace, f"node-{secrets.token_hex(3)}", host, tmp_path / "scratch", key, repo)


@contextlib.asynccontextmanager
async def agent(
    env: Env,
    *,
    max_concurrent: int = 2,
    node: str | None = None,
    host: Path | None = None,
    lock_wait: float = 300.0,
    key_cache: SecretCache | None = None,
) -> AsyncIterator[EventRecorder]:
    settings = NodeAgentSettings(
        namespace=env.ns,
        node_name=node or env.node,
        host_pods_dir=str(host or env.host),
        max_concurrent=max_concurrent,
        scratch_dir=str(env.scratch),
        progress_interval=0.2,
        lock_wait=lock_wait,
    )
    recorder = EventRecorder(env.kube, "ark-restic")
    node_agent = NodeAgent(env.kube, settings, CollectorRegistry(), recorder, RealClock())
    if key_cache is not None:
        node_agent.backups.ctx.keys.cache = key_cache
    task = asyncio.create_task(node_agent.run())
    try:
        yield recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await recorder.close()


async def create_pod(
    env: Env,
    name: str,
    volumes: list[Obj],
    *,
    node: str | None = None,
    owner: str | None = None,
    init_containers: list[Obj] | None = None,
    namespace: str | None = None,
) -> Obj:
    ns = namespace or env.ns
    meta: Obj = {"name": name, "namespace": ns}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": str(uuid.uuid4()), "controller": True}
        ]
    spec: Obj = {
        "nodeName": node or env.node,
        "containers": [{"name": "app", "image": "busybox"}],
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    return await env.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}, ns)


def uid(obj: Obj) -> str:
    return str(obj["metadata"]["uid"])


def kubelet_dir(env: Env, pod: Obj, plugin: str, name: str) -> Path:
    path = env.host / uid(pod) / "volumes" / plugin / name
    if plugin == CSI:
        path = path / "mount"
    path.mkdir(parents=True)
    return path


def fill(path: Path, seed: int, size: int = 256 * 1024) -> None:
    """Files a user would have: nested dirs, binary data, an empty file, a symlink, modes."""
    rnd = random.Random(seed)
    (path / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    with (path / "data.bin").open("wb") as f:
        for offset in range(0, size, 1 << 20):
            f.write(rnd.randbytes(min(1 << 20, size - offset)))
    (path / "nested" / "notes.txt").write_text(f"seed {seed}\n" * 100)
    (path / "nested" / "deeper" / "small.bin").write_bytes(rnd.randbytes(1000))
    (path / "empty").write_bytes(b"")
    script = path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    (path / "link").symlink_to("nested/notes.txt")


def tree(path: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, bytes | str, int]]:
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for root, dirs, files in os.walk(path):
        rel_root = Path(root).relative_to(path)
        dirs[:] = [d for d in dirs if str(rel_root / d) not in skip]
        for entry in [*dirs, *files]:
            full = Path(root) / entry
            rel = str(rel_root / entry)
            if rel in skip:
                continue
            mode = full.lstat().st_mode & 0o777
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full), 0)
            elif full.is_dir():
                out[rel] = ("dir", b"", mode)
            else:
                out[rel] = ("file", full.read_bytes(), mode)
    return out


async def create_pvb(
    env: Env,
    pod: Obj,
    volume: str,
    *,
    backup: str = "b1",
    node: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    backup_uid = str(uuid.uuid4())
    name = pod_volume_backup_name(backup, env.ns, pod["metadata"]["name"], volume)
    obj = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "PodVolumeBackup",
        "metadata": {
            "name": name,
            "namespace": env.ns,
            "labels": {BACKUP_NAME_LABEL: backup, BACKUP_UID_LABEL: backup_uid, **(labels or {})},
        },
        "spec": {
            "node": node or env.node,
            "pod": {"kind": "Pod", "namespace": env.ns, "name": pod["metadata"]["name"], "uid": uid(pod)},
            "volume": volume,
            "repoIdentifier": env.repo_id,
            "tags": restic_tags(
                backup_name=backup,
                backup_uid=backup_uid,
                pod_name=pod["metadata"]["name"],
                pod_uid=uid(pod),
                pod_namespace=env.ns,
                volume=volume,
            ),
        },
    }
    await env.kube.create(PODVOLUMEBACKUPS, obj, env.ns)
    return name


async def wait_phase(env: Env, res: Any, name: str, *phases: str) -> Obj:
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        obj = await env.kube.get(res, name, env.ns)
        if (obj.get("status") or {}).get("phase") in phases:
            return obj
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} never reached {phases}; last status {obj.get('status')}")
        await asyncio.sleep(0.1)


async def snapshot(env: Env, snapshot_id: str) -> Snapshot:
    found = [s for s in await env.repo.snapshots() if s.id.startswith(snapshot_id)]
    assert len(found) == 1, f"snapshot {snapshot_id} not in {await env.repo.snapshots()}"
    return found[0]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def restic_processes(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"restic") and any(marker.encode() in a for a in cmdline):
            pids.append(int(proc.name))
    return pids


# ----------------------------------------------------------------------------------- backups


async def test_backup_completes_with_tags_and_restores_byte_for_byte(env: Env, tmp_path: Path) -> None:
    pod = await create_pod(env, "web", [{"name": "data", "emptyDir": {}}])
    vol = kubelet_dir(env, pod, EMPTY_DIR, "data")
    fill(vol, seed=1)
    name = await create_pvb(env, pod, "data")

    async with agent(env) as recorder:
        done = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")
        await recorder.flush()

    status = done["status"]
    assert status["phase"] == "Completed", status
    assert status["path"] == str(vol)
    assert status["startTimestamp"] and status["completionTimestamp"]
    assert status["progress"]["bytesDone"] == status["progress"]["totalBytes"] > 256 * 1024
    assert "message" not in status

    snap = await snapshot(env, status["snapshotID"])
    assert snap.hostname == "ark"
    assert snap.tags == done["spec"]["tags"]
    assert set(snap.tags) == {"backup", "backup-uid", "pod", "pod-uid", "ns", "volume"}
    by_tags = await env.repo.snapshots(tags={"backup": "b1", "pod-uid": uid(pod), "volume": "data"})
    assert [s.id for s in by_tags] == [snap.id]

    target = tmp_path / "restored"
    target.mkdir()
    await env.repo.restore(status["snapshotID"], target)
    assert tree(target) == tree(vol)

    events = await env.kube.list(EVENTS, env.ns, field_selector=f"involvedObject.name={name}")
    assert {"Started", "Completed"} <= {e["reason"] for e in events}


async def test_missing_volume_dir_fails_precisely_and_other_nodes_are_left_alone(env: Env) -> None:
    pod = await create_pod(env, "api", [{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}])
    kubelet_dir(env, pod, EMPTY_DIR, "cache")  # "data" is not mounted on this node
    missing = await create_pvb(env, pod, "data")
    other_pod = await create_pod(env, "elsewhere", [{"name": "data", "emptyDir": {}}], node="other-node")
    other = await create_pvb(env, other_pod, "data", node="other-node")

    async with agent(env) as recorder:
        failed = await wait_phase(env, PODVOLUMEBACKUPS, missing, "Completed", "Failed")
        await recorder.flush()
        untouched = await env.kube.get(PODVOLUMEBACKUPS, other, env.ns)

    assert failed["status"]["phase"] == "Failed"
    message = failed["status"]["message"]
    assert message.startswith(
        f"no directory for volume data of pod {env.ns}/api (uid {uid(pod)}) under "
        f"{env.host}/{uid(pod)}/volumes/*/data: is the pod running on this node and the volume mounted?"
    ), message
    assert f"{EMPTY_DIR}/cache" in message  # what was there instead
    assert failed["status"]["completionTimestamp"]
    assert not (untouched.get("status") or {}).get("phase")
    events = await env.kube.list(EVENTS, env.ns, field_selector=f"involvedObject.name={missing}")
    assert any(e["reason"] == "Failed" and e["type"] == "Warning" for e in events)


async def test_wrong_key_fails_with_exit_code_and_stderr_but_never_the_key(env: Env) -> None:
    pod = await create_pod(env, "web", [{"name": "data", "emptyDir": {}}])
    fill(kubelet_dir(env, pod, EMPTY_DIR, "data"), seed=2)
    wrong = secrets.token_bytes(64)
    secret_name = f"ark-restic-credentials-{env.ns}"
    await env.kube.delete(SECRETS, secret_name, env.ns)
    await env.kube.create(SECRETS, key_secret(env.ns, env.ns, wrong), env.ns)
    name = await create_pvb(env, pod, "data")

    async with agent(env):
        failed = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")

    message = failed["status"]["message"]
    assert failed["status"]["phase"] == "Failed"
    assert "restic backup exited with code 1" in message
    assert "wrong password" in message
    assert wrong.hex() not in message and env.key.hex() not in message


async def test_recreated_pod_backs_up_with_parent_of_same_pvc(env: Env) -> None:
    pvc = await env.kube.create(
        PVCS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "db-data", "namespace": env.ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": "pv-db",
            },
        },
        env.ns,
    )
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}}]
    labels = {PVC_UID_LABEL: uid(pvc)}
    first_pod = await create_pod(env, "db-0", volumes)
    first_dir = kubelet_dir(env, first_pod, CSI, "pv-db")  # CSI volumes mount at <pv>/mount
    fill(first_dir, seed=3, size=4 * 1024 * 1024)

    async with agent(env):
        first = await wait_phase(
            env,
            PODVOLUMEBACKUPS,
            await create_pvb(env, first_pod, "data", backup="nightly-1", labels=labels),
            "Completed",
            "Failed",
        )
        assert first["status"]["phase"] == "Completed", first["status"]
        assert first["status"]["path"] == str(first_dir)
        repo_size = du(Path(env.repo_id))

        # The pod is recreated (new UID, another node directory), same claim and data.
        await env.kube.delete(PODS, "db-0", env.ns, grace_period_seconds=0)
        second_pod = await create_pod(env, "db-0", volumes)
        assert uid(second_pod) != uid(first_pod)
        second_dir = kubelet_dir(env, second_pod, CSI, "pv-db")
        fill(second_dir, seed=3, size=4 * 1024 * 1024)
        second = await wait_phase(
            env,
            PODVOLUMEBACKUPS,
            await create_pvb(env, second_pod, "data", backup="nightly-2", labels=labels),
            "Completed",
            "Failed",
        )

    assert second["status"]["phase"] == "Completed", second["status"]
    first_snap = await snapshot(env, first["status"]["snapshotID"])
    second_snap = await snapshot(env, second["status"]["snapshotID"])
    assert second_snap.parent == first_snap.id
    # Same data: restic stores (almost) nothing new.
    assert du(Path(env.repo_id)) - repo_size < 400 * 1024


async def test_non_pvc_volume_parent_follows_the_pod_owner(env: Env) -> None:
    volumes = [{"name": "cache", "emptyDir": {}}]
    old = await create_pod(env, "web-abc12", volumes, owner="web-5d4f8")
    fill(kubelet_dir(env, old, EMPTY_DIR, "cache"), seed=4)
    stranger = await create_pod(env, "other-xyz98", volumes, owner="other-77")
    fill(kubelet_dir(env, stranger, EMPTY_DIR, "cache"), seed=4)
    new = await create_pod(env, "web-def34", volumes, owner="web-5d4f8")
    fill(kubelet_dir(env, new, EMPTY_DIR, "cache"), seed=4)

    async with agent(env):
        first = await wait_phase(
            env, PODVOLUMEBACKUPS, await create_pvb(env, old, "cache", backup="b1"), "Completed", "Failed"
        )
        unrelated = await wait_phase(
            env, PODVOLUMEBACKUPS, await create_pvb(env, stranger, "cache", backup="b1"), "Completed", "Failed"
        )
        second = await wait_phase(
            env, PODVOLUMEBACKUPS, await create_pvb(env, new, "cache", backup="b2"), "Completed", "Failed"
        )

    assert first["metadata"]["annotations"][POD_OWNER_ANNOTATION] == "ReplicaSet/web-5d4f8"
    first_snap = await snapshot(env, first["status"]["snapshotID"])
    assert (await snapshot(env, unrelated["status"]["snapshotID"])).parent is None
    assert (await snapshot(env, second["status"]["snapshotID"])).parent == first_snap.id


async def test_concurrency_limit_one_never_runs_two_at_once(env: Env) -> None:
    names = []
    for i in range(2):
        pod = await create_pod(env, f"p{i}", [{"name": "data", "emptyDir": {}}])
        fill(kubelet_dir(env, pod, EMPTY_DIR, "data"), seed=10 + i, size=8 * 1024 * 1024)
        names.append(await create_pvb(env, pod, "data"))

    page = await env.kube.list_page(PODVOLUMEBACKUPS, env.ns)
    phases: dict[str, str] = {}
    most_in_progress = 0

    async def observe() -> None:
        nonlocal most_in_progress
        async for event in env.kube.watch(
            PODVOLUMEBACKUPS, env.ns, resource_version=page["metadata"]["resourceVersion"]
        ):
            obj = event["object"]
            if event["type"] not in ("ADDED", "MODIFIED"):
                continue
            phases[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase") or "New"
            most_in_progress = max(most_in_progress, sum(p == "InProgress" for p in phases.values()))
            if all(phases.get(n) in ("Completed", "Failed") for n in names):
                return

    async with agent(env, max_concurrent=1):
        await asyncio.wait_for(observe(), WAIT)

    assert [phases[n] for n in names] == ["Completed", "Completed"]
    assert most_in_progress == 1


async def test_two_nodes_run_in_parallel_and_each_keeps_its_own_limit(env: Env, tmp_path: Path) -> None:
    hosts = {"node-a": tmp_path / "host-a", "node-b": tmp_path / "host-b"}
    names: dict[str, str] = {}  # PodVolumeBackup name -> node
    for node, host in hosts.items():
        for i in range(2):
            pod = await create_pod(env, f"{node}-p{i}", [{"name": "data", "emptyDir": {}}], node=node)
            path = host / uid(pod) / "volumes" / EMPTY_DIR / "data"
            path.mkdir(parents=True)
            fill(path, seed=hash((node, i)) % 1000, size=12 * 1024 * 1024)
            names[await create_pvb(env, pod, "data", backup=f"b-{node}-{i}", node=node)] = node

    page = await env.kube.list_page(PODVOLUMEBACKUPS, env.ns)
    phases: dict[str, str] = {}
    most_per_node = dict.fromkeys(hosts, 0)
    most_overall = 0

    async def observe() -> None:
        nonlocal most_overall
        async for event in env.kube.watch(
            PODVOLUMEBACKUPS, env.ns, resource_version=page["metadata"]["resourceVersion"]
        ):
            obj = event["object"]
            if event["type"] not in ("ADDED", "MODIFIED") or obj["metadata"]["name"] not in names:
                continue
            phases[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase") or "New"
            running = [n for n, p in phases.items() if p == "InProgress"]
            for node in hosts:
                most_per_node[node] = max(most_per_node[node], sum(names[n] == node for n in running))
            most_overall = max(most_overall, len(running))
            if all(phases.get(n) in ("Completed", "Failed") for n in names):
                return

    async with (
        agent(env, max_concurrent=1, node="node-a", host=hosts["node-a"]),
        agent(env, max_concurrent=1, node="node-b", host=hosts["node-b"]),
    ):
        await asyncio.wait_for(observe(), WAIT)

    assert all(phases[n] == "Completed" for n in names), phases
    assert most_per_node == {"node-a": 1, "node-b": 1}  # each node's limit held
    assert most_overall == 2  # and the two nodes worked at the same time
    for name, node in names.items():
        obj = await env.kube.get(PODVOLUMEBACKUPS, name, env.ns)
        assert obj["status"]["path"].startswith(str(hosts[node]))  # each agent read its own host dir


async def test_killed_agent_leaves_pvb_in_progress_and_a_new_agent_completes_it(env: Env, tmp_path: Path) -> None:
    pod = await create_pod(env, "big", [{"name": "data", "emptyDir": {}}])
    vol = kubelet_dir(env, pod, EMPTY_DIR, "data")
    fill(vol, seed=20, size=256 * 1024 * 1024)  # several seconds of restic work
    name = await create_pvb(env, pod, "data")

    async with agent(env):
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            obj = await env.kube.get(PODVOLUMEBACKUPS, name, env.ns)
            status = obj.get("status") or {}
            assert status.get("phase") in (None, "", "New", "InProgress"), status
            if status.get("phase") == "InProgress" and status.get("progress"):
                break  # restic is mid-run
            assert asyncio.get_running_loop().time() < deadline, "restic never reported progress"
            await asyncio.sleep(0.05)
    # The agent was cancelled (SIGTERM): restic is interrupted and reaped, the PVB stays InProgress.
    left = await env.kube.get(PODVOLUMEBACKUPS, name, env.ns)
    assert left["status"]["phase"] == "InProgress"
    assert not left["status"].get("snapshotID")
    assert restic_processes(env.repo_id) == []

    async with agent(env) as recorder:
        done = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")
        await recorder.flush()
    assert done["status"]["phase"] == "Completed", done["status"]
    assert done["status"]["startTimestamp"] == left["status"]["startTimestamp"]
    events = await env.kube.list(EVENTS, env.ns, field_selector=f"involvedObject.name={name}")
    assert "Resumed" in {e["reason"] for e in events}
    target = tmp_path / "restored"
    target.mkdir()
    await env.repo.restore(done["status"]["snapshotID"], target)
    assert tree(target) == tree(vol)


async def test_server_fails_a_running_pvb_through_the_tracker_and_the_agent_stops_restic(env: Env) -> None:
    pod = await create_pod(env, "big", [{"name": "data", "emptyDir": {}}])
    fill(kubelet_dir(env, pod, EMPTY_DIR, "data"), seed=21, size=256 * 1024 * 1024)
    name = await create_pvb(env, pod, "data")
    backup_uid = (await env.kube.get(PODVOLUMEBACKUPS, name, env.ns))["metadata"]["labels"][BACKUP_UID_LABEL]

    # The server's side: a PVB informer and the tracker seeded from it.
    informer = Informer(env.kube, PODVOLUMEBACKUPS, env.ns)
    informer_task = asyncio.create_task(informer.run())
    try:
        await informer.wait_synced()
        tracker = PodVolumeTracker(informer, BACKUP_UID_LABEL, RealClock())
        finished = tracker.wait(backup_uid, [name])
        async with agent(env):
            deadline = asyncio.get_running_loop().time() + WAIT
            while True:
                status = (tracker.get(name) or {}).get("status") or {}
                if status.get("phase") == "InProgress" and status.get("progress"):
                    break  # restic is mid-run
                assert asyncio.get_running_loop().time() < deadline, "restic never reported progress"
                await asyncio.sleep(0.05)
            assert not finished.done()
            # What stall detection does; progress writes race with it, so retry on Conflict.
            for _ in range(100):
                try:
                    await tracker.fail(
                        env.kube, PODVOLUMEBACKUPS, name, env.ns, stall_message(600), "2024-01-01T00:00:00Z"
                    )
                    break
                except Conflict:
                    await asyncio.sleep(0.05)
            results = await asyncio.wait_for(finished, WAIT)
            while restic_processes(env.repo_id):
                assert asyncio.get_running_loop().time() < deadline, "restic kept running"
                await asyncio.sleep(0.1)
            final = await env.kube.get(PODVOLUMEBACKUPS, name, env.ns)
    finally:
        informer_task.cancel()
        await asyncio.gather(informer_task, return_exceptions=True)

    assert results[name] is not None and results[name]["status"]["phase"] == "Failed"
    # The agent neither overwrote the failure nor recorded a snapshot.
    assert final["status"]["phase"] == "Failed"
    assert final["status"]["message"] == "no change in status.progress.bytesDone for 600 seconds"
    assert not final["status"].get("snapshotID")


# ----------------------------------------------------------------------------------- restores


@pytest.fixture
async def mapped_namespace(env: Env) -> AsyncIterator[str]:
    name = f"{env.ns}-mapped"
    await env.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    await env.kube.delete(NAMESPACES, name)


async def test_restore_waits_for_restic_wait_then_restores_and_releases_it(
    env: Env, mapped_namespace: str, tmp_path: Path
) -> None:
    # A snapshot as an earlier backup left it, including a done file of an older restore.
    source = tmp_path / "source"
    source.mkdir()
    fill(source, seed=30, size=1024 * 1024)
    (source / ".ark").mkdir()
    (source / ".ark" / "old-restore-uid").write_bytes(b"")
    summary = await env.repo.backup(source, tags={"backup": "b1", "volume": "data"}, host="ark")

    # Restored into another namespace (namespace mapping): only the source namespace has a key.
    restore_uid = str(uuid.uuid4())
    pod = await create_pod(
        env,
        "web",
        [{"name": "data", "emptyDir": {}}],
        namespace=mapped_namespace,
        init_containers=[
            {"name": "restic-wait", "image": "arkd/ark:latest", "args": [restore_uid]},
            {"name": "setup", "image": "busybox"},
        ],
    )
    vol = kubelet_dir(env, pod, EMPTY_DIR, "data")
    pvr_name = f"r1-{secrets.token_hex(3)}"
    await env.kube.create(
        PODVOLUMERESTORES,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "PodVolumeRestore",
            "metadata": {
                "name": pvr_name,
                "namespace": env.ns,
                "labels": {RESTORE_NAME_LABEL: "r1", RESTORE_UID_LABEL: restore_uid, POD_UID_LABEL: uid(pod)},
                "ownerReferences": [
                    {
                        "apiVersion": "ark.heptio.com/v1",
                        "kind": "Restore",
                        "name": "r1",
                        "uid": restore_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "pod": {"kind": "Pod", "namespace": mapped_namespace, "name": "web", "uid": uid(pod)},
                "volume": "data",
                "repoIdentifier": env.repo_id,
                "snapshotID": summary.snapshot_id,
            },
        },
        env.ns,
    )

    async with agent(env) as recorder:
        # restic-wait is not running yet (volumes may not be mounted): nothing may happen.
        await asyncio.sleep(1.5)
        pending = await env.kube.get(PODVOLUMERESTORES, pvr_name, env.ns)
        assert not (pending.get("status") or {}).get("phase")
        assert list(vol.iterdir()) == []

        await env.kube.patch(
            PODS,
            "web",
            namespace=mapped_namespace,
            subresource="status",
            patch={
                "status": {
                    "phase": "Pending",
                    "initContainerStatuses": [
                        {
                            "name": "restic-wait",
                            "ready": False,
                            "restartCount": 0,
                            "image": "arkd/ark:latest",
                            "imageID": "",
                            "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                        },
                        {
                            "name": "setup",
                            "ready": False,
                            "restartCount": 0,
                            "image": "busybox",
                            "imageID": "",
                            "state": {"waiting": {"reason": "PodInitializing"}},
                        },
                    ],
                }
            },
        )
        done = await wait_phase(env, PODVOLUMERESTORES, pvr_name, "Completed", "Failed")
        await recorder.flush()

    assert done["status"]["phase"] == "Completed", done["status"]
    assert done["status"]["startTimestamp"] and done["status"]["completionTimestamp"]
    assert tree(vol, skip=(".ark",)) == tree(source, skip=(".ark",))
    marker_dir = vol / ".ark"
    assert sorted(p.name for p in marker_dir.iterdir()) == [restore_uid]
    assert marker_dir.stat().st_mode & 0o777 == 0o755
    assert (marker_dir / restore_uid).stat().st_size == 0
    events = await env.kube.list(EVENTS, env.ns, field_selector=f"involvedObject.name={pvr_name}")
    assert "Completed" in {e["reason"] for e in events}


# ----------------------------------------------------------------------------------- keys


async def test_repository_keys_create_once_read_back_and_can_be_required(env: Env) -> None:
    keys = RepositoryKeys(env.kube, env.ns)
    volume_ns = f"{env.ns}-app"
    with pytest.raises(ResticKeyError, match=rf"ark restic init-repository --namespace {volume_ns}"):
        await keys.ensure(volume_ns, require=True)

    created = await keys.ensure(volume_ns)
    assert len(created) == 1024
    assert await keys.ensure(volume_ns) == created
    assert await keys.get(volume_ns) == created
    secret = await env.kube.get(SECRETS, f"ark-restic-credentials-{volume_ns}", env.ns)
    assert secret["metadata"]["labels"]["ark.heptio.com/restic-key"] == volume_ns
    assert set(secret["data"]) == {"repository-password"}
    # The key opens a repository made with it (restic reads the password file byte for byte).
    repo = Repository(f"{env.repo_id}-app", created)
    await repo.init()
    assert await repo.snapshots() == []


async def _restorable_pod(env: Env, snapshot_id: str) -> tuple[Obj, Path, str]:
    """A restored pod with restic-wait running, its empty volume folder, and its PodVolumeRestore."""
    restore_uid = str(uuid.uuid4())
    pod = await create_pod(
        env,
        f"web-{secrets.token_hex(3)}",
        [{"name": "data", "emptyDir": {}}],
        init_containers=[{"name": "restic-wait", "image": "arkd/ark:latest", "args": [restore_uid]}],
    )
    vol = kubelet_dir(env, pod, EMPTY_DIR, "data")
    name = f"r-{secrets.token_hex(4)}"
    await env.kube.create(
        PODVOLUMERESTORES,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "PodVolumeRestore",
            "metadata": {
                "name": name,
                "namespace": env.ns,
                "labels": {RESTORE_NAME_LABEL: "r", RESTORE_UID_LABEL: restore_uid, POD_UID_LABEL: uid(pod)},
                "ownerReferences": [
                    {
                        "apiVersion": "ark.heptio.com/v1",
                        "kind": "Restore",
                        "name": "r",
                        "uid": restore_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "pod": {"kind": "Pod", "namespace": env.ns, "name": pod["metadata"]["name"], "uid": uid(pod)},
                "volume": "data",
                "repoIdentifier": env.repo_id,
                "snapshotID": snapshot_id,
            },
        },
        env.ns,
    )
    running = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
    status = {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": "restic-wait",
                "ready": False,
                "restartCount": 0,
                "image": "arkd/ark:latest",
                "imageID": "",
                "state": running,
            }
        ],
    }
    await env.kube.patch(PODS, pod["metadata"]["name"], {"status": status}, env.ns, subresource="status")
    return pod, vol, name


async def test_killed_agent_mid_restore_is_finished_by_the_next_agent_with_whole_data(env: Env, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    fill(source, seed=41, size=96 * 1024 * 1024)
    summary = await env.repo.backup(source, tags={"backup": "b1", "volume": "data"}, host="ark")
    _, vol, name = await _restorable_pod(env, summary.snapshot_id)

    async with agent(env):
        await wait_phase(env, PODVOLUMERESTORES, name, "InProgress", "Completed")
    # The agent is gone mid-restore (as after SIGKILL or a node restart): the object stays InProgress.
    left = await env.kube.get(PODVOLUMERESTORES, name, env.ns)
    if left["status"]["phase"] == "Completed":
        pytest.fail("the restore finished before the agent could be stopped; use more data")
    assert left["status"]["phase"] == "InProgress"

    async with agent(env):
        done = await wait_phase(env, PODVOLUMERESTORES, name, "Completed", "Failed")
    assert done["status"]["phase"] == "Completed", done["status"]
    assert tree(vol, skip=(".ark",)) == tree(source)
    restore_uid = done["metadata"]["labels"][RESTORE_UID_LABEL]
    assert (vol / ".ark" / restore_uid).is_file()


async def test_snapshot_missing_from_the_repository_fails_the_restore_naming_it(env: Env) -> None:
    _, vol, name = await _restorable_pod(env, "deadbeef")
    async with agent(env):
        done = await wait_phase(env, PODVOLUMERESTORES, name, "Completed", "Failed")
    assert done["status"]["phase"] == "Failed"
    message = done["status"]["message"]
    assert "snapshot deadbeef not found in restic repository" in message and env.repo_id in message, message
    assert not (vol / ".ark").exists()  # restic-wait keeps the pod waiting; nothing claims the data is there


@contextlib.asynccontextmanager
async def exclusive_lock(env: Env, tmp_path: Path) -> AsyncIterator[None]:
    """Hold the repository's exclusive lock the way a real restic operation does.

    `restic key passwd` takes the exclusive lock, then reads the new password from a FIFO and
    blocks there until the test writes to it; writing the same password back ends it cleanly.
    """
    work = tmp_path / "lock-holder"
    work.mkdir()
    password, fifo = work / "password", work / "new-password"
    password.write_bytes(env.key)
    os.mkfifo(fifo)
    proc = await asyncio.create_subprocess_exec(
        "restic", "-r", env.repo_id, "--password-file", str(password), "--no-cache",
        "key", "passwd", "--new-password-file", str(fifo),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    locks = Path(env.repo_id) / "locks"
    try:
        for _ in range(300):
            if locks.is_dir() and any(len(p.name) == 64 for p in locks.iterdir()):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("restic key passwd never took the lock")
        yield
    finally:
        await asyncio.to_thread(fifo.write_bytes, env.key)
        _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()


async def wait_message(env: Env, name: str, prefix: str) -> Obj:
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        obj = await env.kube.get(PODVOLUMEBACKUPS, name, env.ns)
        if str((obj.get("status") or {}).get("message") or "").startswith(prefix):
            return obj
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} never said {prefix!r}; last status {obj.get('status')}")
        await asyncio.sleep(0.1)


async def test_a_backup_waits_while_an_exclusive_operation_holds_the_repository(env: Env, tmp_path: Path) -> None:
    pod = await create_pod(env, "web", [{"name": "data", "emptyDir": {}}])
    vol = kubelet_dir(env, pod, EMPTY_DIR, "data")
    fill(vol, seed=11)
    async with agent(env):
        async with exclusive_lock(env, tmp_path):
            name = await create_pvb(env, pod, "data")
            waiting = await wait_message(env, name, "waiting for the restic repository, locked by another operation")
            assert waiting["status"]["phase"] == "InProgress"
            assert "repository is already locked exclusively" in waiting["status"]["message"]
        done = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")
    assert done["status"]["phase"] == "Completed", done["status"]
    assert "message" not in done["status"]
    target = tmp_path / "restored"
    target.mkdir()
    await env.repo.restore(done["status"]["snapshotID"], target)
    assert tree(target) == tree(vol)


async def test_a_lock_held_longer_than_lock_wait_fails_the_backup_saying_so(env: Env, tmp_path: Path) -> None:
    pod = await create_pod(env, "web", [{"name": "data", "emptyDir": {}}])
    fill(kubelet_dir(env, pod, EMPTY_DIR, "data"), seed=12)
    async with exclusive_lock(env, tmp_path), agent(env, lock_wait=3):
        name = await create_pvb(env, pod, "data")
        failed = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["message"].startswith(
        f"the restic repository {env.repo_id} stayed locked by another operation for 3s "
        "(ark restic server --lock-wait): "
    ), failed["status"]["message"]
    assert await env.repo.snapshots() == []


class FrozenSecrets:
    """A key Secret cache that missed the last update, as an informer can for a moment."""

    def __init__(self, secrets: dict[str, Obj]) -> None:
        self.secrets = secrets

    def get(self, key: str) -> Obj | None:
        return self.secrets.get(key)


async def test_a_key_rotated_behind_the_cache_is_read_again_and_the_backup_completes(
    env: Env, tmp_path: Path
) -> None:
    secret_name = f"ark-restic-credentials-{env.ns}"
    stale = await env.kube.get(SECRETS, secret_name, env.ns)
    # Rotate as `ark restic rotate-key` does: add the new key, switch the Secret, remove the old key.
    new_key = secrets.token_bytes(1024)
    old_id = next(k.id for k in await env.repo.key_list() if k.current)
    await env.repo.key_add(new_key)
    await env.kube.delete(SECRETS, secret_name, env.ns)
    await env.kube.create(SECRETS, key_secret(env.ns, env.ns, new_key), env.ns)
    await env.repo.with_password(new_key).key_remove(old_id)

    pod = await create_pod(env, "web", [{"name": "data", "emptyDir": {}}])
    fill(kubelet_dir(env, pod, EMPTY_DIR, "data"), seed=13)
    name = await create_pvb(env, pod, "data")
    async with agent(env, key_cache=FrozenSecrets({f"{env.ns}/{secret_name}": stale})):
        done = await wait_phase(env, PODVOLUMEBACKUPS, name, "Completed", "Failed")
    assert done["status"]["phase"] == "Completed", done["status"]
    assert [s.id[:8] for s in await env.repo.with_password(new_key).snapshots()] == [done["status"]["snapshotID"][:8]]
