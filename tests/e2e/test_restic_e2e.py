"""End to end: restic pod volume backups with the real `ark server`, `ark restic server`, CLI and restic.

The test plays the scheduler and the kubelet (tests/support/kubelet.py); everything else is the
real thing: the apiserver, both arkd processes, the `ark` and `kubectl` commands, restic, and a
directory or moto's S3 as the storage. Helpers here are shared by the restore and metrics tests.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest.harness import Envtest
from tests.support.kubelet import (
    Kubelet,
    assert_same_tree,
    big_files,
    eventually,
    key_forms,
    user_files,
)
from tests.support.processes import ArkProcess, ark, process_env

Obj = dict[str, Any]
ARK_NS = "heptio-ark"
VOLUMES_ANNOTATION = "backup.ark.heptio.com/backup-volumes"
TERMINAL = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")


# ------------------------------------------------------------------------------------ the site


@dataclass
class Site:
    """Ark installed on the test cluster: a Config `default`, one node with a kubelet, the processes."""

    envtest: Envtest
    namespace: str
    work: Path
    kubelet: Kubelet
    env: dict[str, str]
    restic_env: dict[str, str]
    restic_prefix: str
    store: Path | None = None
    s3: Any = None
    bucket: str = ""
    restic_bucket: str = ""
    procs: list[ArkProcess] = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.kubelet.node

    def identifier(self, namespace: str | None = None) -> str:
        """The restic repository of a volume namespace, as Ark names it."""
        return f"{self.restic_prefix}/{namespace or self.namespace}"

    # -- processes ------------------------------------------------------------------------------
    def server(self, *args: str, name: str = "ark-server") -> ArkProcess:
        proc = ArkProcess(name, ["server", *args], self.env, self.work)
        self.procs.append(proc)
        return proc

    def agent(self, name: str = "ark-restic", node: str | None = None) -> ArkProcess:
        args = ["restic", "server", "--node-name", node or self.node, "--host-pods-dir", str(self.kubelet.host_pods)]
        proc = ArkProcess(name, args, self.env, self.work)
        self.procs.append(proc)
        return proc

    def run(self, *procs: ArkProcess) -> tuple[ArkProcess, ...]:
        """Start the processes side by side and wait until each is ready."""
        for proc in procs:
            proc.start(wait_ready=False)
        for proc in procs:
            proc.wait_ready()
        return procs

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.procs)

    # -- commands a user types ------------------------------------------------------------------
    def ark(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = ark(*args, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ark {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{self.logs()}"
            )
        return proc

    def kubectl(self, *args: str) -> str:
        return self.envtest.kubectl(*args).stdout

    def kubectl_json(self, *args: str) -> Obj:
        out: Obj = json.loads(self.kubectl(*args, "-o", "json"))
        return out

    def restic(self, key: str, *args: str) -> subprocess.CompletedProcess[str]:
        """restic run by hand on the namespace's repository, with the key the user gave Ark."""
        password = self.work / "restic-password"
        password.write_text(key)
        password.chmod(0o600)
        proc = subprocess.run(
            ["restic", "--repo", self.identifier(), "--password-file", str(password), "--no-cache", *args],
            capture_output=True, text=True, env=self.restic_env, timeout=300, check=False,
        )
        assert proc.returncode == 0, f"restic {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
        return proc

    # -- state --------------------------------------------------------------------------------
    def backup(self, name: str) -> Obj:
        return self.kubectl_json("-n", ARK_NS, "get", "backup", name)

    def pvbs(self, backup: str) -> list[Obj]:
        items: list[Obj] = self.kubectl_json(
            "-n", ARK_NS, "get", "podvolumebackups", "-l", f"ark.heptio.com/backup-name={backup}"
        )["items"]
        return items

    def wait_backup(self, name: str) -> Obj:
        try:
            return eventually(f"backup {name} to finish",
                              lambda: b if phase(b := self.backup(name)) in TERMINAL else None, 180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None


def phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or "New")


def new_key() -> str:
    """A key only this test knows, easy to search for."""
    return f"e2e-key-{secrets.token_urlsafe(32)}"


def apply_config(envtest: Envtest, provider: Obj) -> None:
    config = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Config",
        "metadata": {"name": "default", "namespace": ARK_NS},
        "backupStorageProvider": provider,
        "backupSyncPeriod": "1m",
        "gcSyncPeriod": "1m",
    }
    envtest.kubectl("apply", "-f", "-", input=json.dumps(config))


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
    env.update(extra)
    return env


@contextlib.contextmanager
def own_site(envtest: Envtest, work: Path) -> Iterator[Site]:
    """A local site with a namespace of its own, for fixtures shared by several tests."""
    namespace = f"t-{secrets.token_hex(4)}"
    envtest.kubectl("create", "namespace", namespace)
    site = make_local_site(envtest, namespace, work)
    try:
        yield site
    finally:
        teardown(site)
        envtest.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def make_local_site(envtest: Envtest, namespace: str, work: Path) -> Site:
    """Ark on a local-directory Config: backups in one directory, restic repositories in another."""
    store, repos, tmp = work / "bucket", work / "restic-repos", work / "tmp"
    for d in (store, repos, tmp):
        d.mkdir()
    apply_config(envtest, {"name": "local", "bucket": "ark", "config": {"path": str(store)},
                           "resticLocation": str(repos)})
    return Site(
        envtest=envtest,
        namespace=namespace,
        work=work,
        kubelet=Kubelet(envtest, f"node-{namespace}", work / "host_pods"),
        # TMPDIR: where the node agent's restic password files live while restic runs.
        env=process_env(envtest.kubeconfig, TMPDIR=str(tmp)),
        restic_env=clean_env({}),
        restic_prefix=str(repos),
        store=store / "ark",
    )


@pytest.fixture
def local_site(envtest: Envtest, namespace: str, tmp_path: Path) -> Iterator[Site]:
    site = make_local_site(envtest, namespace, tmp_path)
    try:
        yield site
    finally:
        teardown(site)


@pytest.fixture
def s3_site(envtest: Envtest, namespace: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    """Ark on moto's S3: the backup bucket and a second bucket for restic; both processes get the keys."""
    s3 = request.getfixturevalue("s3")
    suffix = secrets.token_hex(4)
    bucket, restic_bucket = f"ark-{suffix}", f"restic-{suffix}"
    s3.make_bucket(bucket)
    s3.make_bucket(restic_bucket)
    (tmp_path / "tmp").mkdir()
    apply_config(envtest, {"name": "aws", "bucket": bucket, "resticLocation": restic_bucket,
                           "config": s3.store_config()})
    site = Site(
        envtest=envtest,
        namespace=namespace,
        work=tmp_path,
        kubelet=Kubelet(envtest, f"node-{namespace}", tmp_path / "host_pods"),
        env=process_env(envtest.kubeconfig, TMPDIR=str(tmp_path / "tmp"), **s3.env()),
        restic_env=clean_env(s3.env()),
        restic_prefix=f"s3:{s3.endpoint}/{restic_bucket}",
        s3=s3,
        bucket=bucket,
        restic_bucket=restic_bucket,
    )
    try:
        yield site
    finally:
        teardown(site)


def teardown(site: Site) -> None:
    """Stop what still runs (SIGTERM must end it with exit code 0) and remove what the test left."""
    unclean = []
    for proc in reversed(site.procs):
        running = proc.proc is not None and proc.proc.poll() is None
        try:
            code = proc.stop()
        except AssertionError as exc:
            unclean.append(str(exc))
            continue
        if running and code != 0:
            unclean.append(f"{proc.name} exited {code} on SIGTERM:\n{proc.log_tail()}")
    site.envtest.kubectl("-n", ARK_NS, "delete", "config", "default", "--ignore-not-found")
    # Later servers would otherwise keep maintaining (and re-creating) this test's repository.
    site.envtest.kubectl("-n", ARK_NS, "delete", "resticrepository", site.namespace, "--ignore-not-found",
                         "--wait=false")
    # Large volumes and repositories are not worth keeping between sessions.
    for d in ("host_pods", "restic-repos", "restored"):
        shutil.rmtree(site.work / d, ignore_errors=True)
    assert not unclean, "\n".join(unclean)


@pytest.fixture(params=["local", "s3"])
def site(request: pytest.FixtureRequest) -> Site:
    out: Site = request.getfixturevalue(f"{request.param}_site")
    return out


# ------------------------------------------------------------------------------------ helpers


def volume_blocks(described: str) -> dict[str, dict[str, str]]:
    """`ark backup|restore describe --details`: {"ns/pod: volume": {"Phase": ..., "Snapshot": ...}}."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in described.splitlines():
        if line.startswith("    ") and current is not None:
            key, _, value = line.strip().partition(":")
            current[key] = value.strip()
        elif line.startswith("  ") and not line.startswith("   ") and "/" in line.partition(":")[0]:
            current = blocks.setdefault(line.strip(), {})
        else:
            current = None
    return blocks


def snapshots_by_id(site: Site, key: str) -> list[Obj]:
    out: list[Obj] = json.loads(site.restic(key, "snapshots", "--json").stdout)
    return out


def find_snapshot(snapshots: list[Obj], snapshot_id: str) -> Obj:
    found = [s for s in snapshots if s["id"].startswith(snapshot_id) or s.get("short_id") == snapshot_id]
    assert len(found) == 1, f"snapshot {snapshot_id} not in {[s['short_id'] for s in snapshots]}"
    return found[0]


def tags(snapshot: Obj) -> dict[str, str]:
    return dict(t.split("=", 1) for t in snapshot.get("tags") or [])


def processes() -> Iterator[tuple[int, list[bytes], bytes]]:
    """(pid, argv, environment block) of every process this user can read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # exited meanwhile
        yield int(entry.name), argv, environ


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def restic_backups_of(proc: ArkProcess) -> dict[int, Path]:
    """The `restic backup` processes the arkd process runs now, with the directory each one reads."""
    assert proc.proc is not None
    out: dict[int, Path] = {}
    for pid in descendants(proc.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if argv and argv[0].endswith(b"restic") and b"backup" in argv:
            out[pid] = cwd
    return out


def crash(proc: ArkProcess) -> None:
    """SIGKILL the process and everything it started, as when its container is killed."""
    assert proc.proc is not None
    children = descendants(proc.proc.pid)
    proc.kill()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    eventually("the killed processes to be gone", lambda: all(gone(pid) for pid in children))


def events_about(site: Site, name: str) -> list[Obj]:
    items: list[Obj] = site.kubectl_json("get", "events", "-A")["items"]
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]


def completed_pvbs(site: Site, backup: str) -> list[Obj] | None:
    pvbs = site.pvbs(backup)
    return pvbs if pvbs and all(phase(p) == "Completed" for p in pvbs) else None


def start_large_backup(site: Site, key: str, name: str, random_mib: int = 192) -> tuple[ArkProcess, ArkProcess, Path]:
    """Both processes, and a backup whose volume `data` is large; returns once restic reads `data`."""
    pod = site.kubelet.run_pod(site.namespace, "db", {"data": big_files(random_mib, 256), "logs": user_files(4)},
                               annotations={VOLUMES_ANNOTATION: "data,logs"})
    data_dir = site.kubelet.volume_dir(pod["metadata"]["uid"], "data")
    site.ark("restic", "init-repository", "--namespace", site.namespace, "--key-data", key)
    server, agent = site.run(site.server(), site.agent())
    site.ark("backup", "create", name, "--include-namespaces", site.namespace)
    eventually("restic backing up volume data", lambda: data_dir in restic_backups_of(agent).values(), interval=0.02)
    return server, agent, data_dir


# ------------------------------------------------------------------------------------ the tests


def test_seed_run_backs_up_annotated_volumes_into_restic_byte_for_byte(site: Site) -> None:
    """The seed document's run, command for command, on a local directory and on S3."""
    ns, kubelet = site.namespace, site.kubelet
    site.run(site.server(), site.agent())
    pod = kubelet.run_pod(ns, "web", {"data": user_files(1), "logs": user_files(2, size=8192)})
    pod_uid = pod["metadata"]["uid"]
    key = new_key()
    backup = f"{ns}-b1"

    out = site.ark("restic", "init-repository", "--namespace", ns, "--key-data", key)
    assert f"Created the restic key of namespace {ns}" in out.stdout
    site.kubectl("-n", ns, "annotate", "pod/web", f"{VOLUMES_ANNOTATION}=data,logs")
    out = site.ark("backup", "create", backup, "--include-namespaces", ns, "--wait")
    assert f"Backup {backup} finished: Completed" in out.stdout

    listed = yaml.safe_load(
        site.kubectl("-n", ARK_NS, "get", "podvolumebackups", "-l", f"ark.heptio.com/backup-name={backup}",
                     "-o", "yaml")
    )["items"]
    by_volume = {p["spec"]["volume"]: p for p in listed}
    assert sorted(by_volume) == ["data", "logs"]
    for pvb in listed:
        assert pvb["status"]["phase"] == "Completed", pvb["status"]
        assert pvb["status"]["snapshotID"]
        assert pvb["spec"]["repoIdentifier"] == site.identifier()

    backup_uid = site.backup(backup)["metadata"]["uid"]
    snapshots = snapshots_by_id(site, key)
    assert len(snapshots) == 2
    for volume, pvb in by_volume.items():
        snapshot = find_snapshot(snapshots, pvb["status"]["snapshotID"])
        assert tags(snapshot) == {"backup": backup, "backup-uid": backup_uid, "pod": "web", "pod-uid": pod_uid,
                                  "ns": ns, "volume": volume}
        target = site.work / "restored" / volume
        site.restic(key, "restore", snapshot["id"], "--target", str(target))
        assert_same_tree(kubelet.volume_dir(pod_uid, volume), target)

    described = site.ark("backup", "describe", backup, "--details").stdout
    assert "Phase:  Completed" in described and "Completed:  2" in described
    blocks = volume_blocks(described)
    assert sorted(blocks) == [f"{ns}/web: data", f"{ns}/web: logs"]
    for volume, pvb in by_volume.items():
        block = blocks[f"{ns}/web: {volume}"]
        assert block["Phase"] == "Completed" and block["Node"] == site.node
        assert block["Snapshot"] == pvb["status"]["snapshotID"]
        assert block["Duration"].endswith("s") and block["Duration"][0].isdigit()
        done, _, total = block["Progress"].partition(" of ")
        assert done == total and done != "-", block

    # The backup itself sits where Ark 0.9 puts it, the repositories beside it.
    if site.store is not None:
        assert (site.store / backup / "ark-backup.json").is_file()
        assert Path(site.identifier(), "config").is_file()
    else:
        s3 = site.s3.client()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=site.bucket, Prefix=f"{backup}/")["Contents"]]
        assert f"{backup}/ark-backup.json" in keys and f"{backup}/{backup}.tar.gz" in keys
        repo = s3.list_objects_v2(Bucket=site.restic_bucket, Prefix=f"{ns}/")["Contents"]
        assert f"{ns}/config" in [o["Key"] for o in repo]


def test_restic_key_never_reaches_argv_environment_logs_events_or_status(local_site: Site) -> None:
    site, ns, kubelet = local_site, local_site.namespace, local_site.kubelet
    key = new_key()
    leaks = key_forms(key.encode())
    kubelet.run_pod(ns, "db", {"data": big_files(192, 256), "logs": user_files(3)},
                    annotations={VOLUMES_ANNOTATION: "data,logs"})
    site.ark("restic", "init-repository", "--namespace", ns, "--key-data", key)
    server, agent = site.run(site.server(), site.agent())
    backup = f"{ns}-key"
    site.ark("backup", "create", backup, "--include-namespaces", ns)

    # Every process, again and again, for as long as the backup runs.
    seen_restic: set[int] = set()
    scans = 0
    while phase(site.backup(backup)) not in TERMINAL:
        running = restic_backups_of(agent)
        for pid, argv, environ in processes():
            for leak in leaks:
                assert not any(leak in arg for arg in argv), f"the key is in the argv of pid {pid}: {argv[:3]}"
                assert leak not in environ, f"the key is in the environment of pid {pid} ({argv[:3]})"
        # Only restic processes that were still there after the scan were certainly scanned.
        for pid in set(running) & set(restic_backups_of(agent)):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # it just ended
            assert any(a.startswith(b"--password-file=") for a in argv), argv
            seen_restic.add(pid)
        scans += 1
    assert seen_restic, f"no restic backup was running during {scans} scans of /proc; the scan proved nothing"
    assert phase(site.backup(backup)) == "Completed", site.logs()

    assert b"running restic backup" in agent.log_path.read_bytes()
    for proc in (server, agent):
        text = proc.log_path.read_bytes()
        assert not any(leak in text for leak in leaks), f"the key is in the log of {proc.name}"
    events = site.kubectl("get", "events", "-A", "-o", "json").encode()
    assert b"restic backup started" in events
    assert not any(leak in events for leak in leaks), "the key is in an Event"
    objects = site.kubectl("get", "backups,podvolumebackups,restores,podvolumerestores,resticrepositories,configs",
                           "-A", "-o", "json")
    objects += site.kubectl("-n", ns, "get", "pods,secrets,configmaps", "-o", "json")
    assert not any(leak in objects.encode() for leak in leaks), "the key is in an object"
    # Nothing of it left on disk either: the password files are gone, the backup does not carry the Secret.
    temp = site.work / "tmp"
    # (A running process keeps an empty session directory with its lock file; no password file stays.)
    left = [p for p in temp.glob("arkd-restic-*/**/*") if p.is_file() and p.name != ".lock"]
    assert not left, f"restic password files left behind: {left}"
    assert site.store is not None
    for path in site.store.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            data = gzip.decompress(data) if path.suffix == ".gz" else data
            assert not any(leak in data for leak in leaks), f"the key is in {path}"


def test_sigkill_of_agent_and_server_mid_backup_then_restarts_complete_it(local_site: Site) -> None:
    site, key = local_site, new_key()
    backup = f"{site.namespace}-kill"
    server, agent, data_dir = start_large_backup(site, key, backup)

    crash(agent)
    data_pvb = next(p for p in site.pvbs(backup) if p["spec"]["volume"] == "data")
    assert phase(data_pvb) == "InProgress", "a killed agent must leave its PodVolumeBackup to the next one"
    assert phase(site.backup(backup)) == "InProgress"
    server.kill()  # while it waits for the PodVolumeBackups

    # The restarted agent finishes the volumes on its own; nobody finalises the backup meanwhile.
    site.run(site.agent("ark-restic-2"))
    pvbs = eventually("the restarted agent to finish both volumes", lambda: completed_pvbs(site, backup))
    assert len(pvbs) == 2
    reasons = {e["reason"] for e in events_about(site, data_pvb["metadata"]["name"])}
    assert "Resumed" in reasons, reasons
    assert phase(site.backup(backup)) == "InProgress"

    # The restarted server takes the finished volumes from the cluster and finalises the backup.
    site.run(site.server(name="ark-server-2"))
    final = site.wait_backup(backup)
    assert phase(final) == "Completed", f"{final['status']}\n{site.logs()}"
    assert {phase(p) for p in site.pvbs(backup)} == {"Completed"}
    described = site.ark("backup", "describe", backup, "--details").stdout
    assert "Phase:  Completed" in described and "InProgress" not in described

    # The snapshot the backup records holds the whole volume.
    data_id = next(p["status"]["snapshotID"] for p in pvbs if p["spec"]["volume"] == "data")
    snapshot = find_snapshot(snapshots_by_id(site, key), data_id)
    target = site.work / "restored" / "data"
    site.restic(key, "restore", snapshot["id"], "--target", str(target))
    assert_same_tree(data_dir, target)


def test_killed_agent_leaves_no_restic_key_on_disk_once_restarted(local_site: Site) -> None:
    site, key = local_site, new_key()
    backup = f"{site.namespace}-leak"
    _, agent, _ = start_large_backup(site, key, backup, random_mib=128)
    crash(agent)
    site.run(site.agent("ark-restic-2"))
    assert phase(site.wait_backup(backup)) == "Completed"
    left = [p for p in (site.work / "tmp").rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not left, f"the restic key is still on disk after the crash: {left}"


@dataclass
class BadRun:
    """One backup of three pods, each wrong in its own way, and what `ark backup describe --details` said."""

    site: Site
    backup: str
    created: subprocess.CompletedProcess[str]
    described: str
    ghost: str
    hollow_uid: str

    @property
    def blocks(self) -> dict[str, dict[str, str]]:
        return volume_blocks(self.described)

    @property
    def warning(self) -> str:
        return f"volume nope named in {VOLUMES_ANNOTATION} is not in pod {self.site.namespace}/web; not backing it up"


# Its processes run until the module ends, and two `ark server`s must never run at once: keep these tests last.
@pytest.fixture(scope="module")
def bad_run(envtest: Envtest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadRun]:
    with own_site(envtest, tmp_path_factory.mktemp("bad-input")) as site:
        ns, kubelet = site.namespace, site.kubelet
        site.run(site.server("--pod-volume-stall-timeout", "5s"), site.agent())
        site.ark("restic", "init-repository", "--namespace", ns)
        # An annotation naming a volume the pod does not have.
        kubelet.run_pod(ns, "web", {"data": user_files(5)}, annotations={VOLUMES_ANNOTATION: "data,nope"})
        # A pod on a node without a node agent.
        ghost = f"ghost-{ns}"
        kubelet.create_pod(ns, "far", ["data"], {VOLUMES_ANNOTATION: "data"})
        kubelet.report_running(kubelet.bind(ns, "far", ghost))
        # A pod whose volume directory the kubelet never made.
        kubelet.create_pod(ns, "hollow", ["cache"], {VOLUMES_ANNOTATION: "cache"})
        hollow = kubelet.bind(ns, "hollow")
        kubelet.report_running(hollow)

        backup = f"{ns}-bad"
        created = site.ark("backup", "create", backup, "--include-namespaces", ns, "--wait", check=False)
        described = site.ark("backup", "describe", backup, "--details").stdout
        yield BadRun(site, backup, created, described, ghost, hollow["metadata"]["uid"])


def test_bad_input_leaves_the_backup_partially_failed_with_every_pod_volume_listed(bad_run: BadRun) -> None:
    ns = bad_run.site.namespace
    assert bad_run.created.returncode == 1
    assert f"Backup {bad_run.backup} finished: PartiallyFailed" in bad_run.created.stdout
    described = bad_run.described
    assert "Phase:  PartiallyFailed" in described
    assert "Warnings:  1" in described and "Errors:    2" in described
    blocks = bad_run.blocks
    assert sorted(blocks) == [f"{ns}/far: data", f"{ns}/hollow: cache", f"{ns}/web: data"], described
    for block in blocks.values():
        assert {"Phase", "Node", "Progress", "Snapshot", "Duration"} <= set(block), block
    web = blocks[f"{ns}/web: data"]
    assert web["Phase"] == "Completed" and web["Snapshot"] != "<none>" and "Message" not in web
    # The backup's reason names both failed volumes.
    reason = next(line for line in described.splitlines() if line.startswith("Reason:"))
    assert f"volume data of pod {ns}/far" in reason and f"volume cache of pod {ns}/hollow" in reason, reason


def test_pod_on_a_node_without_agent_fails_with_the_stall_message(bad_run: BadRun) -> None:
    far = bad_run.blocks[f"{bad_run.site.namespace}/far: data"]
    assert far["Phase"] == "Failed" and far["Node"] == bad_run.ghost and far["Snapshot"] == "<none>"
    assert far["Message"] == (
        f"no progress for 5s: is the node agent (ark restic server) running on node {bad_run.ghost}?"
    )


def test_missing_volume_directory_fails_naming_the_path(bad_run: BadRun) -> None:
    ns, uid = bad_run.site.namespace, bad_run.hollow_uid
    host_pods = bad_run.site.kubelet.host_pods
    missing = bad_run.blocks[f"{ns}/hollow: cache"]
    assert missing["Phase"] == "Failed" and missing["Snapshot"] == "<none>"
    assert f"no directory for volume cache of pod {ns}/hollow (uid {uid})" in missing["Message"]
    assert f"under {host_pods / uid / 'volumes' / '*' / 'cache'}" in missing["Message"]
    assert f"{host_pods / uid} does not exist" in missing["Message"]


def test_annotation_naming_a_missing_volume_is_a_warning_in_log_and_event(bad_run: BadRun) -> None:
    site = bad_run.site
    assert bad_run.warning in site.ark("backup", "logs", bad_run.backup).stdout
    events = events_about(site, bad_run.backup)
    assert bad_run.warning in [e["message"] for e in events if e["reason"] == "BackupWarning"]


def test_describe_spells_out_the_warning(bad_run: BadRun) -> None:
    assert bad_run.warning in bad_run.described
