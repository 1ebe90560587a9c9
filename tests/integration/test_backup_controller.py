"""The Backup controller of `ark server` on the real kube-apiserver: what lands in object storage.

Each test runs the controller the way `ark server` wires it (shared informers, Config `default`
from the cluster, the object store it names) in a fresh Ark namespace, creates Backups through the
API and reads the result back from the store: Ark 0.9's tarball layout, `ark-backup.json`, the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import io
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from arkd.api.constants import API_VERSION, RESTIC_KEY_LABEL
from arkd.config import ServerSettings
from arkd.controllers.backup import BackupController
from arkd.controllers.config import ConfigHolder
from arkd.controllers.resources import BACKUPS, CONFIGS
from arkd.controllers.runtime import Informers, ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.events import EventRecorder
from arkd.kube.resource import (
    CONFIGMAPS,
    EVENTS,
    NAMESPACES,
    PVCS,
    PVS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    Resource,
)
from arkd.metrics import ServerMetrics
from arkd.storage import ObjectStore, make_store
from tests.envtest.harness import Envtest

Obj = dict[str, Any]
T = TypeVar("T")

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
WAIT_SECONDS = 90.0


# --------------------------------------------------------------------------- helpers shared with
# test_backup_podvolumes.py (until app.py builds the ServerContext, the tests build it the same way)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT_SECONDS) -> T:
    """The first non-None result of `probe`, polled; fails with `what` if there is none in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last is not None:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class ArkServer:
    """The Backup controller of `ark server` running in this event loop, built like app.py would."""

    envtest: Envtest
    namespace: str
    settings: dict[str, Any] = field(default_factory=dict)
    client: KubeClient | None = None
    ctx: ServerContext | None = None
    controller: BackupController | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> ArkServer:
        client = await KubeClient.connect(self.envtest.kubeconfig)
        clock = RealClock()
        informers = Informers(client, clock)
        recorder = EventRecorder(client, "ark-server", clock=clock)
        registry = CollectorRegistry()
        holder = ConfigHolder(informers.get(CONFIGS, self.namespace), self.namespace, recorder)
        self.client = client
        self.ctx = ServerContext(
            client=client,
            settings=ServerSettings(namespace=self.namespace, **self.settings),
            informers=informers,
            recorder=recorder,
            registry=registry,
            metrics=ServerMetrics.create(registry),
            controller_metrics=ControllerMetrics(registry),
            clock=clock,
            config=holder,
        )
        self.controller = BackupController(self.ctx)
        informers.start()
        recorder.start()
        self._task = asyncio.create_task(self.controller.run())
        return self

    async def stop(self) -> None:
        assert self.ctx is not None and self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ctx.informers.stop()
        await self.ctx.recorder.close(timeout=2)
        await self.ctx.config.close()
        await self.ctx.client.close()

    def metric(self, name: str, **labels: str) -> float:
        assert self.ctx is not None
        value = self.ctx.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def ark_server(envtest: Envtest, namespace: str, **settings: Any) -> AsyncIterator[ArkServer]:
    server = await ArkServer(envtest, namespace, settings).start()
    try:
        yield server
    finally:
        await server.stop()


def local_config(namespace: str, root: str, *, restic: bool = False, **extra: Any) -> Obj:
    provider: Obj = {"name": "local", "bucket": "backups", "config": {"path": root}}
    if restic:
        provider["resticLocation"] = str(Path(root) / "restic")
    return {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": provider,
        **extra,
    }


def local_root() -> str:
    """A storage directory with its "backups" bucket, as the local provider expects."""
    root = tempfile.mkdtemp(prefix="arkd-backups-")
    (Path(root) / "backups").mkdir()
    return root


def local_store(root: str) -> ObjectStore:
    return make_store("local", "backups", {"path": root})


def backup_object(namespace: str, name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def wait_phase(kube: KubeClient, namespace: str, name: str, phases: set[str]) -> Obj:
    async def probe() -> Obj | None:
        obj = await kube.get(BACKUPS, name, namespace)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    return await eventually(probe, f"backup {name} to reach {sorted(phases)}")


def tarball_members(data: bytes) -> dict[str, Obj]:
    """Every file of a backup tarball, parsed (each must hold exactly one JSON object)."""
    out: dict[str, Obj] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert member.isfile(), f"{member.name} is not a regular file"
            extracted = tar.extractfile(member)
            assert extracted is not None
            out[member.name] = orjson.loads(extracted.read())
    return out


@contextlib.asynccontextmanager
async def app_namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"app-{secrets.token_hex(4)}"
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            await kube.delete(NAMESPACES, name)


async def bound_claim(kube: KubeClient, namespace: str, claim: str, pv: str) -> Obj:
    """A PVC bound to a PV (no controller-manager here: the test writes what the binder would)."""
    await kube.create(
        PVS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": f"/tmp/{pv}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
    )
    await kube.create(
        PVCS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": pv,
            },
        },
        namespace,
    )
    return await kube.patch(PVCS, claim, {"status": {"phase": "Bound"}}, namespace, subresource="status")


def secret(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "data": {"password": base64.b64encode(b"s3cr3t").decode()},
    }


async def populate(kube: KubeClient, namespace: str, pv: str) -> None:
    """A small application: Deployment, Service, ConfigMaps, Secrets, a bound PVC, a ServiceAccount."""
    await kube.create(
        DEPLOYMENTS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.15"}]},
                },
            },
        },
        namespace,
    )
    await kube.create(
        SERVICES,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
        namespace,
    )
    for name in ("settings", "feature-flags"):
        await kube.create(
            CONFIGMAPS,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}},
            namespace,
        )
    await kube.create(SECRETS, secret("db-password"), namespace)
    await kube.create(
        SERVICEACCOUNTS,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}},
        namespace,
    )
    await bound_claim(kube, namespace, "data", pv)


# --------------------------------------------------------------------------- tests


async def test_namespace_backup_completes_in_ark_layout(envtest: Envtest, namespace: str, kube: KubeClient) -> None:
    root = local_root()
    pv = f"pv-{namespace}"
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    try:
        async with app_namespace(kube) as app, ark_server(envtest, namespace) as server:
            await populate(kube, app, pv)
            # A1 kept restic keys in the application namespace; such a Secret must never be backed up.
            await kube.create(SECRETS, secret("ark-restic-credentials", {RESTIC_KEY_LABEL: app}), app)
            await kube.create(BACKUPS, backup_object(namespace, "nightly", includedNamespaces=[app], ttl="1h"))

            done = await wait_phase(kube, namespace, "nightly", {"Completed", "PartiallyFailed", "Failed"})
            status = done["status"]
            assert status["phase"] == "Completed", status
            assert status["version"] == 1
            assert status["errors"] == 0 and status["warnings"] == 0
            start = datetime.datetime.fromisoformat(status["startTimestamp"].replace("Z", "+00:00"))
            expiration = datetime.datetime.fromisoformat(status["expiration"].replace("Z", "+00:00"))
            assert expiration - start == datetime.timedelta(hours=1)
            assert status["completionTimestamp"] >= status["startTimestamp"]

            store = local_store(root)
            members = tarball_members(await store.get("nightly/nightly.tar.gz"))
            expected = {
                f"resources/namespaces/cluster/{app}.json": "Namespace",
                f"resources/deployments.apps/namespaces/{app}/web.json": "Deployment",
                f"resources/services/namespaces/{app}/web.json": "Service",
                f"resources/configmaps/namespaces/{app}/settings.json": "ConfigMap",
                f"resources/configmaps/namespaces/{app}/feature-flags.json": "ConfigMap",
                f"resources/secrets/namespaces/{app}/db-password.json": "Secret",
                f"resources/serviceaccounts/namespaces/{app}/web.json": "ServiceAccount",
                f"resources/persistentvolumeclaims/namespaces/{app}/data.json": "PersistentVolumeClaim",
                f"resources/persistentvolumes/cluster/{pv}.json": "PersistentVolume",
            }
            for path, kind in expected.items():
                assert path in members, f"{path} missing; tarball has {sorted(members)}"
                assert members[path]["kind"] == kind
                assert members[path]["metadata"]["name"] == Path(path).stem
            assert not [p for p in members if "ark-restic-credentials" in p], "a restic key Secret was backed up"
            # Only the PV bound to an included claim: no other cluster-scoped resources.
            assert {p for p in members if "/cluster/" in p} == {
                f"resources/namespaces/cluster/{app}.json",
                f"resources/persistentvolumes/cluster/{pv}.json",
            }

            metadata = orjson.loads(await store.get("nightly/ark-backup.json"))
            assert metadata["kind"] == "Backup" and metadata["apiVersion"] == API_VERSION
            assert metadata["status"]["phase"] == "Completed"
            assert metadata["status"]["completionTimestamp"] == status["completionTimestamp"]
            assert metadata["spec"]["includedNamespaces"] == [app]
            log_text = gzip.decompress(await store.get("nightly/nightly-logs.gz")).decode()
            assert "backup finished" in log_text and "backup=" in log_text
            assert orjson.loads(gzip.decompress(await store.get("nightly/nightly-podvolumebackups.json.gz"))) == []
            await store.close()

            assert server.metric("ark_backup_attempt_total", schedule="") == 1
            assert server.metric("ark_backup_success_total", schedule="") == 1
            assert server.metric("ark_backup_items", schedule="") == len(members)
            assert server.metric("ark_backup_tarball_size_bytes", schedule="") > 0

            async def completed_event() -> Obj | None:
                events = await kube.list(EVENTS, namespace)
                found = [e for e in events if e["involvedObject"]["name"] == "nightly"]
                return next((e for e in found if e["reason"] == "BackupCompleted"), None)

            await eventually(completed_event, "a BackupCompleted event")
    finally:
        with contextlib.suppress(Exception):
            await kube.delete(PVS, pv)


async def test_invalid_spec_fails_validation_with_every_reason(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    async with ark_server(envtest, namespace) as server:
        await kube.create(
            BACKUPS,
            backup_object(
                namespace,
                "bad",
                includedResources=["configmaps", "foo"],
                labelSelector={"matchLabels": {"bad key!": "x"}},
            ),
        )
        done = await wait_phase(kube, namespace, "bad", {"FailedValidation", "InProgress", "Completed"})
        assert done["status"]["phase"] == "FailedValidation"
        errors = done["status"]["validationErrors"]
        assert "unknown resource: foo" in errors
        assert any(e.startswith("invalid label selector: key 'bad key!'") for e in errors), errors
        assert "startTimestamp" not in done["status"]
        assert server.metric("ark_backup_validation_failure_total", schedule="") == 1
        assert server.metric("ark_backup_attempt_total", schedule="") == 0
        assert not await local_store(root).list_keys("bad/")


async def test_unwritable_storage_fails_the_backup_with_the_reason(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    # The configured storage path does not exist (the bucket directory is only created inside an existing path).
    root = str(Path(tempfile.mkdtemp(prefix="arkd-backups-")) / "missing")
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    async with ark_server(envtest, namespace) as server:
        await kube.create(BACKUPS, backup_object(namespace, "nowhere", includedNamespaces=[namespace]))
        done = await wait_phase(kube, namespace, "nowhere", {"Completed", "PartiallyFailed", "Failed"})
        assert done["status"]["phase"] == "Failed"
        reason = done["status"]["failureReason"]
        assert reason.startswith("cannot upload the backup tarball to "), reason
        assert "does not exist" in reason
        assert server.metric("ark_backup_failure_total", schedule="") == 1
        assert not Path(root, "backups").exists(), "nothing may claim to be a backup"


async def test_restore_only_mode_refuses_backups(envtest: Envtest, namespace: str, kube: KubeClient) -> None:
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root, restoreOnlyMode=True), namespace)
    async with ark_server(envtest, namespace):
        await kube.create(BACKUPS, backup_object(namespace, "refused"))
        done = await wait_phase(kube, namespace, "refused", {"FailedValidation", "InProgress", "Completed"})
        assert done["status"]["phase"] == "FailedValidation"
        assert any("restore-only mode" in e for e in done["status"]["validationErrors"])


async def test_backup_to_s3_keeps_restic_keys_out(
    envtest: Envtest, namespace: str, kube: KubeClient, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", s3.credentials_file)
    monkeypatch.setenv("AWS_CONFIG_FILE", s3.config_file)
    bucket = f"ark-{secrets.token_hex(4)}"
    s3.make_bucket(bucket)
    provider: Obj = {
        "name": "aws",
        "bucket": bucket,
        "config": {"region": s3.region, "s3Url": s3.endpoint, "s3ForcePathStyle": "true"},
    }
    await kube.create(
        CONFIGS,
        {
            "apiVersion": API_VERSION,
            "kind": "Config",
            "metadata": {"name": "default", "namespace": namespace},
            "backupStorageProvider": provider,
        },
        namespace,
    )
    # arkd's restic keys live in the Ark namespace; back that namespace up too.
    await kube.create(
        SECRETS, secret("ark-restic-credentials-demo", {RESTIC_KEY_LABEL: "demo"}), namespace
    )
    await kube.create(SECRETS, secret("cloud-credentials"), namespace)
    async with app_namespace(kube) as app, ark_server(envtest, namespace) as server:
        await kube.create(
            CONFIGMAPS,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"}, "data": {"a": "b"}},
            app,
        )
        await kube.create(
            BACKUPS,
            {
                **backup_object(namespace, "to-s3", includedNamespaces=[app, namespace]),
                "metadata": {"name": "to-s3", "namespace": namespace, "labels": {"ark-schedule": "daily"}},
            },
        )
        done = await wait_phase(kube, namespace, "to-s3", {"Completed", "PartiallyFailed", "Failed"})
        assert done["status"]["phase"] == "Completed", done["status"]
        assert server.metric("ark_backup_success_total", schedule="daily") == 1

        store = make_store("aws", bucket, provider["config"])
        try:
            assert await store.list_keys("to-s3/") == [
                "to-s3/ark-backup.json",
                "to-s3/to-s3-logs.gz",
                "to-s3/to-s3-podvolumebackups.json.gz",
                "to-s3/to-s3.tar.gz",
            ]
            members = tarball_members(await store.get("to-s3/to-s3.tar.gz"))
            assert f"resources/configmaps/namespaces/{app}/app-config.json" in members
            assert f"resources/secrets/namespaces/{namespace}/cloud-credentials.json" in members
            assert f"resources/secrets/namespaces/{namespace}/ark-restic-credentials-demo.json" not in members
            metadata_text = (await store.get("to-s3/ark-backup.json")).decode()
            assert metadata_text.startswith("{\n  "), "ark-backup.json is pretty-printed"
            assert orjson.loads(metadata_text)["metadata"]["labels"] == {"ark-schedule": "daily"}
        finally:
            await store.close()


async def test_a_namespace_bigger_than_a_list_page_is_backed_up_whole_and_once(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    # 1,100 ConfigMaps are three list pages of 500; half of them carry the label selected below.
    root = local_root()
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    async with app_namespace(kube) as app, ark_server(envtest, namespace):
        gate = asyncio.Semaphore(32)

        async def make(i: int) -> None:
            labels = {"tier": "even" if i % 2 == 0 else "odd"}
            body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"i": str(i)},
                    "metadata": {"name": f"cm-{i:04d}", "labels": labels}}
            async with gate:
                await kube.create(CONFIGMAPS, body, app)

        await asyncio.gather(*(make(i) for i in range(1100)))
        await kube.create(BACKUPS, backup_object(namespace, "whole", includedNamespaces=[app]))
        await kube.create(BACKUPS, backup_object(
            namespace, "evens", includedNamespaces=[app], labelSelector={"matchLabels": {"tier": "even"}}
        ))
        store = local_store(root)
        for name, wanted in (("whole", range(1100)), ("evens", range(0, 1100, 2))):
            done = await wait_phase(kube, namespace, name, {"Completed", "PartiallyFailed", "Failed"})
            assert done["status"]["phase"] == "Completed", done["status"]
            with tarfile.open(fileobj=io.BytesIO(await store.get(f"{name}/{name}.tar.gz")), mode="r:gz") as tar:
                paths = [m.name for m in tar.getmembers() if "/configmaps/" in m.name]
            assert len(paths) == len(set(paths)), f"backup {name} holds some ConfigMaps twice"
            assert sorted(paths) == [f"resources/configmaps/namespaces/{app}/cm-{i:04d}.json" for i in wanted]
        await store.close()
