"""Benchmark: restic pod volume backup and restore through arkd, against raw restic.

Run on demand (pytest does not collect it):

    .venv/bin/python -m tests.benchmarks.bench_restic [--big-volumes 4] [--volume-mib 256]
        [--small-files 50000] [--small-kib 1 4] [--max-concurrent 5] [--workdir DIR]

It starts its own etcd + kube-apiserver, the real `ark server` and `ark restic server` processes
(node agent with --max-concurrent), a local-directory bucket and restic repository location, and
plays the kubelet: a pod on one node with `--big-volumes` emptyDir volumes of `--volume-mib` MiB of
random data each and one volume of `--small-files` small random files, written once under a
host-pods directory and read by both contenders.

- backup, raw: `restic backup` of the same directories into a fresh local repository, one restic
  process per volume, all in parallel, with the flags arkd uses (--json, the six tags, --host ark).
  Run once before and once after arkd's backup (each into its own fresh repository); the faster
  run is the figure compared against.
- backup, arkd: a Backup of the pod's namespace, from its creation to the last PodVolumeBackup
  Completed and to the Backup Completed (watch event times). The namespace's repository is made
  Ready first (ResticRepository), as raw restic's `init` is not timed either.
- restore, raw: `restic restore` of arkd's snapshots into fresh directories, all in parallel, before
  and after arkd's restore (the faster counts); plus, for diagnosis, `restic stats` followed by
  `restic restore` per volume, which is the sequence arkd's node agent runs.
- restore, arkd: the pod is deleted and a Restore created; this benchmark plays the scheduler and
  the kubelet (binds the restored pod to the node, creates the volume directories for its new UID,
  shows restic-wait Running, as hack/demo.py does); from the Restore's creation to Completed.

Prints one JSON object: backup_raw_seconds, backup_arkd_seconds (to Backup Completed),
backup_arkd_last_pvb_seconds, backup_ratio (arkd/raw, target <= 1.10),
last_pvb_to_backup_completed_seconds (target < 1), restore_raw_seconds, restore_arkd_seconds,
restore_ratio (target <= 1.10), per-volume times, CPU seconds per process (restic's own CPU shows as
`*_children`: restic processes reaped by the node agent, or by this benchmark for raw runs), and the
scale used. The data is written once, in the temporary directory, which is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from arkd.api.constants import (
    API_VERSION,
    BACKUP_NAME_LABEL,
    DEFAULT_NAMESPACE,
    RESTIC_KEY_DATA_KEY,
    RESTORE_NAME_LABEL,
    VOLUMES_TO_BACKUP_ANNOTATION,
    restic_key_secret_name,
)
from arkd.controllers.resources import (
    BACKUPS,
    CONFIGS,
    PODVOLUMEBACKUPS,
    PODVOLUMERESTORES,
    RESTICREPOSITORIES,
    RESTORES,
)
from arkd.kube.client import KubeClient
from arkd.kube.errors import NotFound
from arkd.kube.resource import PODS, SECRETS
from arkd.podvolume.selection import restic_tags
from arkd.restic.command import format_tags
from tests.benchmarks.bench_backup_restore import (
    BenchmarkError,
    CpuMeter,
    Obj,
    PhaseWatcher,
    create_namespace,
    envtest_pids,
    exit_on_sigterm,
    failure_detail,
    load_average,
    local_config,
    start_ark,
)
from tests.envtest.harness import Envtest
from tests.support.processes import ArkProcess, process_env

T = TypeVar("T")

NODE = "bench-node"
POD = "bench"
RESTIC_HOST = "ark"  # the --host arkd's node agent gives every snapshot
EMPTY_DIR = "kubernetes.io~empty-dir"
RESTIC_WAIT = "restic-wait"
DONE_DIR = ".ark"
CHUNK = 8 << 20
FILES_PER_DIR = 1000
STDERR_TAIL = 4000


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int


# --------------------------------------------------------------------------- the data


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def write_small_files(root: Path, count: int, min_kib: int, max_kib: int) -> None:
    sizes = random.Random(count).choices(range(min_kib * 1024, max_kib * 1024 + 1), k=count)
    for i, size in enumerate(sizes):
        directory = root / f"d{i // FILES_PER_DIR:03d}"
        if i % FILES_PER_DIR == 0:
            directory.mkdir()
        (directory / f"f{i:06d}").write_bytes(os.urandom(size))


def usage(root: Path) -> Usage:
    """Regular files and their bytes under root, without the `.ark` done-file directory."""
    files = total = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != DONE_DIR or Path(entry.path).parent != root:
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files += 1
                    total += entry.stat(follow_symlinks=False).st_size
    return Usage(files, total)


def volume_dir(host_pods: Path, pod_uid: str, volume: str) -> Path:
    return host_pods / pod_uid / "volumes" / EMPTY_DIR / volume


# --------------------------------------------------------------------------- raw restic


class RawRestic:
    """restic run directly, the way arkd runs it (password and cache through files and flags)."""

    def __init__(self, repo: Path, password: bytes, work: Path, cache: Path) -> None:
        self.repo = repo
        self.cache = cache
        self.password_file = work / f"password-{secrets.token_hex(4)}"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(password)

    async def run(self, *args: str, cwd: Path | None = None) -> tuple[float, str]:
        """(seconds, stdout) of one restic command; BenchmarkError if it fails."""
        argv = [
            "restic",
            args[0],
            f"--repo={self.repo}",
            f"--password-file={self.password_file}",
            f"--cache-dir={self.cache}",
            *args[1:],
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise BenchmarkError(
                f"restic {args[0]} exited {proc.returncode}: {stderr.decode(errors='replace')[-STDERR_TAIL:]}"
            )
        return seconds, stdout.decode(errors="replace")

    async def backup(self, directory: Path, tags: dict[str, str]) -> tuple[float, str]:
        """(seconds, snapshot id) of `restic backup .` in `directory` with arkd's flags."""
        flags = ["--json", *(f"--tag={t}" for t in format_tags(tags)), f"--host={RESTIC_HOST}"]
        seconds, stdout = await self.run("backup", ".", *flags, cwd=directory)
        for line in reversed(stdout.splitlines()):
            message = orjson.loads(line) if line.startswith("{") else {}
            if message.get("message_type") == "summary":
                return seconds, str(message["snapshot_id"])
        raise BenchmarkError(f"restic backup of {directory} printed no summary")

    async def restore(self, snapshot: str, directory: Path) -> float:
        seconds, _ = await self.run("restore", snapshot, "--target=.", cwd=directory)
        return seconds


async def timed_parallel(jobs: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Run the awaitables in `jobs` at once: (wall seconds, results by name)."""
    started = time.perf_counter()
    results = await asyncio.gather(*jobs.values())
    return time.perf_counter() - started, dict(zip(jobs, results, strict=True))


async def sync_disks() -> None:
    """Flush dirty pages so one phase's writeback does not slow the next."""
    await asyncio.to_thread(os.sync)


# --------------------------------------------------------------------------- the kubelet's part


class Kubelet:
    """Plays the scheduler and the kubelet for restored pods, once per pod UID: binds the pod to the
    node (a restore drops spec.nodeName), creates its volume directories, and reports the
    restic-wait init container Running."""

    def __init__(self, kube: KubeClient, host_pods: Path) -> None:
        self.kube = kube
        self.host_pods = host_pods
        self.started: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []

    def on_pod(self, pod: Obj) -> None:
        uid = str(pod["metadata"]["uid"])
        init = (pod.get("spec") or {}).get("initContainers") or []
        if uid in self.started or not init or init[0].get("name") != RESTIC_WAIT:
            return
        self.started[uid] = time.perf_counter()
        task = asyncio.create_task(self._start(pod))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self.errors.append(error)

    async def _start(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = str(meta["uid"])
        name, namespace = str(meta["name"]), str(meta["namespace"])
        if not pod["spec"].get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
            }
            await self.kube.request("POST", PODS.path(namespace, name, "binding"), body=binding)
        for volume in pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                await asyncio.to_thread(volume_dir(self.host_pods, uid, volume["name"]).mkdir, parents=True)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}} if i == 0 else {"waiting": {"reason": "PodInitializing"}},
            }
            for i, c in enumerate(pod["spec"]["initContainers"])
        ]
        status = {"status": {"phase": "Pending", "initContainerStatuses": statuses}}
        await self.kube.patch(PODS, name, status, namespace, subresource="status")

    def check(self) -> None:
        if self.errors:
            raise BenchmarkError(f"playing the kubelet failed: {self.errors[0]!r}")


# --------------------------------------------------------------------------- the benchmark


def parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


class ResticBench:
    """One run: data written once, then `--repeat` rounds of backup and restore, raw and arkd.

    Every round uses a fresh namespace (so a fresh arkd repository, and no parent snapshot from an
    earlier round) and fresh raw repositories; the data directories are moved (renamed) into each
    round's pod, so the page cache stays the same for every contender.
    """

    def __init__(self, env: Envtest, work: Path, args: argparse.Namespace) -> None:
        self.env = env
        self.work = work
        self.args = args
        self.store = work / "store"
        self.repos = work / "restic-repos"
        self.host_pods = work / "host_pods"
        self.stash = work / "data"  # the data between rounds
        for d in (self.store, self.repos, self.host_pods, self.stash):
            d.mkdir()
        self.prefix = f"bench-restic-{secrets.token_hex(3)}"
        self.volumes = [f"data{i}" for i in range(args.big_volumes)] + (["small"] if args.small_files else [])
        self.expected: dict[str, Usage] = {}
        self.procs: list[ArkProcess] = []

    # -- set-up --------------------------------------------------------------------------------
    def pod_body(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": POD,
                "labels": {"app": "bench"},
                "annotations": {VOLUMES_TO_BACKUP_ANNOTATION: ",".join(self.volumes)},
            },
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {
                        "name": "app",
                        "image": "busybox:1.36",
                        "volumeMounts": [{"name": v, "mountPath": f"/data/{v}"} for v in self.volumes],
                    }
                ],
                "volumes": [{"name": v, "emptyDir": {}} for v in self.volumes],
            },
        }

    def generate(self) -> None:
        args = self.args
        for volume in self.volumes:
            root = self.stash / volume
            root.mkdir()
            if volume == "small":
                write_small_files(root, args.small_files, args.small_kib[0], args.small_kib[1])
            else:
                write_random_file(root / "blob.bin", args.volume_mib << 20)
            self.expected[volume] = usage(root)

    def mount(self, pod_uid: str) -> None:
        """The kubelet's part for the pod being backed up: its volume directories hold the data."""
        for volume in self.volumes:
            target = volume_dir(self.host_pods, pod_uid, volume)
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.stash / volume).rename(target)

    def unmount(self, pod_uid: str) -> None:
        for volume in self.volumes:
            volume_dir(self.host_pods, pod_uid, volume).rename(self.stash / volume)
        shutil.rmtree(self.host_pods / pod_uid)

    def start_processes(self) -> tuple[ArkProcess, ArkProcess]:
        server_env = process_env(self.env.kubeconfig, ARK_SCRATCH_DIR=str(self.work / "scratch-server"))
        agent_env = process_env(self.env.kubeconfig, ARK_SCRATCH_DIR=str(self.work / "scratch-agent"))
        server = start_ark("ark-server", ["server"], server_env, self.work, None)
        self.procs.append(server)
        agent_args = [
            "restic",
            "server",
            "--node-name",
            NODE,
            "--host-pods-dir",
            str(self.host_pods),
            "--max-concurrent",
            str(self.args.max_concurrent),
        ]
        agent = start_ark("ark-restic", agent_args, agent_env, self.work, None)
        self.procs.append(agent)
        return server, agent

    async def repository_ready(self, kube: KubeClient, namespace: str) -> float:
        """Make the namespace's ResticRepository Ready (key, `restic init`): seconds it took."""
        body = {
            "apiVersion": API_VERSION,
            "kind": "ResticRepository",
            "metadata": {"name": namespace, "namespace": DEFAULT_NAMESPACE},
            "spec": {"maintenanceFrequency": "168h0m0s", "resticIdentifier": str(self.repos / namespace)},
        }
        async with PhaseWatcher(kube, RESTICREPOSITORIES, DEFAULT_NAMESPACE) as repos:
            started = time.perf_counter()
            await kube.create(RESTICREPOSITORIES, body, DEFAULT_NAMESPACE)

            def settled() -> str | None:
                phase = repos.phase(namespace)
                return phase if phase in ("Ready", "NotReady") else None

            phase = await repos.wait_until(settled, f"ResticRepository {namespace} to become Ready", 300)
            if phase != "Ready":
                detail = (repos.objects[namespace].get("status") or {}).get("message")
                raise BenchmarkError(f"ResticRepository {namespace} is NotReady: {detail}")
            return time.perf_counter() - started

    async def arkd_key(self, kube: KubeClient, namespace: str) -> bytes:
        secret = await kube.get(SECRETS, restic_key_secret_name(namespace), DEFAULT_NAMESPACE)
        return base64.b64decode(secret["data"][RESTIC_KEY_DATA_KEY])

    async def delete_pod(self, kube: KubeClient, namespace: str) -> None:
        await kube.delete(PODS, POD, namespace, grace_period_seconds=0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await kube.get(PODS, POD, namespace)
            except NotFound:
                return
            await asyncio.sleep(0.1)
        raise BenchmarkError(f"pod {namespace}/{POD} still exists 60s after its deletion")

    # -- backup ----------------------------------------------------------------------------------
    async def raw_repository(self, name: str) -> tuple[RawRestic, float]:
        """A fresh repository for raw restic, with a key like arkd's: (it, seconds `restic init` took)."""
        raw = RawRestic(self.work / name, secrets.token_bytes(1024), self.work, self.work / f"{name}-cache")
        seconds, _ = await raw.run("init")
        return raw, seconds

    async def raw_backup(self, raw: RawRestic, namespace: str, pod_uid: str) -> dict[str, Any]:
        await sync_disks()
        jobs = {}
        for volume in self.volumes:
            tags = restic_tags(
                backup_name="raw",
                backup_uid=str(secrets.token_hex(16)),
                pod_name=POD,
                pod_uid=pod_uid,
                pod_namespace=namespace,
                volume=volume,
            )
            jobs[volume] = raw.backup(volume_dir(self.host_pods, pod_uid, volume), tags)
        seconds, results = await timed_parallel(jobs)
        return {"seconds": seconds, "per_volume": {v: round(r[0], 3) for v, r in results.items()}}

    async def arkd_backup(self, kube: KubeClient, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        body = {
            "apiVersion": API_VERSION,
            "kind": "Backup",
            "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE},
            "spec": {"includedNamespaces": [namespace]},
        }
        await sync_disks()
        pvbs = PhaseWatcher(kube, PODVOLUMEBACKUPS, DEFAULT_NAMESPACE, label_selector=f"{BACKUP_NAME_LABEL}={name}")
        async with pvbs, PhaseWatcher(kube, BACKUPS, DEFAULT_NAMESPACE) as backups:
            started = time.perf_counter()
            await kube.create(BACKUPS, body, DEFAULT_NAMESPACE)
            phase, done, backup = await backups.wait_terminal(name, f"Backup {name} to finish")
        if phase != "Completed":
            raise BenchmarkError(f"Backup {name} ended {phase}: {failure_detail(backup)}")
        snapshots: dict[str, str] = {}
        completed: dict[str, float] = {}
        per_volume: dict[str, float] = {}
        for pvb_name, obj in pvbs.objects.items():
            volume = str(obj["spec"]["volume"])
            status = obj.get("status") or {}
            if status.get("phase") != "Completed":
                raise BenchmarkError(f"PodVolumeBackup {pvb_name} ({volume}) is {status.get('phase')}")
            snapshots[volume] = str(status["snapshotID"])
            seen = pvbs.first_seen[pvb_name]
            completed[volume] = seen["Completed"]
            per_volume[volume] = round(seen["Completed"] - seen.get("InProgress", started), 3)
        if sorted(snapshots) != sorted(self.volumes):
            raise BenchmarkError(f"PodVolumeBackups for volumes {sorted(snapshots)}, expected {sorted(self.volumes)}")
        last_pvb = max(completed.values())
        # completionTimestamps have whole-second precision; the event times above are the real measure.
        pvb_stamps = [parse_time((o.get("status") or {}).get("completionTimestamp")) for o in pvbs.objects.values()]
        backup_stamp = parse_time((backup.get("status") or {}).get("completionTimestamp"))
        stamp_delay = None
        if backup_stamp is not None and all(pvb_stamps):
            stamp_delay = (backup_stamp - max(s for s in pvb_stamps if s is not None)).total_seconds()
        return {
            "seconds": done - started,
            "last_pvb_seconds": last_pvb - started,
            "first_pvb_started_seconds": min(s.get("InProgress", done) for s in pvbs.first_seen.values()) - started,
            "last_pvb_to_backup_completed_seconds": done - last_pvb,
            "completion_timestamp_delay_seconds": stamp_delay,
            "per_volume": per_volume,
        }, snapshots

    # -- restore ---------------------------------------------------------------------------------
    def verify(self, roots: dict[str, Path], what: str) -> None:
        for volume, root in roots.items():
            got = usage(root)
            if got != self.expected[volume]:
                raise BenchmarkError(
                    f"{what}: volume {volume} has {got.files} files / {got.bytes} bytes, expected "
                    f"{self.expected[volume].files} / {self.expected[volume].bytes}"
                )

    async def raw_restore(
        self, key: bytes, namespace: str, snapshots: dict[str, str], *, with_stats: bool = False
    ) -> dict[str, Any]:
        """`restic restore` of arkd's snapshots, one process per volume, all at once.

        `with_stats` runs `restic stats --mode=restore-size` before each restore, as arkd's node
        agent does to know the totals for progress: it shows what that costs.
        """
        # The node agent's cache, as its restores use.
        cache = self.work / "scratch-agent" / ".cache" / "restic"
        raw = RawRestic(self.repos / namespace, key, self.work, cache)
        targets = {v: self.work / "raw-restore" / v for v in self.volumes}
        for target in targets.values():
            target.mkdir(parents=True)

        async def one(volume: str) -> float:
            started = time.perf_counter()
            if with_stats:
                await raw.run("stats", snapshots[volume], "--json", "--mode=restore-size")
            await raw.restore(snapshots[volume], targets[volume])
            return time.perf_counter() - started

        await sync_disks()
        seconds, results = await timed_parallel({v: one(v) for v in self.volumes})
        self.verify(targets, "raw restic restore")
        await asyncio.to_thread(shutil.rmtree, self.work / "raw-restore")
        return {"seconds": seconds, "per_volume": {v: round(s, 3) for v, s in results.items()}}

    async def arkd_restore(self, kube: KubeClient, namespace: str, backup: str, name: str) -> dict[str, Any]:
        body = {
            "apiVersion": API_VERSION,
            "kind": "Restore",
            "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE},
            "spec": {"backupName": backup},
        }
        kubelet = Kubelet(kube, self.host_pods)
        await sync_disks()
        pods = PhaseWatcher(kube, PODS, namespace, on_object=kubelet.on_pod)
        pvrs = PhaseWatcher(kube, PODVOLUMERESTORES, DEFAULT_NAMESPACE, label_selector=f"{RESTORE_NAME_LABEL}={name}")
        async with pods, pvrs, PhaseWatcher(kube, RESTORES, DEFAULT_NAMESPACE) as restores:
            started = time.perf_counter()
            await kube.create(RESTORES, body, DEFAULT_NAMESPACE)
            phase, done, restore = await restores.wait_terminal(name, f"Restore {name} to finish")
        kubelet.check()
        if phase != "Completed":
            raise BenchmarkError(f"Restore {name} ended {phase}: {failure_detail(restore)}")
        if len(kubelet.started) != 1:
            raise BenchmarkError(f"expected one restored pod with {RESTIC_WAIT}, saw {len(kubelet.started)}")
        ((uid, pod_seen),) = kubelet.started.items()
        self.verify({v: volume_dir(self.host_pods, uid, v) for v in self.volumes}, "arkd restore")
        per_volume: dict[str, float] = {}
        completed: list[float] = []
        for pvr_name, obj in pvrs.objects.items():
            seen = pvrs.first_seen[pvr_name]
            if "Completed" not in seen:
                raise BenchmarkError(f"PodVolumeRestore {pvr_name} is {pvrs.phase(pvr_name)}")
            completed.append(seen["Completed"])
            per_volume[str(obj["spec"]["volume"])] = round(seen["Completed"] - seen.get("InProgress", started), 3)
        # Gone again, so the next round starts from the same state.
        await self.delete_pod(kube, namespace)
        await asyncio.to_thread(shutil.rmtree, self.host_pods / uid)
        return {
            "seconds": done - started,
            "pod_created_seconds": pod_seen - started,
            "last_pvr_seconds": max(completed) - started if completed else None,
            "last_pvr_to_restore_completed_seconds": done - max(completed) if completed else None,
            "per_volume": per_volume,
        }

    # -- the whole run ---------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        args = self.args
        load_before = load_average()
        runs: dict[str, list[dict[str, Any]]] = {
            k: []
            for k in ("backup_raw", "backup_arkd", "restore_raw", "restore_arkd", "restore_raw_stats_then_restore")
        }
        cpu_seconds: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
        setup: dict[str, list[float]] = {"arkd_repository_ready": [], "raw_restic_init": []}
        async with await KubeClient.connect(self.env.kubeconfig) as kube:
            await kube.create(CONFIGS, local_config(self.store, self.repos), DEFAULT_NAMESPACE)
            server, agent = self.start_processes()
            assert server.proc is not None and agent.proc is not None
            cpu = CpuMeter(
                {**envtest_pids(self.env), "ark_server": server.proc.pid, "node_agent": agent.proc.pid},
                children=("ark_server", "node_agent"),
            )

            async def measured(kind: str, run: Awaitable[T]) -> T:
                cpu.start()
                result = await run
                cpu_seconds[kind].append(cpu.stop())
                return result

            started = time.perf_counter()
            await asyncio.to_thread(self.generate)
            generate_seconds = time.perf_counter() - started

            for i in range(args.repeat):
                namespace = f"{self.prefix}-{i}"
                await create_namespace(kube, namespace)
                uid = str((await kube.create(PODS, self.pod_body(), namespace))["metadata"]["uid"])
                await asyncio.to_thread(self.mount, uid)
                setup["arkd_repository_ready"].append(await self.repository_ready(kube, namespace))
                raw, init_seconds = await self.raw_repository(f"raw-repo-{i}")
                setup["raw_restic_init"].append(init_seconds)

                # Alternate which goes first, so whatever drifts (disk, caches) hits both.
                raw_backup = measured("backup_raw", self.raw_backup(raw, namespace, uid))
                arkd_backup = measured("backup_arkd", self.arkd_backup(kube, namespace, f"backup-{i}"))
                if i % 2 == 0:
                    runs["backup_raw"].append(await raw_backup)
                    arkd_result, snapshots = await arkd_backup
                else:
                    arkd_result, snapshots = await arkd_backup
                    runs["backup_raw"].append(await raw_backup)
                runs["backup_arkd"].append(arkd_result)
                await self.delete_pod(kube, namespace)
                await asyncio.to_thread(self.unmount, uid)
                await asyncio.to_thread(shutil.rmtree, self.work / f"raw-repo-{i}")

                key = await self.arkd_key(kube, namespace)
                raw_restore = measured("restore_raw", self.raw_restore(key, namespace, snapshots))
                arkd_restore = measured(
                    "restore_arkd", self.arkd_restore(kube, namespace, f"backup-{i}", f"restore-{i}")
                )
                if i % 2 == 0:
                    runs["restore_raw"].append(await raw_restore)
                    runs["restore_arkd"].append(await arkd_restore)
                else:
                    runs["restore_arkd"].append(await arkd_restore)
                    runs["restore_raw"].append(await raw_restore)
                if i == 0:
                    diagnosis = self.raw_restore(key, namespace, snapshots, with_stats=True)
                    runs["restore_raw_stats_then_restore"].append(
                        await measured("restore_raw_stats_then_restore", diagnosis)
                    )

        def med(kind: str, field: str = "seconds") -> float:
            return float(statistics.median(float(r[field]) for r in runs[kind]))

        total = sum(u.bytes for u in self.expected.values())
        return {
            "backup_raw_seconds": round(med("backup_raw"), 3),
            "backup_arkd_seconds": round(med("backup_arkd"), 3),
            "backup_arkd_last_pvb_seconds": round(med("backup_arkd", "last_pvb_seconds"), 3),
            "backup_ratio": round(med("backup_arkd") / med("backup_raw"), 3),
            "backup_ratio_last_pvb": round(med("backup_arkd", "last_pvb_seconds") / med("backup_raw"), 3),
            "last_pvb_to_backup_completed_seconds": round(
                max(float(r["last_pvb_to_backup_completed_seconds"]) for r in runs["backup_arkd"]), 3
            ),
            "restore_raw_seconds": round(med("restore_raw"), 3),
            "restore_arkd_seconds": round(med("restore_arkd"), 3),
            "restore_ratio": round(med("restore_arkd") / med("restore_raw"), 3),
            "restore_raw_stats_then_restore_seconds": round(med("restore_raw_stats_then_restore"), 3),
            "repeat": args.repeat,
            "runs": {kind: [_rounded(r) for r in rs] for kind, rs in runs.items()},
            "setup_seconds": {
                "generate": round(generate_seconds, 3),
                **{k: [round(v, 3) for v in vs] for k, vs in setup.items()},
            },
            "cpu_seconds_median": {
                kind: {k: round(statistics.median(c[k] for c in cs), 2) for k in cs[0]}
                for kind, cs in cpu_seconds.items()
                if cs
            },
            "scale": {
                "big_volumes": args.big_volumes,
                "volume_mib": args.volume_mib,
                "small_files": args.small_files,
                "small_kib": list(args.small_kib),
                "total_mib": round(total / (1 << 20), 1),
                "total_files": sum(u.files for u in self.expected.values()),
                "max_concurrent": args.max_concurrent,
                "raw_concurrency": len(self.volumes),
                "cpus": os.cpu_count(),
            },
            "load_average_before_after": [round(load_before, 2), round(load_average(), 2)],
        }

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                code = proc.stop()
            except AssertionError as exc:
                print(exc, file=sys.stderr)
                continue
            if code != 0:
                print(f"{proc.name} exited {code}:\n{proc.log_tail()}", file=sys.stderr)

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name} log (last lines) ---\n{p.log_tail()}" for p in self.procs)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, float):
            out[k] = round(v, 3)
        elif isinstance(v, dict):
            out[k] = _rounded(v)
        else:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-volumes", type=int, default=4, help="volumes of random data")
    parser.add_argument("--volume-mib", type=int, default=256, help="MiB of random data per big volume")
    parser.add_argument("--small-files", type=int, default=50_000, help="files in the small-files volume (0: none)")
    parser.add_argument("--small-kib", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
    parser.add_argument("--max-concurrent", type=int, default=5, help="the node agent's restic processes at once")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of backup and restore; medians are reported")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary directory (default: $TMPDIR)")
    args = parser.parse_args(argv)
    if args.big_volumes < 0 or args.small_files < 0:
        parser.error("--big-volumes and --small-files must be >= 0")
    if min(args.volume_mib, args.max_concurrent, args.repeat) < 1:
        parser.error("--volume-mib, --max-concurrent and --repeat must be >= 1")
    if args.big_volumes + (1 if args.small_files else 0) == 0:
        parser.error("nothing to back up: give --big-volumes or --small-files")
    if not 1 <= args.small_kib[0] <= args.small_kib[1]:
        parser.error("--small-kib MIN MAX needs 1 <= MIN <= MAX")
    if shutil.which("restic") is None:
        raise SystemExit("restic is not on PATH; install it (Debian package restic)")

    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="arkd-bench-restic-", dir=args.workdir))
    env = Envtest()
    bench = ResticBench(env, work, args)
    try:
        env.start()
        result = asyncio.run(bench.run())
    except BenchmarkError as exc:
        raise SystemExit(f"benchmark failed: {exc}\n{bench.log_tails()}") from None
    finally:
        bench.stop()
        env.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
