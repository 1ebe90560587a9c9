"""The ResticRepository controller, key rotation and the snapshot forgetter of `ark server`, on the real
kube-apiserver with the real restic binary (repositories in a local directory or on moto S3).

Each test runs the controller the way `ark server` wires it (shared informers, Config `default` from
the cluster) in a fresh Ark namespace. Tests play restic users themselves (backups, restores,
stale locks) with the `restic` binary and the key read from the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from arkd.api.constants import API_VERSION, RESTIC_KEY_DATA_KEY, RESTIC_KEY_LABEL
from arkd.cli.main import restic
from arkd.config import ServerSettings
from arkd.controllers.config import ConfigHolder
from arkd.controllers.resources import CONFIGS, PODVOLUMEBACKUPS, RESTICREPOSITORIES
from arkd.controllers.restic_forget import ResticSnapshotForgetter
from arkd.controllers.restic_repository import (
    NEW_KEY_DATA_KEY,
    RETIRED_KEY_ANNOTATION,
    ROTATION_ERROR_ANNOTATION,
    ResticRepositoryController,
    server_restic_runner,
)
from arkd.controllers.runtime import Informers, ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.events import EventRecorder
from arkd.kube.resource import EVENTS, NAMESPACES, SECRETS
from arkd.metrics import ServerMetrics
from tests.envtest.harness import Envtest
from tests.support.moto import MotoServer, free_port

Obj = dict[str, Any]
T = TypeVar("T")

WAIT_SECONDS = 90.0
COMMANDS = {
    "init-repository": "arkd.cli.restic_keys:init_repository",
    "rotate-key": "arkd.cli.restic_keys:rotate_key",
    "repo": "arkd.cli.restic_repo:repo",
}


@pytest.fixture(autouse=True)
def restic_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands as `ark restic` lists them (a no-op once arkd/cli/main.py registers them)."""
    if shutil.which("restic") is None:
        pytest.fail("restic is not installed: apt-get install -y restic", pytrace=False)
    for name, target in COMMANDS.items():
        if name not in restic.lazy:
            monkeypatch.setitem(restic.lazy, name, target)


# --------------------------------------------------------------------------- harness


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT_SECONDS) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        found = await probe()
        if found is not None:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class ArkServer:
    ctx: ServerContext
    controller: ResticRepositoryController
    task: asyncio.Task[None]

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def ark_server(
    envtest: Envtest, namespace: str, *, launcher: tuple[str, ...] = (), **settings: Any
) -> AsyncIterator[ArkServer]:
    """The ResticRepository controller of `ark server`, built like app.py builds controllers."""
    client = await KubeClient.connect(envtest.kubeconfig)
    clock = RealClock()
    informers = Informers(client, clock)
    recorder = EventRecorder(client, "ark-server", clock=clock)
    registry = CollectorRegistry()
    server_settings = ServerSettings(
        namespace=namespace, scratch_dir=tempfile.mkdtemp(prefix="arkd-scratch-"), **settings
    )
    ctx = ServerContext(
        client=client,
        settings=server_settings,
        informers=informers,
        recorder=recorder,
        registry=registry,
        metrics=ServerMetrics.create(registry),
        controller_metrics=ControllerMetrics(registry),
        clock=clock,
        config=ConfigHolder(informers.get(CONFIGS, namespace), namespace, recorder),
    )
    controller = ResticRepositoryController(
        ctx, runner=server_restic_runner(server_settings, launcher=launcher), retry_base=0.5, retry_max=5.0
    )
    informers.start()
    recorder.start()
    task = asyncio.create_task(controller.run())
    try:
        yield ArkServer(ctx, controller, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await informers.stop()
        await recorder.close(timeout=2)
        await ctx.config.close()
        await client.close()


def local_config(namespace: str, restic_location: str | None) -> Obj:
    root = tempfile.mkdtemp(prefix="arkd-backups-")
    (Path(root) / "backups").mkdir()
    provider: Obj = {"name": "local", "bucket": "backups", "config": {"path": root}}
    if restic_location is not None:
        provider["resticLocation"] = restic_location
    return {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": provider,
    }


def s3_config(namespace: str, s3_url: str, bucket: str, restic_location: str) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": {
            "name": "aws",
            "bucket": bucket,
            "resticLocation": restic_location,
            "config": {"region": "us-east-1", "s3Url": s3_url, "s3ForcePathStyle": "true"},
        },
    }


def repository(namespace: str, name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "ResticRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def wait_repository(kube: KubeClient, namespace: str, name: str, check: Callable[[Obj], bool], what: str) -> Obj:
    async def probe() -> Obj | None:
        obj = await kube.get(RESTICREPOSITORIES, name, namespace)
        return obj if check(obj) else None

    return await eventually(probe, f"ResticRepository {name}: {what}")


def phase_is(phase: str) -> Callable[[Obj], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") == phase


async def key_of(kube: KubeClient, namespace: str, volume_ns: str) -> bytes:
    secret = await kube.get(SECRETS, f"ark-restic-credentials-{volume_ns}", namespace)
    return base64.b64decode(secret["data"][RESTIC_KEY_DATA_KEY])


async def set_key(kube: KubeClient, namespace: str, volume_ns: str, key: bytes) -> None:
    await kube.patch(
        SECRETS,
        f"ark-restic-credentials-{volume_ns}",
        {"data": {RESTIC_KEY_DATA_KEY: base64.b64encode(key).decode()}},
        namespace,
    )


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


# `python -m arkd` with the restic commands registered (a no-op once arkd/cli/main.py lists them).
_ARK = (
    "import sys; from arkd.cli import main as m; "
    f"[m.restic.lazy.setdefault(k, v) for k, v in {COMMANDS!r}.items()]; m.main(sys.argv[1:])"
)


async def ark(*args: str) -> Result:
    """`ark ...` as a separate process (KUBECONFIG points at the test cluster), while the server runs here."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ARK,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return Result(proc.returncode or 0, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def app_namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"app-{secrets.token_hex(4)}"
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            await kube.delete(NAMESPACES, name)


class Restic:
    """The restic binary as a user runs it, with a key in a password file."""

    def __init__(self, identifier: str, key: bytes, env: dict[str, str] | None = None) -> None:
        self.identifier = identifier
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RESTIC_PASSWORD", None)
        self._dir = Path(tempfile.mkdtemp(prefix="arkd-test-restic-"))
        self.password_file = self._dir / "password"
        self.password_file.write_bytes(key)
        self.password_file.chmod(0o600)

    def argv(self, *args: str) -> list[str]:
        return ["restic", "-r", self.identifier, "--password-file", str(self.password_file), *args]

    async def run(self, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            cwd=cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return subprocess.CompletedProcess(self.argv(*args), proc.returncode or 0, out.decode(), err.decode())

    async def ok(self, *args: str, cwd: str | None = None) -> str:
        result = await self.run(*args, cwd=cwd)
        assert result.returncode == 0, f"restic {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    async def snapshots(self) -> list[Obj]:
        return list(orjson.loads(await self.ok("snapshots", "--json", "--no-lock")))

    async def backup(self, directory: Path, **tags: str) -> str:
        flags = [f"--tag={k}={v}" for k, v in tags.items()]
        out = await self.ok("backup", ".", "--json", "--host=ark", *flags, cwd=str(directory))
        summary = [orjson.loads(line) for line in out.splitlines() if '"summary"' in line]
        return str(summary[-1]["snapshot_id"])

    async def locks(self) -> list[str]:
        return (await self.ok("list", "locks", "--no-lock")).split()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def make_data(root: Path, files: int = 5, size: int = 64 * 1024) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"file-{i}.bin").write_bytes(os.urandom(size))
    (root / "notes.txt").write_text("pod volume data\n")
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def events_about(kube: KubeClient, namespace: str, name: str) -> list[Obj]:
    return [e for e in await kube.list(EVENTS, namespace) if e["involvedObject"].get("name") == name]


# --------------------------------------------------------------------------- tests


async def test_a_new_repository_is_initialised_with_the_namespace_key_and_becomes_ready(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    restic_root = str(tmp_path / "restic")
    await kube.create(CONFIGS, local_config(namespace, restic_root), namespace)
    async with app_namespace(kube) as vol:
        init = await ark("-n", namespace, "restic", "init-repository", "--namespace", vol, "--key-data", "k-" + vol)
        assert init.exit_code == 0, init.output
        async with ark_server(envtest, namespace) as server:
            await kube.create(RESTICREPOSITORIES, repository(namespace, vol), namespace)

            repo = await wait_repository(kube, namespace, vol, phase_is("Ready"), "Ready")

            assert repo["spec"]["resticIdentifier"] == f"{restic_root}/{vol}"
            assert repo["spec"]["maintenanceFrequency"] == "168h0m0s"
            assert repo["status"]["lastMaintenanceTime"]
            # The repository opens with the key stored by init-repository, and holds no snapshots yet.
            user = Restic(repo["spec"]["resticIdentifier"], f"k-{vol}".encode())
            assert await user.snapshots() == []
            user.close()
            assert server.metric("ark_restic_repository_ready", repository=vol) == 1.0
            await server.ctx.recorder.flush()
            reasons = {e["reason"] for e in await events_about(kube, namespace, vol)}
            assert {"RepositoryInitialized", "RepositoryReady"} <= reasons


async def test_a_namespace_without_a_key_gets_a_random_one_unless_keys_are_required(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with ark_server(envtest, namespace, require_restic_keys=True):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "required"), namespace)
        repo = await wait_repository(kube, namespace, "required", phase_is("NotReady"), "NotReady")
        assert "ark restic init-repository --namespace required" in repo["status"]["message"]
        with pytest.raises(Exception, match="not found"):
            await kube.get(SECRETS, "ark-restic-credentials-required", namespace)

    async with ark_server(envtest, namespace):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "generated"), namespace)
        repo = await wait_repository(kube, namespace, "generated", phase_is("Ready"), "Ready")
        secret = await kube.get(SECRETS, "ark-restic-credentials-generated", namespace)
        assert secret["metadata"]["labels"][RESTIC_KEY_LABEL] == "generated"
        key = base64.b64decode(secret["data"][RESTIC_KEY_DATA_KEY])
        assert len(key) == 1024
        user = Restic(repo["spec"]["resticIdentifier"], key)
        assert await user.snapshots() == []
        user.close()


async def test_a_key_that_does_not_open_the_repository_makes_it_not_ready_until_fixed(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with ark_server(envtest, namespace) as server:
        await kube.create(RESTICREPOSITORIES, repository(namespace, "shop"), namespace)
        await wait_repository(kube, namespace, "shop", phase_is("Ready"), "Ready")
        good = await key_of(kube, namespace, "shop")
        garbage = b"garbage-" + secrets.token_hex(8).encode()

        await set_key(kube, namespace, "shop", garbage)

        repo = await wait_repository(kube, namespace, "shop", phase_is("NotReady"), "NotReady after the key changed")
        message = repo["status"]["message"]
        assert (
            f"the restic key in Secret {namespace}/ark-restic-credentials-shop does not open the repository" in message
        )
        assert garbage.decode() not in message
        assert server.metric("ark_restic_repository_ready", repository="shop") == 0.0

        await set_key(kube, namespace, "shop", good)
        repo = await wait_repository(kube, namespace, "shop", phase_is("Ready"), "Ready again with the right key")
        assert not repo["status"].get("message")


async def test_an_unreachable_repository_is_not_ready_with_a_clear_message(
    envtest: Envtest, namespace: str, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNREACHABLE00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unreachable-secret")
    closed = f"http://127.0.0.1:{free_port()}"
    await kube.create(CONFIGS, s3_config(namespace, closed, "backups", "restic"), namespace)
    async with ark_server(envtest, namespace):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "web"), namespace)

        repo = await wait_repository(kube, namespace, "web", phase_is("NotReady"), "NotReady")

        message = repo["status"]["message"]
        assert message.startswith(f"cannot reach the restic repository at s3:{closed}/restic/web:")
        assert "connection refused" in message
        # Nothing is known about the repository, so no key was invented for it.
        with pytest.raises(Exception, match="not found"):
            await kube.get(SECRETS, "ark-restic-credentials-web", namespace)


async def test_restic_disabled_in_the_config_is_not_ready_until_a_restic_location_is_set(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, None), namespace)
    async with ark_server(envtest, namespace):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "db"), namespace)
        repo = await wait_repository(kube, namespace, "db", phase_is("NotReady"), "NotReady")
        assert "restic is disabled" in repo["status"]["message"]
        assert "resticLocation is empty" in repo["status"]["message"]

        location = str(tmp_path / "restic")
        await kube.patch(CONFIGS, "default", {"backupStorageProvider": {"resticLocation": location}}, namespace)

        repo = await wait_repository(kube, namespace, "db", phase_is("Ready"), "Ready once restic is enabled")
        assert repo["spec"]["resticIdentifier"] == f"{location}/db"


async def test_a_repository_on_s3(
    envtest: Envtest, namespace: str, kube: KubeClient, s3: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    suffix = secrets.token_hex(4)
    s3.make_bucket(f"backups-{suffix}")
    s3.make_bucket(f"restic-{suffix}")
    await kube.create(
        CONFIGS, s3_config(namespace, s3.endpoint, f"backups-{suffix}", f"restic-{suffix}/ark"), namespace
    )
    async with ark_server(envtest, namespace):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "orders"), namespace)

        repo = await wait_repository(kube, namespace, "orders", phase_is("Ready"), "Ready")

        identifier = repo["spec"]["resticIdentifier"]
        assert identifier == f"s3:{s3.endpoint}/restic-{suffix}/ark/orders"
        user = Restic(identifier, await key_of(kube, namespace, "orders"), s3.env())
        assert await user.snapshots() == []
        user.close()
        listed = s3.client().list_objects_v2(Bucket=f"restic-{suffix}", Prefix="ark/orders/")
        assert "ark/orders/config" in {o["Key"] for o in listed.get("Contents", [])}


async def test_maintenance_runs_when_due_and_removes_a_stale_lock(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with ark_server(envtest, namespace) as server:
        await kube.create(RESTICREPOSITORIES, repository(namespace, "cms", maintenanceFrequency="1h"), namespace)
        repo = await wait_repository(kube, namespace, "cms", phase_is("Ready"), "Ready")
        first = repo["status"]["lastMaintenanceTime"]
        identifier = repo["spec"]["resticIdentifier"]
        user = Restic(identifier, await key_of(kube, namespace, "cms"))
        await user.backup(make_data(tmp_path / "v1"))
        stale = await leave_stale_lock(user, make_data(tmp_path / "big", files=200, size=512 * 1024), Path(identifier))
        assert stale in await user.locks()

        await kube.patch(RESTICREPOSITORIES, "cms", {"spec": {"maintenanceFrequency": "1s"}}, namespace)

        repo = await wait_repository(
            kube,
            namespace,
            "cms",
            lambda o: (o["status"].get("lastMaintenanceTime") or "") > first and "succeeded" in o["status"]["message"],
            "maintenance to run",
        )
        assert repo["status"]["phase"] == "Ready"
        assert stale not in await user.locks()
        await user.ok("check", "--no-lock")  # the repository is sound after the prune
        assert server.metric("ark_restic_repository_maintenance_total", repository="cms", result="success") >= 1
        await server.ctx.recorder.flush()
        messages = [
            e["message"] for e in await events_about(kube, namespace, "cms") if e["reason"] == "MaintenanceSucceeded"
        ]
        assert any("removed 1 stale lock(s)" in m for m in messages), messages
        user.close()


async def leave_stale_lock(user: Restic, data: Path, repo_dir: Path) -> str:
    """Start `restic backup` and SIGKILL it once it holds a lock: the lock stays, its process is dead."""
    proc = await asyncio.create_subprocess_exec(
        *user.argv("backup", "."),
        cwd=str(data),
        env=user.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    locks_dir = repo_dir / "locks"

    async def lock_file() -> str | None:
        # The local backend writes "<id>-tmp-<n>" first and renames it: only a finished lock counts.
        names = [p.name for p in locks_dir.iterdir()] if locks_dir.is_dir() else []
        done = [n for n in names if re.fullmatch(r"[0-9a-f]{64}", n)]
        return done[0] if done else None

    try:
        lock = await eventually(lock_file, "restic backup to take a lock", timeout=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return lock


SPY = """#!/bin/sh
# Records what the kernel shows for this process (which exec()s restic in place: same pid,
# same argv and environment), then runs restic.
{{
  printf 'CMDLINE '; tr '\\0' ' ' < /proc/$$/cmdline; printf '\\n'
  printf 'ENVIRON '; tr '\\0' ' ' < /proc/$$/environ; printf '\\n'
}} >> {log}
exec "$@"
"""


async def test_key_rotation_keeps_snapshots_readable_and_retires_the_old_key(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    spy_log = tmp_path / "restic-processes.log"
    spy = tmp_path / "spy.sh"
    spy.write_text(SPY.format(log=spy_log))
    spy.chmod(spy.stat().st_mode | stat.S_IEXEC)
    old_key = f"old-key-{secrets.token_hex(12)}"
    new_key = f"new-key-{secrets.token_hex(12)}"
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with app_namespace(kube) as vol, ark_server(envtest, namespace, launcher=(str(spy),)) as server:
        init = await ark("-n", namespace, "restic", "init-repository", "--namespace", vol, "--key-data", old_key)
        assert init.exit_code == 0, init.output
        await kube.create(RESTICREPOSITORIES, repository(namespace, vol), namespace)
        repo = await wait_repository(kube, namespace, vol, phase_is("Ready"), "Ready")
        identifier = repo["spec"]["resticIdentifier"]
        old_user = Restic(identifier, old_key.encode())
        data = make_data(tmp_path / "data")
        snapshot = await old_user.backup(data, backup="b1", ns=vol, volume="data")

        rotated = await ark("-n", namespace, "restic", "rotate-key", "--namespace", vol, "--key-data", new_key)

        assert rotated.exit_code == 0, rotated.output
        assert "the old key no longer opens its repository" in rotated.stdout
        secret = await kube.get(SECRETS, f"ark-restic-credentials-{vol}", namespace)
        assert base64.b64decode(secret["data"][RESTIC_KEY_DATA_KEY]) == new_key.encode()
        assert NEW_KEY_DATA_KEY not in secret["data"]
        annotations = secret["metadata"].get("annotations") or {}
        assert RETIRED_KEY_ANNOTATION not in annotations and ROTATION_ERROR_ANNOTATION not in annotations
        # The old key no longer opens the repository ...
        refused = await old_user.run("snapshots", "--no-lock")
        assert refused.returncode != 0 and "wrong password" in refused.stderr
        # ... the new one is its only key, and the snapshot made with the old key restores with it.
        new_user = Restic(identifier, new_key.encode())
        assert len(orjson.loads(await new_user.ok("key", "list", "--json"))) == 1
        target = tmp_path / "restored"
        target.mkdir()
        await new_user.ok("restore", snapshot, "--target", str(target))
        assert tree(target) == tree(data)
        repo = await wait_repository(
            kube, namespace, vol, lambda o: "rotated" in (o["status"].get("message") or ""), "rotation in status"
        )
        assert repo["status"]["phase"] == "Ready"
        await server.ctx.recorder.flush()
        assert "KeyRotated" in {e["reason"] for e in await events_about(kube, namespace, vol)}

        # Neither key ever reached a restic process's argv or environment, an Event or the status.
        processes = spy_log.read_bytes()
        assert b" key add " in processes and b"--new-password-file=" in processes
        assert b" key remove " in processes
        everything_visible = processes + orjson.dumps(
            [await kube.list(EVENTS, namespace), await kube.list(RESTICREPOSITORIES, namespace), annotations]
        )
        for key in (old_key, new_key):
            assert key.encode() not in everything_visible
            assert base64.b64encode(key.encode()) not in everything_visible
        old_user.close()
        new_user.close()


async def test_rotating_the_key_of_a_namespace_without_a_repository_switches_the_secret(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    restic_root = tmp_path / "restic"
    await kube.create(CONFIGS, local_config(namespace, str(restic_root)), namespace)
    async with app_namespace(kube) as vol, ark_server(envtest, namespace):
        assert (
            await ark("-n", namespace, "restic", "init-repository", "-n", vol, "--key-data", "before")
        ).exit_code == 0

        rotated = await ark(
            "-n", namespace, "restic", "rotate-key", "-n", vol, "--key-data", "after", "--timeout", "1m"
        )

        assert rotated.exit_code == 0, rotated.output
        assert await key_of(kube, namespace, vol) == b"after"
        assert not (restic_root / vol).exists()  # no repository was made for it


async def test_an_interrupted_rotation_is_finished_without_adding_the_key_twice(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    secret_name = "ark-restic-credentials-crm"
    async with ark_server(envtest, namespace):
        await kube.create(RESTICREPOSITORIES, repository(namespace, "crm"), namespace)
        repo = await wait_repository(kube, namespace, "crm", phase_is("Ready"), "Ready")
        old_key = await key_of(kube, namespace, "crm")
        old_user = Restic(repo["spec"]["resticIdentifier"], old_key)
        snapshot = await old_user.backup(make_data(tmp_path / "data"))
        # A server stopped right after `restic key add`: both keys open the repository, the Secret still
        # holds the old one and the new one pending.
        await old_user.ok("key", "add", "--new-password-file", str(write_file(tmp_path / "new", b"new-crm-key")))
        await kube.patch(
            SECRETS, secret_name, {"data": {NEW_KEY_DATA_KEY: base64.b64encode(b"new-crm-key").decode()}}, namespace
        )

        async def finished() -> Obj | None:
            secret = await kube.get(SECRETS, secret_name, namespace)
            done = NEW_KEY_DATA_KEY not in secret["data"] and not (secret["metadata"].get("annotations") or {})
            return secret if done else None

        secret = await eventually(finished, "the rotation to finish")

        assert base64.b64decode(secret["data"][RESTIC_KEY_DATA_KEY]) == b"new-crm-key"
        new_user = Restic(repo["spec"]["resticIdentifier"], b"new-crm-key")
        assert len(orjson.loads(await new_user.ok("key", "list", "--json"))) == 1
        assert [s["short_id"] for s in await new_user.snapshots()] == [snapshot]
        assert (await old_user.run("snapshots", "--no-lock")).returncode != 0

        # A server stopped after switching the Secret but before removing the old key: the annotation
        # names the key to remove, and the next server removes it.
        newest_file = write_file(tmp_path / "newest", b"newest-crm-key")
        await new_user.ok("key", "add", "--new-password-file", str(newest_file))
        keys = orjson.loads(await new_user.ok("key", "list", "--json"))
        retired = next(k["id"] for k in keys if k["current"])
        await kube.patch(
            SECRETS,
            secret_name,
            {
                "metadata": {"annotations": {RETIRED_KEY_ANNOTATION: retired}},
                "data": {RESTIC_KEY_DATA_KEY: base64.b64encode(b"newest-crm-key").decode()},
            },
            namespace,
        )
        await eventually(finished, "the old key to be removed")
        newest_user = Restic(repo["spec"]["resticIdentifier"], b"newest-crm-key")
        assert [k["id"] for k in orjson.loads(await newest_user.ok("key", "list", "--json"))] != [retired]
        assert len(orjson.loads(await newest_user.ok("key", "list", "--json"))) == 1
        assert (await new_user.run("snapshots", "--no-lock")).returncode != 0
        for user in (old_user, new_user, newest_user):
            user.close()


async def test_a_rotation_the_server_cannot_do_is_reported_to_the_cli_and_changes_nothing(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with app_namespace(kube) as vol, ark_server(envtest, namespace):
        assert (
            await ark("-n", namespace, "restic", "init-repository", "-n", vol, "--key-data", "right")
        ).exit_code == 0
        await kube.create(RESTICREPOSITORIES, repository(namespace, vol), namespace)
        repo = await wait_repository(kube, namespace, vol, phase_is("Ready"), "Ready")
        await set_key(kube, namespace, vol, b"wrong")

        rotated = await ark(
            "-n", namespace, "restic", "rotate-key", "-n", vol, "--key-data", "other", "--timeout", "5s"
        )

        assert rotated.exit_code != 0
        assert "ark server: restic key rotation failed: neither the current key nor the new key" in rotated.stderr
        assert "last error: restic key rotation failed" in rotated.stderr.splitlines()[-1]
        user = Restic(repo["spec"]["resticIdentifier"], b"right")
        assert len(orjson.loads(await user.ok("key", "list", "--json"))) == 1  # the repository is untouched
        user.close()


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_the_forgetter_removes_a_backups_snapshots(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    async with ark_server(envtest, namespace) as server:
        await kube.create(RESTICREPOSITORIES, repository(namespace, "shop"), namespace)
        repo = await wait_repository(kube, namespace, "shop", phase_is("Ready"), "Ready")
        identifier = repo["spec"]["resticIdentifier"]
        user = Restic(identifier, await key_of(kube, namespace, "shop"))
        data = make_data(tmp_path / "data")
        in_cluster = await user.backup(data, backup="doomed", volume="a")
        synced_only = await user.backup(data, backup="doomed", volume="b")
        kept = await user.backup(data, backup="other", volume="a")
        cluster_pvb = await create_pvb(kube, namespace, "doomed-a", "shop", identifier, in_cluster)
        stored_pvb = pvb_object(namespace, "doomed-b", "shop", identifier, synced_only)
        gone = pvb_object(namespace, "doomed-c", "shop", identifier, "deadbeef")  # already forgotten
        failed = pvb_object(namespace, "doomed-d", "shop", identifier, "")  # never made a snapshot
        forgetter = ResticSnapshotForgetter(server.ctx, server.controller.locks)
        backup = {"apiVersion": API_VERSION, "kind": "Backup", "metadata": {"name": "doomed", "namespace": namespace}}

        errors = await forgetter.forget_backup_snapshots(backup, [cluster_pvb, gone], [stored_pvb, cluster_pvb, failed])

        assert errors == []
        assert [s["short_id"] for s in await user.snapshots()] == [kept]

        orphan = pvb_object(namespace, "doomed-e", "nokey", f"{identifier}-nokey", "abcdef12")
        errors = await forgetter.forget_backup_snapshots(backup, [orphan], [])
        assert len(errors) == 1
        assert "abcdef12" in errors[0] and "ark restic init-repository --namespace nokey" in errors[0]
        user.close()


def pvb_object(namespace: str, name: str, pod_ns: str, identifier: str, snapshot_id: str) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "PodVolumeBackup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "node": "node-1",
            "pod": {"kind": "Pod", "namespace": pod_ns, "name": "web-0", "uid": "u-1"},
            "volume": name.rsplit("-", 1)[-1],
            "repoIdentifier": identifier,
        },
        "status": {"phase": "Completed" if snapshot_id else "Failed", "snapshotID": snapshot_id or None},
    }


async def create_pvb(kube: KubeClient, namespace: str, name: str, pod_ns: str, identifier: str, snapshot: str) -> Obj:
    body = pvb_object(namespace, name, pod_ns, identifier, snapshot)
    status = body.pop("status")
    created = await kube.create(PODVOLUMEBACKUPS, body, namespace)
    return await kube.patch(
        PODVOLUMEBACKUPS,
        name,
        {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "status": status},
        namespace,
        subresource="status",
    )


async def test_repo_get_prints_the_repositories(
    envtest: Envtest, namespace: str, kube: KubeClient, tmp_path: Path
) -> None:
    await kube.create(CONFIGS, local_config(namespace, str(tmp_path / "restic")), namespace)
    await kube.create(RESTICREPOSITORIES, repository(namespace, "fresh"), namespace)

    listed = await ark("-n", namespace, "restic", "repo", "get")

    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LAST", "MAINTENANCE", "MESSAGE"]
    assert lines[1].split() == ["fresh", "New", "<never>"]

    async with ark_server(envtest, namespace):
        fresh = await wait_repository(kube, namespace, "fresh", phase_is("Ready"), "Ready")
        await kube.create(
            RESTICREPOSITORIES, repository(namespace, "broken", resticIdentifier="/dev/null/x"), namespace
        )
        await wait_repository(kube, namespace, "broken", phase_is("NotReady"), "NotReady")

        listed = await ark("-n", namespace, "restic", "repo", "get")
        one = await ark("-n", namespace, "restic", "repo", "get", "fresh", "-o", "json")
        missing = await ark("-n", namespace, "restic", "repo", "get", "nope")

    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    maintained = datetime.datetime.fromisoformat(fresh["status"]["lastMaintenanceTime"].replace("Z", "+00:00"))
    assert rows["fresh"].split()[1:4] == ["Ready", *maintained.strftime("%Y-%m-%d %H:%M:%S").split()]
    assert rows["broken"].split()[1:3] == ["NotReady", "<never>"]
    assert "/dev/null/x" in rows["broken"]  # the message says what is wrong
    assert orjson.loads(one.stdout)["metadata"]["name"] == "fresh"
    assert missing.exit_code != 0 and f"restic repository 'nope' not found in namespace {namespace}" in missing.stderr
