"""End to end: the real `ark server` process, the `ark` CLI and kubectl against the real apiserver."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envtest.harness import Envtest
from tests.support.processes import ArkProcess, ark, process_env

ARK_NS = "heptio-ark"


def apply(envtest: Envtest, obj: dict) -> None:  # type: ignore[type-arg]
    envtest.kubectl("apply", "-f", "-", input=json.dumps(obj))


@pytest.fixture
def store(tmp_path: Path, envtest: Envtest) -> Iterator[Path]:
    """Config `default` on a local directory store; restores the previous Config afterwards."""
    path = tmp_path / "bucket"
    path.mkdir()
    apply(
        envtest,
        {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Config",
            "metadata": {"name": "default", "namespace": ARK_NS},
            "backupStorageProvider": {"name": "local", "bucket": "ark", "config": {"path": str(path)}},
        },
    )
    yield path / "ark"
    envtest.kubectl("-n", ARK_NS, "delete", "config", "default", "--ignore-not-found")


@pytest.fixture
def server(envtest: Envtest, store: Path, tmp_path: Path) -> Iterator[ArkProcess]:
    proc = ArkProcess("ark-server", ["server"], process_env(envtest.kubeconfig), tmp_path).start()
    yield proc
    proc.stop()


def make_app(envtest: Envtest, ns: str) -> None:
    objs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns,
         "labels": {"app": "web"}, "annotations": {"note": "keep me"}}, "data": {"greeting": "hello", "n": "1"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns},
         "type": "Opaque", "data": {"password": "czNjcjN0"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns,
         "labels": {"app": "web"}},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"serviceAccountName": "web",
                                        "containers": [{"name": "web", "image": "nginx:1.25"}]}}}},
    ]
    for obj in objs:
        apply(envtest, obj)


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


def test_backup_with_cli_follows_ark_layout(envtest: Envtest, namespace: str, server: ArkProcess, store: Path) -> None:
    make_app(envtest, namespace)
    env = process_env(envtest.kubeconfig)
    out = ark("backup", "create", "e2e-b1", "--include-namespaces", namespace, "--wait", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Completed" in out.stdout

    names = tar_names(store / "e2e-b1" / "e2e-b1.tar.gz")
    for expected in (
        f"resources/configmaps/namespaces/{namespace}/settings.json",
        f"resources/secrets/namespaces/{namespace}/creds.json",
        f"resources/services/namespaces/{namespace}/web.json",
        f"resources/serviceaccounts/namespaces/{namespace}/web.json",
        f"resources/persistentvolumeclaims/namespaces/{namespace}/data.json",
        f"resources/deployments.apps/namespaces/{namespace}/web.json",
        f"resources/namespaces/cluster/{namespace}.json",
    ):
        assert expected in names
    meta = json.loads((store / "e2e-b1" / "ark-backup.json").read_text())
    assert meta["kind"] == "Backup" and meta["status"]["phase"] == "Completed"
    assert gzip.decompress((store / "e2e-b1" / "e2e-b1-logs.gz").read_bytes())

    got = ark("backup", "get", "e2e-b1", env=env, check=True).stdout
    assert "e2e-b1" in got and "Completed" in got
    described = ark("backup", "describe", "e2e-b1", env=env, check=True).stdout
    assert f"Included:  {namespace}" in described and "Phase:  Completed" in described
    as_json = json.loads(ark("backup", "get", "e2e-b1", "-o", "json", env=env, check=True).stdout)
    assert as_json["spec"]["ttl"] == "720h0m0s"


def test_cli_errors_are_one_line_and_nonzero(envtest: Envtest, server: ArkProcess) -> None:
    env = process_env(envtest.kubeconfig)
    for args, needle in (
        (["backup", "create", "x", "--ttl", "5 days"], "--ttl"),
        (["backup", "create", "x", "--selector", "a in (b"], "--selector"),
        (["backup", "describe", "does-not-exist"], "not found"),
        (["backup", "get", "does-not-exist"], "backup 'does-not-exist' not found in namespace"),
        (["restore", "get", "does-not-exist"], "restore 'does-not-exist' not found in namespace"),
        (["restore", "create", "--from-backup", "does-not-exist"], "not found"),
        (["restore", "create", "--from-backup", "b", "--namespace-mappings", "nocolon"], "source:target"),
    ):
        proc = ark(*args, env=env)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_invalid_backup_reports_validation_errors_and_server_keeps_running(
    envtest: Envtest, server: ArkProcess
) -> None:
    env = process_env(envtest.kubeconfig)
    proc = ark("backup", "create", "e2e-bad", "--include-resources", "flurbs", "--wait", env=env)
    assert proc.returncode == 1
    described = ark("backup", "describe", "e2e-bad", env=env, check=True).stdout
    assert "FailedValidation" in described and "unknown resource" in described and "flurbs" in described
    server.wait_ready()


def test_sigkill_mid_backup_then_restart_completes_with_whole_tarball(
    envtest: Envtest, namespace: str, store: Path, tmp_path: Path
) -> None:
    env = process_env(envtest.kubeconfig)
    # Enough objects that the backup is still running when the server is killed.
    items = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:04d}", "namespace": namespace},
         "data": {"payload": "x" * 2048}}
        for i in range(1500)
    ]
    envtest.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    server = ArkProcess("ark-server", ["server"], env, tmp_path).start()
    ark("backup", "create", "e2e-kill", "--include-namespaces", namespace, env=env, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = json.loads(envtest.kubectl("-n", ARK_NS, "get", "backup", "e2e-kill", "-o", "json").stdout)
        if (got.get("status") or {}).get("phase") == "InProgress":
            break
        time.sleep(0.05)
    server.kill()
    assert not (store / "e2e-kill" / "ark-backup.json").exists() or json.loads(
        (store / "e2e-kill" / "ark-backup.json").read_text()
    )["status"]["phase"] == "Completed"

    restarted = ArkProcess("ark-server-2", ["server"], env, tmp_path).start()
    try:
        deadline = time.monotonic() + 120
        phase = ""
        while time.monotonic() < deadline:
            got = json.loads(envtest.kubectl("-n", ARK_NS, "get", "backup", "e2e-kill", "-o", "json").stdout)
            phase = (got.get("status") or {}).get("phase", "")
            if phase in ("Completed", "PartiallyFailed", "Failed"):
                break
            time.sleep(0.5)
        assert phase == "Completed", restarted.log_tail()
        names = tar_names(store / "e2e-kill" / "e2e-kill.tar.gz")
        cms = [n for n in names if n.startswith(f"resources/configmaps/namespaces/{namespace}/cm-")]
        assert len(cms) == 1500
    finally:
        assert restarted.stop() == 0


def test_restore_brings_objects_back_and_maps_namespaces(
    envtest: Envtest, namespace: str, server: ArkProcess, store: Path
) -> None:
    make_app(envtest, namespace)
    env = process_env(envtest.kubeconfig)
    ark("backup", "create", "e2e-r", "--include-namespaces", namespace, "--wait", env=env, check=True)
    before = json.loads(envtest.kubectl("-n", namespace, "get", "configmap", "settings", "-o", "json").stdout)
    for kind, name in (("deployment", "web"), ("service", "web"), ("configmap", "settings"), ("secret", "creds"),
                       ("serviceaccount", "web"), ("pvc", "data")):
        envtest.kubectl("-n", namespace, "delete", kind, name, "--wait=false")

    out = ark("restore", "create", "e2e-r1", "--from-backup", "e2e-r", "--wait", env=env)
    assert out.returncode == 0, out.stdout + out.stderr + server.log_tail()
    after = json.loads(envtest.kubectl("-n", namespace, "get", "configmap", "settings", "-o", "json").stdout)
    assert after["data"] == before["data"]
    assert after["metadata"]["labels"]["app"] == "web"
    assert after["metadata"]["labels"]["ark-restore"] == "e2e-r1"
    assert after["metadata"]["annotations"]["note"] == "keep me"
    secret = json.loads(envtest.kubectl("-n", namespace, "get", "secret", "creds", "-o", "json").stdout)
    assert secret["data"]["password"] == "czNjcjN0"
    envtest.kubectl("-n", namespace, "get", "deployment", "web")
    envtest.kubectl("-n", namespace, "get", "pvc", "data")

    mapped = f"{namespace}-copy"
    out = ark("restore", "create", "e2e-r2", "--from-backup", "e2e-r", "--namespace-mappings",
              f"{namespace}:{mapped}", "--wait", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    copy = json.loads(envtest.kubectl("-n", mapped, "get", "configmap", "settings", "-o", "json").stdout)
    assert copy["data"] == before["data"]
    envtest.kubectl("-n", mapped, "get", "deployment", "web")
    results = gzip.decompress((store / "e2e-r" / "restore-e2e-r2-results.gz").read_bytes())
    assert json.loads(io.BytesIO(results).read())["errors"] is not None
    envtest.kubectl("delete", "namespace", mapped, "--wait=false", check=False)
