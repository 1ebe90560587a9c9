"""The Restore controller of `ark server` on the real kube-apiserver.

Each test runs the controller the way `ark server` wires it (shared informers, Config `default`
from the cluster, the object store it names) in a fresh Ark namespace. Backups are written straight
to the store as Ark 0.9 lays them out (`<backup>/<backup>.tar.gz` + `ark-backup.json`) plus a
Completed Backup object, as backup sync would create it; the tests then create Restores through the
API and check what lands in the cluster and in the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import secrets
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from arkd.api.constants import API_VERSION, RESTORE_LABEL
from arkd.backup.tarball import TarballWriter
from arkd.config import ServerSettings
from arkd.controllers.config import ConfigHolder
from arkd.controllers.resources import BACKUPS, CONFIGS, RESTORES
from arkd.controllers.restore import RestoreController
from arkd.controllers.runtime import Informers, ServerContext
from arkd.kube.client import KubeClient
from arkd.kube.clock import RealClock
from arkd.kube.controller import ControllerMetrics
from arkd.kube.errors import NotFound
from arkd.kube.events import EventRecorder
from arkd.kube.resource import (
    CONFIGMAPS,
    EVENTS,
    NAMESPACES,
    PODS,
    PVCS,
    PVS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    Resource,
)
from arkd.metrics import ServerMetrics
from arkd.storage import ObjectStore, make_store
from arkd.storage.layout import backup_metadata_key, backup_tarball_key, restore_log_key, restore_results_key
from tests.envtest.harness import Envtest
from tests.support.moto import MotoServer, free_port

Obj = dict[str, Any]
T = TypeVar("T")
Item = tuple[str, str | None, str, Obj]  # group-resource, namespace (None: cluster-scoped), name, object

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
WAIT_SECONDS = 90.0
FINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}


# --------------------------------------------------------------------------- harness (also used by
# test_restore_podvolumes.py)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT_SECONDS) -> T:
    """The first non-None result of `probe`, polled; fails with `what` if there is none in time."""
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
    """The Restore controller of `ark server` in this event loop, built the way app.py builds it."""

    envtest: Envtest
    namespace: str
    settings: dict[str, Any] = field(default_factory=dict)
    ctx: ServerContext | None = None
    controller: RestoreController | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> ArkServer:
        client = await KubeClient.connect(self.envtest.kubeconfig)
        clock = RealClock()
        informers = Informers(client, clock)
        recorder = EventRecorder(client, "ark-server", clock=clock)
        registry = CollectorRegistry()
        holder = ConfigHolder(informers.get(CONFIGS, self.namespace), self.namespace, recorder)
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
        self.controller = RestoreController(self.ctx)
        informers.start()
        recorder.start()
        self._task = asyncio.create_task(self.controller.run())
        return self

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        assert self.ctx is not None and self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ctx.informers.stop()
        await self.ctx.recorder.close(timeout=2)
        await self.ctx.config.close()
        await self.ctx.client.close()

    def metric(self, name: str) -> float:
        assert self.ctx is not None
        return self.ctx.registry.get_sample_value(name) or 0.0


@contextlib.asynccontextmanager
async def ark_server(envtest: Envtest, namespace: str, **settings: Any) -> AsyncIterator[ArkServer]:
    server = await ArkServer(envtest, namespace, settings).start()
    try:
        yield server
    finally:
        await server.stop()


def local_root() -> str:
    """A storage directory with its "backups" bucket, as the local provider expects."""
    root = tempfile.mkdtemp(prefix="arkd-restore-test-")
    (Path(root) / "backups").mkdir()
    return root


def local_store(root: str) -> ObjectStore:
    return make_store("local", "backups", {"path": root})


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


def random_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def live(api_version: str, kind: str, name: str, namespace: str | None = None, **fields: Any) -> Obj:
    """An object as a live cluster returns it: server-set metadata and status included."""
    meta: Obj = {
        "name": name,
        "uid": str(uuid.uuid4()),
        "resourceVersion": "4711",
        "creationTimestamp": "2018-07-01T10:00:00Z",
        "generation": 3,
        "managedFields": [{"manager": "kubectl", "operation": "Update"}],
    }
    if namespace:
        meta["namespace"] = namespace
    meta.update(fields.pop("metadata", {}))
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **fields}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def write_tarball(store: ObjectStore, backup: str, items: list[Item]) -> None:
    """`<backup>/<backup>.tar.gz` written by arkd's own streaming tarball writer."""
    writer = TarballWriter()
    put = asyncio.create_task(store.put(backup_tarball_key(backup), writer.chunks()))
    for gr, ns, name, obj in items:
        await writer.add(gr, ns, name, obj)
    await writer.close()
    await put


def backup_json(namespace: str, name: str, **status: Any) -> Obj:
    """The Backup object as Ark 0.9 writes `ark-backup.json`."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "100",
            "creationTimestamp": "2018-07-01T10:00:00Z",
        },
        "spec": {
            "includedNamespaces": ["*"],
            "excludedNamespaces": None,
            "includedResources": None,
            "excludedResources": None,
            "labelSelector": None,
            "snapshotVolumes": None,
            "ttl": "720h0m0s",
            "includeClusterResources": None,
            "hooks": {"resources": None},
        },
        "status": {
            "version": 1,
            "expiration": "2018-07-31T10:00:00Z",
            "phase": "Completed",
            "volumeBackups": None,
            "validationErrors": None,
            **status,
        },
    }


async def create_backup(kube: KubeClient, ark_ns: str, name: str, phase: str = "Completed") -> Obj:
    """The Backup object, as backup sync creates it from `ark-backup.json`."""
    body = backup_json(ark_ns, name)
    await kube.create(
        BACKUPS, {"apiVersion": API_VERSION, "kind": "Backup", "metadata": {"name": name}, "spec": body["spec"]},
        ark_ns,
    )
    # The status subresource ignores status on create.
    return await kube.patch(BACKUPS, name, {"status": {**body["status"], "phase": phase}}, ark_ns, subresource="status")


async def store_backup(store: ObjectStore, kube: KubeClient, ark_ns: str, name: str, items: list[Item]) -> None:
    await write_tarball(store, name, items)
    await store.put(backup_metadata_key(name), orjson.dumps(backup_json(ark_ns, name), option=orjson.OPT_INDENT_2))
    await create_backup(kube, ark_ns, name)


async def create_restore(kube: KubeClient, ark_ns: str, name: str, **spec: Any) -> Obj:
    metadata: Obj = {"name": name}
    annotations = spec.pop("annotations", None)
    if annotations:
        metadata["annotations"] = annotations
    return await kube.create(
        RESTORES, {"apiVersion": API_VERSION, "kind": "Restore", "metadata": metadata, "spec": spec}, ark_ns
    )


async def wait_restore(kube: KubeClient, ark_ns: str, name: str, phases: set[str] = FINAL) -> Obj:
    async def probe() -> Obj | None:
        obj = await kube.get(RESTORES, name, ark_ns)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    return await eventually(probe, f"restore {name} to reach {sorted(phases)}")


async def results_of(store: ObjectStore, backup: str, restore: str) -> Obj:
    data: Obj = orjson.loads(gzip.decompress(await store.get(restore_results_key(backup, restore))))
    return data


async def log_of(store: ObjectStore, backup: str, restore: str) -> str:
    return gzip.decompress(await store.get(restore_log_key(backup, restore))).decode()


async def namespace_names(kube: KubeClient) -> set[str]:
    return {str(n["metadata"]["name"]) for n in await kube.list(NAMESPACES)}


async def events_for(kube: KubeClient, ark_ns: str, name: str) -> list[Obj]:
    return [e for e in await kube.list(EVENTS, ark_ns) if e["involvedObject"].get("name") == name]


async def delete_namespaces(kube: KubeClient, *names: str) -> None:
    # No namespace controller runs here: deleted namespaces stay Terminating; just start the deletion.
    for name in names:
        with contextlib.suppress(Exception):
            await kube.delete(NAMESPACES, name)


# --------------------------------------------------------------------------- an application namespace


def app_items(src: str, pv_name: str) -> list[Item]:
    """A namespace as Ark 0.9 would have backed it up, with the clutter a live cluster adds."""
    labels = {"app": "shop", "tier": "web"}
    annotations = {"team": "checkout", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    deployment = live(
        "apps/v1", "Deployment", "web", src,
        metadata={"labels": labels, "annotations": {"deployment.kubernetes.io/revision": "3"}},
        spec={
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.15", "ports": [{"containerPort": 80}]}]},
            },
        },
        status={"replicas": 2, "readyReplicas": 2},
    )
    replicaset = live(
        "apps/v1", "ReplicaSet", "web-5d4f8", src,
        metadata={
            "labels": {"app": "shop"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-1", "controller": True}
            ],
        },
        spec={
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.15"}]},
            },
        },
    )
    pod = live(
        "v1", "Pod", "web-5d4f8-abcde", src,
        metadata={
            "labels": {"app": "shop"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f8", "uid": "rs-1", "controller": True}
            ],
        },
        spec={"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.15"}]},
        status={"phase": "Running"},
    )
    service = live(
        "v1", "Service", "web", src,
        metadata={"labels": labels, "annotations": annotations},
        spec={
            "type": "ClusterIP",
            "clusterIP": "10.96.0.55",  # the old cluster's IP: outside this cluster's range
            "selector": {"app": "shop"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
        status={"loadBalancer": {}},
    )
    config = live(
        "v1", "ConfigMap", "settings", src,
        metadata={"labels": labels, "annotations": annotations},
        data={"LOG_LEVEL": "debug", "config.yaml": "a: 1\nb: [x, y]\n"},
    )
    scripts = live("v1", "ConfigMap", "scripts", src, data={"start.sh": "#!/bin/sh\nexec web\n"})
    secret = live(
        "v1", "Secret", "db-credentials", src,
        metadata={"labels": labels},
        type="Opaque",
        data={"username": b64("shop"), "password": b64("s3cr3t!")},
    )
    tls = live(
        "v1", "Secret", "tls", src, type="kubernetes.io/tls", data={"tls.crt": b64("CERT"), "tls.key": b64("KEY")}
    )
    claim = live(
        "v1", "PersistentVolumeClaim", "data", src,
        metadata={
            "labels": labels,
            "annotations": {"pv.kubernetes.io/bind-completed": "yes", "team": "checkout"},
        },
        spec={
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "volumeName": pv_name,
        },
        status={"phase": "Bound"},
    )
    volume = live(
        "v1", "PersistentVolume", pv_name,
        spec={
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": "/data/pv"},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": src, "name": "data", "uid": "c-1"},
        },
        status={"phase": "Bound"},
    )
    account = live(
        "v1", "ServiceAccount", "builder", src,
        metadata={"labels": labels},
        secrets=[{"name": "builder-token-x1y2z"}, {"name": "registry"}],
        imagePullSecrets=[{"name": "registry"}],
    )
    event = live(
        "v1", "Event", "web.1537c", src,
        involvedObject={"kind": "Pod", "name": "web", "namespace": src},
        reason="Started", message="started", type="Normal",
    )
    namespace = live(
        "v1", "Namespace", src,
        metadata={"labels": {"env": "prod"}, "annotations": {"owner": "shop-team"}},
        spec={"finalizers": ["kubernetes"]},
        status={"phase": "Active"},
    )
    return [
        ("namespaces", None, src, namespace),
        ("persistentvolumes", None, pv_name, volume),
        ("deployments.apps", src, "web", deployment),
        ("replicasets.apps", src, "web-5d4f8", replicaset),
        ("pods", src, "web-5d4f8-abcde", pod),
        ("services", src, "web", service),
        ("configmaps", src, "settings", config),
        ("configmaps", src, "scripts", scripts),
        ("secrets", src, "db-credentials", secret),
        ("secrets", src, "tls", tls),
        ("persistentvolumeclaims", src, "data", claim),
        ("serviceaccounts", src, "builder", account),
        ("events", src, "web.1537c", event),
    ]


async def check_restored_app(kube: KubeClient, target: str, restore: str, items: list[Item]) -> None:
    """Everything of `app_items` that should come back did, with equal data, labels and annotations."""
    source = {(gr, name): obj for gr, _, name, obj in items}

    def expect_meta(found: Obj, original: Obj) -> None:
        meta, orig = found["metadata"], original["metadata"]
        assert meta["labels"] == {**(orig.get("labels") or {}), RESTORE_LABEL: restore}
        assert meta.get("annotations") == orig.get("annotations")
        assert meta["uid"] != orig["uid"]
        assert "ownerReferences" not in meta

    ns = await kube.get(NAMESPACES, target)
    assert ns["metadata"]["labels"] == {"env": "prod", RESTORE_LABEL: restore, **(
        {"kubernetes.io/metadata.name": target} if "kubernetes.io/metadata.name" in ns["metadata"]["labels"] else {}
    )}
    assert ns["metadata"]["annotations"] == {"owner": "shop-team"}

    dep = await kube.get(DEPLOYMENTS, "web", target)
    expect_meta(dep, source[("deployments.apps", "web")])
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.15"
    assert dep["metadata"]["generation"] == 1  # a new object, not the backed-up generation 3

    svc = await kube.get(SERVICES, "web", target)
    expect_meta(svc, source[("services", "web")])
    assert svc["spec"]["clusterIP"] != "10.96.0.55"
    assert svc["spec"]["ports"][0]["targetPort"] == 8080

    for name in ("settings", "scripts"):
        cm = await kube.get(CONFIGMAPS, name, target)
        expect_meta(cm, source[("configmaps", name)])
        assert cm["data"] == source[("configmaps", name)]["data"]
    for name in ("db-credentials", "tls"):
        secret = await kube.get(SECRETS, name, target)
        expect_meta(secret, source[("secrets", name)])
        assert secret["data"] == source[("secrets", name)]["data"]
        assert secret["type"] == source[("secrets", name)]["type"]

    pvc = await kube.get(PVCS, "data", target)
    assert pvc["metadata"]["labels"][RESTORE_LABEL] == restore
    # Its volume had reclaim policy Delete and no snapshot: the claim is reset for a fresh volume.
    assert "volumeName" not in pvc["spec"]
    assert pvc["metadata"]["annotations"] == {"team": "checkout"}
    assert pvc["spec"]["resources"] == {"requests": {"storage": "1Gi"}}

    sa = await kube.get(SERVICEACCOUNTS, "builder", target)
    expect_meta(sa, source[("serviceaccounts", "builder")])
    assert sa["secrets"] == [{"name": "registry"}]  # the old cluster's token secret is dropped
    assert sa["imagePullSecrets"] == [{"name": "registry"}]

    # Controlled objects are left to their controllers; events are never restored.
    assert await kube.list(REPLICASETS, target) == []
    assert await kube.list(PODS, target) == []
    assert [e for e in await kube.list(EVENTS, target) if e["metadata"]["name"] == "web.1537c"] == []


# --------------------------------------------------------------------------- tests


async def test_restores_a_namespace_then_into_a_mapped_namespace_then_warns_on_existing(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    store = local_store(root)
    src, dst = random_name("shop"), random_name("shop-copy")
    pv_name = random_name("pv")
    items = app_items(src, pv_name)
    before = await namespace_names(kube)
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    await store_backup(store, kube, namespace, "nightly", items)
    try:
        async with ark_server(envtest, namespace) as server:
            # 1. Into the original namespace, which does not exist any more.
            await create_restore(kube, namespace, "first", backupName="nightly")
            first = await wait_restore(kube, namespace, "first")
            assert first["status"]["phase"] == "Completed", first["status"]
            assert first["status"]["startTimestamp"] <= first["status"]["completionTimestamp"]
            assert first["status"]["errors"] == 0
            assert first["status"]["warnings"] == 0
            await check_restored_app(kube, src, "first", items)
            with pytest.raises(NotFound):
                await kube.get(PVS, pv_name)  # reclaim policy Delete, no snapshot: not re-created
            assert await namespace_names(kube) - before == {src}

            results = await results_of(store, "nightly", "first")
            assert results == {
                "warnings": {"ark": [], "cluster": [], "namespaces": {}},
                "errors": {"ark": [], "cluster": [], "namespaces": {}},
            }
            restore_log = await log_of(store, "nightly", "first")
            assert "restore=" + namespace + "/first" in restore_log
            assert f'msg=restored restore={namespace}/first item="configmaps {src}/settings"' in restore_log
            assert f'msg="not restoring pods {src}/web-5d4f8-abcde: it has a controller owner"' in restore_log

            # 2. Into a new namespace through namespaceMapping.
            await create_restore(kube, namespace, "second", backupName="nightly", namespaceMapping={src: dst})
            second = await wait_restore(kube, namespace, "second")
            assert second["status"]["phase"] == "Completed", second["status"]
            await check_restored_app(kube, dst, "second", items)
            assert await namespace_names(kube) - before == {src, dst}

            # 3. Again into the original namespace: what exists is left alone and reported.
            await kube.patch(CONFIGMAPS, "settings", {"data": {"LOG_LEVEL": "info"}}, src)
            await create_restore(kube, namespace, "third", backupName="nightly", includedNamespaces=[src])
            third = await wait_restore(kube, namespace, "third")
            assert third["status"]["phase"] == "Completed", third["status"]
            assert third["status"]["errors"] == 0
            warnings = (await results_of(store, "nightly", "third"))["warnings"]
            expected = {
                f"not restored: {gr} {src}/{name} already exists; left as it is"
                for gr, name in [
                    ("deployments.apps", "web"), ("services", "web"), ("configmaps", "settings"),
                    ("configmaps", "scripts"), ("secrets", "db-credentials"), ("secrets", "tls"),
                    ("persistentvolumeclaims", "data"),
                ]
            }
            assert set(warnings["namespaces"][src]) == expected
            assert third["status"]["warnings"] == len(expected)
            assert (await kube.get(CONFIGMAPS, "settings", src))["data"]["LOG_LEVEL"] == "info"
            assert (await kube.get(CONFIGMAPS, "settings", src))["metadata"]["labels"][RESTORE_LABEL] == "first"

            assert server.metric("ark_restore_attempt_total") == 3
            assert server.metric("ark_restore_success_total") == 3

            async def completed_event() -> Obj | None:
                found = [e for e in await events_for(kube, namespace, "third") if e["reason"] == "RestoreCompleted"]
                return found[0] if found else None

            event = await eventually(completed_event, "a RestoreCompleted event")
            assert "with 7 warnings" in event["message"]
    finally:
        await delete_namespaces(kube, src, dst)


async def test_invalid_restores_fail_validation_with_clear_messages(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    store = local_store(root)
    src = random_name("shop")
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    await store_backup(store, kube, namespace, "good", [("configmaps", src, "c", live("v1", "ConfigMap", "c", src))])
    await create_backup(kube, namespace, "running", phase="InProgress")
    before = await namespace_names(kube)
    cases: dict[str, tuple[Obj, list[str]]] = {
        "no-backup-name": ({}, ["spec.backupName is required"]),
        "missing-backup": ({"backupName": "nope"}, [f"backup nope not found in namespace {namespace}"]),
        "unfinished-backup": (
            {"backupName": "running"},
            ["backup running is InProgress: only a Completed or PartiallyFailed backup can be restored"],
        ),
        "non-restorable": ({"backupName": "good", "includedResources": ["nodes", "Event"]}, [
            "nodes are non-restorable resources", "events are non-restorable resources",
        ]),
        "unknown-resource": ({"backupName": "good", "includedResources": ["flurbs"]}, ["unknown resource: flurbs"]),
        "bad-includes": (
            {"backupName": "good", "includedNamespaces": ["*", "a"], "excludedResources": ["*"]},
            [
                "invalid includedNamespaces/excludedNamespaces: includes list must either contain '*' only, "
                "or a non-empty list of items",
                "invalid includedResources/excludedResources: excludes list cannot contain '*'",
            ],
        ),
        "bad-selector": (
            {"backupName": "good", "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}},
            ["invalid label selector: 'Near' is not a valid label selector operator"],
        ),
        "bad-mapping": (
            {"backupName": "good", "namespaceMapping": {src: "Not_A_Namespace"}},
            [f"invalid namespaceMapping {src!r}: 'Not_A_Namespace'"],
        ),
    }
    async with ark_server(envtest, namespace) as server:
        for name, (spec, _) in cases.items():
            await create_restore(kube, namespace, name, **spec)
        for name, (_, expected) in cases.items():
            obj = await wait_restore(kube, namespace, name)
            status = obj["status"]
            assert status["phase"] == "FailedValidation", (name, status)
            for fragment in expected:
                assert any(fragment in e for e in status["validationErrors"]), (name, fragment, status)
        assert server.metric("ark_restore_validation_failure_total") == len(cases)
        assert server.metric("ark_restore_attempt_total") == 0

        # The controller is still working: a valid restore runs.
        await create_restore(kube, namespace, "valid", backupName="good")
        assert (await wait_restore(kube, namespace, "valid"))["status"]["phase"] == "Completed"
        assert server.running
    try:
        assert await namespace_names(kube) - before == {src}
        assert await kube.list(CONFIGMAPS, src, label_selector=f"{RESTORE_LABEL}=valid") != []
    finally:
        await delete_namespaces(kube, src)


def tar_gz(entries: list[tuple[str, bytes]], *, mode: int = 0o755) -> bytes:
    """A gzipped tar of regular files, written the way Go's archive/tar writes Ark's."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_broken_backups_fail_the_restore_and_create_nothing(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    store = local_store(root)
    src = random_name("shop")
    good = tar_gz([(f"resources/configmaps/namespaces/{src}/c.json", orjson.dumps(live("v1", "ConfigMap", "c", src)))])
    outside = Path(root) / "escaped.json"
    bad: dict[str, tuple[bytes | None, str]] = {
        "garbage": (b"this is not a gzip file at all", "backup tarball is corrupt or truncated: bad gzip data"),
        "truncated": (good[: len(good) // 2], "backup tarball is corrupt or truncated"),
        "dotdot": (
            tar_gz([(f"resources/configmaps/namespaces/{src}/c.json", b"{}"), ("resources/../../escaped.json", b"{}")]),
            "backup tarball entry 'resources/../../escaped.json' rejected: path contains '..'",
        ),
        "absolute": (
            tar_gz([(str(outside), b"{}")]),
            f"backup tarball entry {str(outside)!r} rejected: absolute path",
        ),
        "no-tarball": (None, "the backup tarball no-tarball/no-tarball.tar.gz is not in"),
    }
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    for name, (data, _) in bad.items():
        if data is not None:
            await store.put(backup_tarball_key(name), data)
        await create_backup(kube, namespace, name)
    before = await namespace_names(kube)
    async with ark_server(envtest, namespace) as server:
        for name in bad:
            await create_restore(kube, namespace, f"from-{name}", backupName=name)
        for name, (_, reason) in bad.items():
            status = (await wait_restore(kube, namespace, f"from-{name}"))["status"]
            assert status["phase"] == "Failed", (name, status)
            assert reason in status["failureReason"], (name, status)
            assert status["errors"] == 1
            results = await results_of(store, name, f"from-{name}")
            assert reason in results["errors"]["ark"][0]
        assert server.metric("ark_restore_failure_total") == len(bad)

        async def failed_event() -> Obj | None:
            found = [e for e in await events_for(kube, namespace, "from-garbage") if e["reason"] == "RestoreFailed"]
            return found[0] if found else None

        assert "corrupt or truncated" in (await eventually(failed_event, "a RestoreFailed event"))["message"]
        assert server.running
    assert await namespace_names(kube) == before
    assert not outside.exists()


async def test_rejected_object_partially_fails_and_the_rest_is_restored(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    store = local_store(root)
    src = random_name("shop")
    items: list[Item] = [
        ("configmaps", src, "fine", live("v1", "ConfigMap", "fine", src, data={"k": "v"})),
        ("configmaps", src, "broken", live("v1", "ConfigMap", "broken", src, data={"not a valid key!": "v"})),
        ("secrets", src, "also-fine", live("v1", "Secret", "also-fine", src, data={"k": b64("v")})),
    ]
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    await store_backup(store, kube, namespace, "b", items)
    before = await namespace_names(kube)
    try:
        async with ark_server(envtest, namespace) as server:
            await create_restore(kube, namespace, "r", backupName="b")
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "PartiallyFailed", status
            assert status["errors"] == 1
            assert f"error restoring configmaps {src}/broken" in status["failureReason"]
            errors = (await results_of(store, "b", "r"))["errors"]["namespaces"][src]
            assert len(errors) == 1
            # The apiserver's own message says what is wrong with the object.
            assert "a valid config key must consist of alphanumeric characters" in errors[0]
            assert server.metric("ark_restore_partial_failure_total") == 1
            assert server.running
        assert (await kube.get(CONFIGMAPS, "fine", src))["data"] == {"k": "v"}
        assert (await kube.get(SECRETS, "also-fine", src))["data"] == {"k": b64("v")}
        assert await namespace_names(kube) - before == {src}
    finally:
        await delete_namespaces(kube, src)


async def test_a_terminating_target_namespace_is_reported_and_skipped(
    envtest: Envtest, namespace: str, kube: KubeClient
) -> None:
    root = local_root()
    store = local_store(root)
    src, dying, fresh = random_name("shop"), random_name("dying"), random_name("fresh")
    other = random_name("other")
    items: list[Item] = [
        ("configmaps", src, "c", live("v1", "ConfigMap", "c", src, data={"k": "v"})),
        ("configmaps", other, "c", live("v1", "ConfigMap", "c", other, data={"k": "w"})),
    ]
    await kube.create(CONFIGS, local_config(namespace, root), namespace)
    await store_backup(store, kube, namespace, "b", items)
    # No namespace controller runs here, so a deleted namespace stays Terminating.
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": dying}})
    await kube.delete(NAMESPACES, dying)
    try:
        async with ark_server(envtest, namespace):
            await create_restore(kube, namespace, "r", backupName="b", namespaceMapping={src: dying, other: fresh})
            status = (await wait_restore(kube, namespace, "r"))["status"]
            assert status["phase"] == "PartiallyFailed", status
            assert status["errors"] == 1
            assert f"namespace {dying} is being deleted (Terminating)" in status["failureReason"]
        assert (await kube.get(CONFIGMAPS, "c", fresh))["data"] == {"k": "w"}
        with pytest.raises(NotFound):
            await kube.get(CONFIGMAPS, "c", dying)
    finally:
        await delete_namespaces(kube, fresh)


async def test_unreachable_object_storage_fails_the_restore(
    envtest: Envtest, namespace: str, kube: KubeClient, s3: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    config = {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": {
            "name": "aws",
            "bucket": "gone",
            "config": {"region": "us-east-1", "s3Url": endpoint, "s3ForcePathStyle": "true"},
        },
    }
    await kube.create(CONFIGS, config, namespace)
    await create_backup(kube, namespace, "b")
    before = await namespace_names(kube)
    async with ark_server(envtest, namespace) as server:
        await create_restore(kube, namespace, "r", backupName="b")
        status = (await wait_restore(kube, namespace, "r"))["status"]
        assert status["phase"] == "Failed", status
        assert f"cannot download the backup tarball b/b.tar.gz from s3://gone at {endpoint}" in status["failureReason"]
        assert server.running
    assert await namespace_names(kube) == before


def go_json(obj: Obj) -> bytes:
    """Go's json.Marshal: compact, with '<', '>' and '&' escaped."""
    return orjson.dumps(obj).replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


async def test_restores_a_bucket_written_by_ark_0_9_on_s3(
    envtest: Envtest, namespace: str, kube: KubeClient, s3: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = random_name("ark")
    s3.make_bucket(bucket)
    src = random_name("legacy")
    backup = "legacy-20180701100000"
    cm = live("v1", "ConfigMap", "app", src, metadata={"labels": {"app": "legacy"}}, data={"url": "http://a?x=1&y=<2>"})
    secret = live("v1", "Secret", "token", src, type="Opaque", data={"token": b64("abc")})
    deployment = live(
        "extensions/v1beta1", "Deployment", "api", src,  # Ark 0.9 era: not served by this cluster any more
        metadata={"labels": {"app": "legacy"}},
        spec={
            "replicas": 1,
            "selector": {"matchLabels": {"app": "legacy"}},
            "template": {"metadata": {"labels": {"app": "legacy"}},
                         "spec": {"containers": [{"name": "api", "image": "legacy:1"}]}},
        },
    )
    ns = live("v1", "Namespace", src, metadata={"labels": {"from": "ark"}})
    tarball = tar_gz([
        (f"resources/namespaces/cluster/{src}.json", go_json(ns)),
        (f"resources/configmaps/namespaces/{src}/app.json", go_json(cm)),
        (f"resources/secrets/namespaces/{src}/token.json", go_json(secret)),
        (f"resources/deployments.apps/namespaces/{src}/api.json", go_json(deployment)),
    ])
    metadata = backup_json(namespace, backup)
    client = s3.client()
    client.put_object(
        Bucket=bucket, Key=f"{backup}/ark-backup.json", Body=orjson.dumps(metadata, option=orjson.OPT_INDENT_2)
    )
    client.put_object(Bucket=bucket, Key=f"{backup}/{backup}.tar.gz", Body=tarball)
    client.put_object(Bucket=bucket, Key=f"{backup}/{backup}-logs.gz", Body=gzip.compress(b'level=info msg="done"\n'))
    config = {
        "apiVersion": API_VERSION,
        "kind": "Config",
        "metadata": {"name": "default", "namespace": namespace},
        "backupStorageProvider": {"name": "aws", "bucket": bucket, "config": s3.store_config()},
    }
    await kube.create(CONFIGS, config, namespace)
    await create_backup(kube, namespace, backup)
    try:
        async with ark_server(envtest, namespace):
            await create_restore(kube, namespace, "from-ark", backupName=backup, includedNamespaces=["*"])
            status = (await wait_restore(kube, namespace, "from-ark"))["status"]
            assert status["phase"] == "Completed", status
        restored_cm = await kube.get(CONFIGMAPS, "app", src)
        assert restored_cm["data"] == {"url": "http://a?x=1&y=<2>"}
        assert restored_cm["metadata"]["labels"] == {"app": "legacy", RESTORE_LABEL: "from-ark"}
        assert (await kube.get(SECRETS, "token", src))["data"] == {"token": b64("abc")}
        api = await kube.get(DEPLOYMENTS, "api", src)
        assert api["spec"]["template"]["spec"]["containers"][0]["image"] == "legacy:1"
        assert (await kube.get(NAMESPACES, src))["metadata"]["labels"]["from"] == "ark"
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{backup}/")["Contents"]}
        assert {f"{backup}/restore-from-ark-results.gz", f"{backup}/restore-from-ark-logs.gz"} <= keys
        results = orjson.loads(gzip.decompress(
            client.get_object(Bucket=bucket, Key=f"{backup}/restore-from-ark-results.gz")["Body"].read()
        ))
        assert results["errors"] == {"ark": [], "cluster": [], "namespaces": {}}
    finally:
        await delete_namespaces(kube, src)
