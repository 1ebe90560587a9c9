"""Benchmark: backup and restore of Kubernetes resources through arkd, against the raw floor.

Run on demand (pytest does not collect it):

    .venv/bin/python -m tests.benchmarks.bench_backup_restore [--configmaps 5000] [--secrets 500]
        [--create-concurrency 64] [--profile DIR]

It starts its own etcd + kube-apiserver (tests/envtest/harness.py), fills one namespace with
ConfigMaps and Secrets, and runs the real `ark server` process with a local-directory store. In one
run it measures:

- backup: a Backup of the namespace, from its creation to phase Completed (watch event time);
  objects = items in the tarball. Floor: a paginated list (limit 500) of the same objects through
  KubeClient plus gzip of their compact JSON, in-process.
- restore: a Restore of that backup with namespaceMapping into a fresh namespace, from creation to
  Completed. Floor: concurrent creates of the same objects into another fresh namespace, at the
  restore controller's concurrency (ServerSettings.restore_concurrency).

Each is measured --repeat times (arkd and floor alternating which goes first) and the medians are
reported. Prints one JSON object: objects, backup_seconds, backup_objects_per_s,
backup_floor_objects_per_s, backup_ratio, restore_seconds, restore_objects_per_s,
restore_floor_objects_per_s, restore_ratio (target: both ratios >= 0.7), plus the fixed cost of a
backup and a restore of an empty namespace, every sample, and the median CPU seconds each process
(bench, apiserver, etcd, ark server) spent in each phase. With --profile DIR, `ark server` runs
under cProfile (wall-clock, main thread only); the profile is saved in DIR and its top functions are
printed to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import pstats
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from arkd.api.constants import API_VERSION, DEFAULT_NAMESPACE
from arkd.config import ServerSettings
from arkd.controllers.resources import BACKUPS, CONFIGS, RESTORES
from arkd.kube.client import KubeClient
from arkd.kube.errors import Gone
from arkd.kube.resource import CONFIGMAPS, NAMESPACES, SECRETS, Resource
from tests.envtest.harness import Envtest
from tests.support.processes import ArkProcess, process_env

Obj = dict[str, Any]
T = TypeVar("T")

TERMINAL_PHASES = frozenset({"Completed", "PartiallyFailed", "Failed", "FailedValidation"})
WAIT_TIMEOUT = 1800.0
PAGE_SIZE = 500


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says what went wrong."""


# --------------------------------------------------------------------------- watching objects


class PhaseWatcher:
    """Watches one resource and records when each object was first seen in each `status.phase`.

    Times are `time.perf_counter()` at the moment the watch event arrived, so two watchers in the
    same process measure intervals on the same clock. `on_object` is called for every object seen.
    """

    def __init__(
        self,
        kube: KubeClient,
        res: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        on_object: Callable[[Obj], None] | None = None,
    ) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_object = on_object
        self.objects: dict[str, Obj] = {}
        self.deleted: dict[str, float] = {}
        self.first_seen: dict[str, dict[str, float]] = {}
        self._changed = asyncio.Event()
        self._rv = ""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PhaseWatcher:
        await self._relist()
        self._task = asyncio.create_task(self._run(), name=f"watch:{self.res.plural}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _relist(self) -> None:
        page = await self.kube.list_page(self.res, self.namespace, label_selector=self.label_selector, limit=None)
        for item in page["items"]:
            self._observe(item)
        self._rv = str(page["metadata"]["resourceVersion"])

    async def _run(self) -> None:
        while True:
            try:
                async for event in self.kube.watch(
                    self.res,
                    self.namespace,
                    resource_version=self._rv,
                    label_selector=self.label_selector,
                    timeout_seconds=600,
                ):
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        self._rv = str(rv)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif event["type"] == "DELETED":
                        name = str(obj["metadata"]["name"])
                        self.objects.pop(name, None)
                        self.deleted.setdefault(name, time.perf_counter())
                        self._notify()
            except Gone:
                await self._relist()

    def _observe(self, obj: Obj) -> None:
        now = time.perf_counter()
        name = str(obj["metadata"]["name"])
        phase = str((obj.get("status") or {}).get("phase") or "New")
        self.objects[name] = obj
        self.first_seen.setdefault(name, {}).setdefault(phase, now)
        if self.on_object is not None:
            self.on_object(obj)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def phase(self, name: str) -> str | None:
        obj = self.objects.get(name)
        return None if obj is None else str((obj.get("status") or {}).get("phase") or "New")

    async def wait_until(self, predicate: Callable[[], T | None], what: str, timeout: float = WAIT_TIMEOUT) -> T:
        """The first non-None value of `predicate()`, re-checked on every change."""
        deadline = time.monotonic() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # a failed watch raises here
                raise BenchmarkError(f"the watch of {self.res.plural} ended while waiting for {what}")
            value = predicate()
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchmarkError(f"timed out after {timeout:.0f}s waiting for {what}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 5.0))
            except TimeoutError:
                pass

    async def wait_terminal(self, name: str, what: str, timeout: float = WAIT_TIMEOUT) -> tuple[str, float, Obj]:
        """(phase, perf_counter time first seen in it, object) once `name` reaches a terminal phase."""

        def terminal() -> tuple[str, float, Obj] | None:
            phase = self.phase(name)
            if phase in TERMINAL_PHASES:
                return phase, self.first_seen[name][phase], self.objects[name]
            return None

        return await self.wait_until(terminal, what, timeout)


# --------------------------------------------------------------------------- CPU accounting

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of reaped children) of a live process, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / _CLK_TCK, (cutime + cstime) / _CLK_TCK


class CpuMeter:
    """CPU seconds spent by named processes (and this one) between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int], *, children: Iterable[str] = ()) -> None:
        self.pids = pids
        self.children = set(children)  # also report the CPU of their reaped children (restic)
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        # bench_children: processes this one started and reaped (raw restic runs).
        out = {"bench": time.process_time(), "bench_children": children.ru_utime + children.ru_stime}
        for name, pid in self.pids.items():
            own, reaped = process_cpu_seconds(pid)
            out[name] = own
            if name in self.children:
                out[f"{name}_children"] = reaped
        return out

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {k: round(after[k] - self._before.get(k, 0.0), 2) for k in after}


def load_average() -> float:
    """The 1-minute load average: other work on the machine skews every figure, so it is reported."""
    return os.getloadavg()[0]


def envtest_pids(env: Envtest) -> dict[str, int]:
    """The apiserver and etcd processes of an Envtest (for CPU accounting)."""
    pids: dict[str, int] = {}
    for name, attr in (("apiserver", "_apiserver"), ("etcd", "_etcd")):
        proc = getattr(env, attr, None)
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            pids[name] = proc.pid
    return pids


# --------------------------------------------------------------------------- arkd processes


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the processes this run started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


class ProfiledArkProcess(ArkProcess):
    """An arkd process run under cProfile; the profile is written when it exits after SIGTERM."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, profile: Path) -> None:
        super().__init__(name, args, env, log_dir)
        self.profile = profile

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ArkProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        argv = [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "arkd", *self.args]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            self.wait_ready(timeout)
        return self


def start_ark(name: str, args: list[str], env: dict[str, str], log_dir: Path, profile_dir: Path | None) -> ArkProcess:
    if profile_dir is None:
        return ArkProcess(name, args, env, log_dir).start()
    profile_dir.mkdir(parents=True, exist_ok=True)
    return ProfiledArkProcess(name, args, env, log_dir, profile_dir / f"{name}.prof").start()


def print_profile(path: Path, limit: int = 30) -> None:
    """The top functions of a cProfile dump, by own time and by cumulative time, to stderr."""
    if not path.exists():
        print(f"no profile at {path} (did the process exit cleanly?)", file=sys.stderr)
        return
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"--- {path.name}: top {limit} by {sort} ---\n{out.getvalue()}", file=sys.stderr)


def local_config(store_dir: Path, restic_dir: Path | None = None) -> Obj:
    """Config `default`: a local directory as the bucket (and optionally for restic repositories)."""
    provider: Obj = {"name": "local", "bucket": "ark", "config": {"path": str(store_dir)}}
    if restic_dir is not None:
        provider["resticLocation"] = str(restic_dir)
    return {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": DEFAULT_NAMESPACE},
        "backupStorageProvider": provider,
        "backupSyncPeriod": "60m",
        "gcSyncPeriod": "60m",
    }


def failure_detail(obj: Obj) -> str:
    status = obj.get("status") or {}
    parts = [f"{k}={status[k]!r}" for k in ("failureReason", "validationErrors", "errors", "warnings") if k in status]
    return ", ".join(parts) or "no status detail"


async def create_namespace(kube: KubeClient, name: str) -> None:
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def run_bounded(items: Iterable[T], concurrency: int, fn: Callable[[T], Awaitable[None]]) -> None:
    """`fn` over `items` with at most `concurrency` calls in flight (workers pulling from one iterator)."""
    pending: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in pending:
            await fn(item)

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, concurrency)):
            tg.create_task(worker())


# --------------------------------------------------------------------------- the workload


def configmap(i: int) -> Obj:
    # Text values of a realistic size; random so gzip has real work to do.
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i:05d}", "labels": {"app": "bench", "shard": str(i % 16)}},
        "data": {
            "settings.yaml": "value: " + base64.b64encode(os.urandom(384)).decode(),
            "index": str(i),
        },
    }


def secret(i: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": f"secret-{i:04d}", "labels": {"app": "bench"}},
        "data": {
            "password": base64.b64encode(os.urandom(32)).decode(),
            "token": base64.b64encode(os.urandom(256)).decode(),
        },
    }


async def populate(kube: KubeClient, namespace: str, configmaps: int, secrets_: int, concurrency: int) -> float:
    objects = [(CONFIGMAPS, configmap(i)) for i in range(configmaps)] + [(SECRETS, secret(i)) for i in range(secrets_)]
    started = time.perf_counter()

    async def create(item: tuple[Resource, Obj]) -> None:
        await kube.create(item[0], item[1], namespace)

    await run_bounded(objects, concurrency, create)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the floors


async def backup_floor(kube: KubeClient, namespace: str) -> tuple[list[tuple[Resource, Obj]], float, int]:
    """List the objects page by page and gzip their compact JSON: (objects, seconds, gzip bytes)."""
    started = time.perf_counter()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    size = 0
    objects: list[tuple[Resource, Obj]] = []
    for res in (CONFIGMAPS, SECRETS):
        token: str | None = None
        while True:
            page = await kube.list_page(res, namespace, limit=PAGE_SIZE, continue_=token)
            for item in page["items"]:
                size += len(compressor.compress(orjson.dumps(item)))
                objects.append((res, item))
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                break
    size += len(compressor.flush())
    return objects, time.perf_counter() - started, size


def for_create(obj: Obj) -> Obj:
    """The object without the fields the API server sets, as any restore must send it."""
    meta = obj["metadata"]
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    body["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}
    return body


async def restore_floor(
    kube: KubeClient, objects: list[tuple[Resource, Obj]], namespace: str, concurrency: int
) -> float:
    """Create the namespace and every object in it, `concurrency` creates in flight: seconds."""
    bodies = [(res, for_create(obj)) for res, obj in objects]
    started = time.perf_counter()
    await create_namespace(kube, namespace)

    async def create(item: tuple[Resource, Obj]) -> None:
        await kube.create(item[0], item[1], namespace)

    await run_bounded(bodies, concurrency, create)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- through arkd


def tarball_items(store_dir: Path, backup: str) -> int:
    found = sorted(store_dir.rglob(f"{backup}.tar.gz"))
    if not found:
        raise BenchmarkError(f"no tarball {backup}.tar.gz under {store_dir}")
    with tarfile.open(found[0], "r:gz") as tar:
        return sum(1 for m in tar if m.isfile() and m.name.startswith("resources/"))


async def arkd_run(kube: KubeClient, res: Resource, body: Obj) -> tuple[float, float, Obj]:
    """Create a Backup or Restore; (seconds to InProgress, seconds to Completed, final object).

    Times run from just before the create call to the watch events that showed the phases.
    """
    name = str(body["metadata"]["name"])
    what = f"{body['kind']} {name}"
    async with PhaseWatcher(kube, res, DEFAULT_NAMESPACE) as watcher:
        started = time.perf_counter()
        await kube.create(res, body, DEFAULT_NAMESPACE)
        phase, when, obj = await watcher.wait_terminal(name, f"{what} to finish")
        claimed = watcher.first_seen[name].get("InProgress", when)
    if phase != "Completed":
        raise BenchmarkError(f"{what} ended {phase}: {failure_detail(obj)}")
    return claimed - started, when - started, obj


async def arkd_backup(kube: KubeClient, namespace: str, name: str) -> tuple[float, float, Obj]:
    """A Backup of `namespace` through arkd (see arkd_run)."""
    body = {
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE},
        "spec": {"includedNamespaces": [namespace]},
    }
    return await arkd_run(kube, BACKUPS, body)


async def arkd_restore(
    kube: KubeClient, backup: str, name: str, mapping: dict[str, str] | None = None
) -> tuple[float, float, Obj]:
    """A Restore of `backup` through arkd (see arkd_run)."""
    spec: Obj = {"backupName": backup}
    if mapping:
        spec["namespaceMapping"] = mapping
    body = {
        "apiVersion": API_VERSION,
        "kind": "Restore",
        "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE},
        "spec": spec,
    }
    return await arkd_run(kube, RESTORES, body)


async def count_objects(kube: KubeClient, namespace: str) -> int:
    total = 0
    for res in (CONFIGMAPS, SECRETS):
        total += len(await kube.list(res, namespace))
    return total


# --------------------------------------------------------------------------- the benchmark


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


async def bench(env: Envtest, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = work / "store"
    store.mkdir()
    concurrency = ServerSettings().restore_concurrency
    source = f"bench-src-{secrets.token_hex(3)}"
    expected = args.configmaps + args.secrets
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "backup_floor",
            "backup",
            "backup_claim",
            "restore_floor",
            "restore",
            "restore_claim",
            "empty_backup",
            "empty_restore",
        )
    }
    cpu_samples: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("backup_floor", "backup", "restore_floor", "restore")
    }
    load_before = load_average()
    async with await KubeClient.connect(env.kubeconfig) as kube:
        await create_namespace(kube, source)
        create_seconds = await populate(kube, source, args.configmaps, args.secrets, args.create_concurrency)
        await kube.create(CONFIGS, local_config(store), DEFAULT_NAMESPACE)
        server = start_ark("ark-server", ["server"], process_env(env.kubeconfig), work, args.profile)
        try:
            assert server.proc is not None
            cpu = CpuMeter({**envtest_pids(env), "ark_server": server.proc.pid})
            objects: list[tuple[Resource, Obj]] = []
            gzip_size = 0

            async def floor_backup() -> None:
                nonlocal objects, gzip_size
                objects, seconds, gzip_size = await backup_floor(kube, source)
                if len(objects) != expected:
                    raise BenchmarkError(f"listed {len(objects)} objects in {source}, expected {expected}")
                samples["backup_floor"].append(seconds)

            async def through_arkd_backup(i: int) -> None:
                claim, seconds, _ = await arkd_backup(kube, source, f"bench-backup-{i}")
                samples["backup_claim"].append(claim)
                samples["backup"].append(seconds)

            async def floor_restore(i: int) -> None:
                target = f"bench-floor-{i}-{secrets.token_hex(3)}"
                samples["restore_floor"].append(await restore_floor(kube, objects, target, concurrency))

            async def through_arkd_restore(i: int) -> None:
                target = f"bench-restore-{i}-{secrets.token_hex(3)}"
                claim, seconds, restore = await arkd_restore(
                    kube, "bench-backup-0", f"bench-restore-{i}", {source: target}
                )
                restored = await count_objects(kube, target)
                if restored != expected:
                    raise BenchmarkError(
                        f"Restore bench-restore-{i} left {restored} ConfigMaps and Secrets in {target}, "
                        f"expected {expected} ({failure_detail(restore)})"
                    )
                samples["restore_claim"].append(claim)
                samples["restore"].append(seconds)

            async def measured(kind: str, run: Awaitable[None]) -> None:
                cpu.start()
                await run
                cpu_samples[kind].append(cpu.stop())

            # Alternate which goes first, so drift (a growing etcd, a warming cache) hits both.
            for i in range(args.repeat):
                pair = [("backup_floor", floor_backup()), ("backup", through_arkd_backup(i))]
                for kind, run in pair if i % 2 == 0 else reversed(pair):
                    await measured(kind, run)
            items = tarball_items(store, "bench-backup-0")
            for i in range(args.repeat):
                pair = [("restore_floor", floor_restore(i)), ("restore", through_arkd_restore(i))]
                for kind, run in pair if i % 2 == 0 else reversed(pair):
                    await measured(kind, run)
            # The fixed cost of one backup and one restore, whatever their size: an empty namespace.
            empty = f"bench-empty-{secrets.token_hex(3)}"
            await create_namespace(kube, empty)
            for i in range(args.repeat):
                samples["empty_backup"].append((await arkd_backup(kube, empty, f"bench-empty-{i}"))[1])
                restored = await arkd_restore(kube, "bench-empty-0", f"bench-empty-{i}", {empty: f"{empty}-{i}"})
                samples["empty_restore"].append(restored[1])
        finally:
            code = server.stop()
            if code != 0:
                print(f"ark server exited {code}:\n{server.log_tail()}", file=sys.stderr)
    if args.profile is not None:
        print_profile(args.profile / "ark-server.prof")

    backup_seconds = median(samples["backup"])
    floor_backup_seconds = median(samples["backup_floor"])
    restore_seconds = median(samples["restore"])
    floor_restore_seconds = median(samples["restore_floor"])
    backup_rate = items / backup_seconds
    backup_floor_rate = len(objects) / floor_backup_seconds
    restore_rate = items / restore_seconds
    restore_floor_rate = len(objects) / floor_restore_seconds
    return {
        "objects": items,
        "configmaps": args.configmaps,
        "secrets": args.secrets,
        "backup_seconds": round(backup_seconds, 3),
        "backup_objects_per_s": round(backup_rate, 1),
        "backup_floor_seconds": round(floor_backup_seconds, 3),
        "backup_floor_objects_per_s": round(backup_floor_rate, 1),
        "backup_ratio": round(backup_rate / backup_floor_rate, 3),
        "restore_seconds": round(restore_seconds, 3),
        "restore_objects_per_s": round(restore_rate, 1),
        "restore_floor_seconds": round(floor_restore_seconds, 3),
        "restore_floor_objects_per_s": round(restore_floor_rate, 1),
        "restore_ratio": round(restore_rate / restore_floor_rate, 3),
        "restore_concurrency": concurrency,
        "repeat": args.repeat,
        "empty_namespace_seconds": {
            "backup": round(median(samples["empty_backup"]), 3),
            "restore": round(median(samples["empty_restore"]), 3),
        },
        "seconds_to_in_progress": {
            "backup": round(median(samples["backup_claim"]), 3),
            "restore": round(median(samples["restore_claim"]), 3),
        },
        "samples_seconds": {k: [round(v, 3) for v in vs] for k, vs in samples.items()},
        "cpu_seconds_median": {
            kind: {k: round(median([c[k] for c in runs]), 2) for k in runs[0]}
            for kind, runs in cpu_samples.items()
            if runs
        },
        "floor_gzip_bytes": gzip_size,
        "create_seconds": round(create_seconds, 3),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(load_average(), 2)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configmaps", type=int, default=5000)
    parser.add_argument("--secrets", type=int, default=500)
    parser.add_argument("--create-concurrency", type=int, default=64, help="creates in flight while populating")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each kind; medians are reported")
    parser.add_argument("--profile", type=Path, help="run `ark server` under cProfile; keep the profile in DIR")
    args = parser.parse_args(argv)
    if args.configmaps < 0 or args.secrets < 0 or args.configmaps + args.secrets == 0:
        parser.error("--configmaps and --secrets must be >= 0 and not both 0")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="arkd-bench-br-"))
    env = Envtest()
    try:
        env.start()
        result = asyncio.run(bench(env, work, args))
    except BenchmarkError as exc:
        log = work / "ark-server.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
        raise SystemExit(f"benchmark failed: {exc}\n--- ark server log (last lines) ---\n{tail}") from None
    finally:
        env.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
