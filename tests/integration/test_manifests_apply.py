"""The shipped manifests on a real kube-apiserver 1.20, with kubectl 1.20, as a user applies them.

No controllers run here: a Deployment or DaemonSet is only stored, never started. What is proven is
that every object is accepted (schemas, CRD validation, server-side defaulting) without losing a
field, and that the install and upgrade commands of the docs work against these files.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from arkd.api import Config
from tests.envtest.harness import Envtest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
ARK_NS = "heptio-ark"
# Kinds whose CRDs (the Prometheus Operator's) the test apiserver does not have.
OPERATOR_GROUP = "monitoring.coreos.com/"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _applicable(path: Path) -> list[dict[str, Any]]:
    return [d for d in _docs(path) if not d["apiVersion"].startswith(OPERATOR_GROUP)]


# prometheus/prometheusrule.yaml holds only an operator kind; promtool checks it (tests/unit).
FILES = [p for p in sorted(MANIFESTS.rglob("*.yaml")) if _applicable(p)]


def _missing(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """Fields of `wanted` absent from (or different in) `stored`; server defaults may add, never drop."""
    if isinstance(wanted, dict):
        if not isinstance(stored, dict):
            return [path or "<root>"]
        return [m for k, v in wanted.items() for m in _missing(stored.get(k), v, f"{path}.{k}")]
    if isinstance(wanted, list):
        if not isinstance(stored, list) or len(stored) != len(wanted):
            return [path]
        return [m for i, (s, w) in enumerate(zip(stored, wanted, strict=True)) for m in _missing(s, w, f"{path}[{i}]")]
    return [] if stored == wanted else [f"{path}: {wanted!r} != {stored!r}"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_passes_server_side_dry_run(envtest: Envtest, path: Path) -> None:
    docs = _applicable(path)
    proc = envtest.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    for doc in docs:
        assert f"{doc['kind'].lower()}" in proc.stdout.lower(), proc.stdout
        assert doc["metadata"]["name"] in proc.stdout


def _get(envtest: Envtest, *args: str) -> dict[str, Any]:
    return json.loads(envtest.kubectl("-n", ARK_NS, "get", *args, "-o", "json").stdout)  # type: ignore[no-any-return]


def _image(envtest: Envtest, kind: str, name: str) -> str:
    (container,) = _get(envtest, kind, name)["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def _shell(envtest: Envtest, command: str) -> subprocess.CompletedProcess[str]:
    # The user's shell: this kubectl first on PATH, the test cluster in KUBECONFIG.
    env = dict(os.environ, KUBECONFIG=envtest.kubeconfig)
    env["PATH"] = f"{Path(envtest.kubectl_bin).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_install_upgrade_and_enable_restic_as_documented(envtest: Envtest) -> None:
    aws = MANIFESTS / "aws"
    try:
        envtest.kubectl("apply", "-f", str(MANIFESTS / "common" / "00-prereqs.yaml"))
        for name in ("00-ark-config.yaml", "10-deployment.yaml", "20-restic-daemonset.yaml"):
            out = envtest.kubectl("apply", "-f", str(aws / name)).stdout
            assert "created" in out or "configured" in out or "unchanged" in out, out

        # Stored as written: nothing pruned by a CRD schema or dropped as an unknown field.
        for name, kind, obj_name in (
            ("00-ark-config.yaml", "config", "default"),
            ("10-deployment.yaml", "deployment", "ark"),
            ("20-restic-daemonset.yaml", "daemonset", "restic"),
        ):
            (wanted,) = _docs(aws / name)
            assert _missing(_get(envtest, kind, obj_name), wanted) == []

        # Upgrades: `kubectl set image` on the container named `ark` of both workloads.
        envtest.kubectl("-n", ARK_NS, "set", "image", "deployment/ark", "ark=registry.example/arkd/ark:v0.2.0")
        envtest.kubectl("-n", ARK_NS, "set", "image", "daemonset/restic", "ark=registry.example/arkd/ark:v0.2.0")
        assert _image(envtest, "deployment", "ark") == "registry.example/arkd/ark:v0.2.0"
        assert _image(envtest, "daemonset", "restic") == "registry.example/arkd/ark:v0.2.0"

        # Turning restic on, the seed's way.
        proc = _shell(
            envtest,
            "kubectl -n heptio-ark get config default -o json"
            " | jq '.backupStorageProvider.resticLocation = \"BUCKET\"'"
            " | kubectl apply -f -",
        )
        assert proc.returncode == 0, proc.stderr
        assert "config.ark.heptio.com/default configured" in proc.stdout
        config = Config.from_obj(_get(envtest, "config", "default"))
        assert config.backup_storage_provider.restic_location == "BUCKET"
        assert config.backup_storage_provider.bucket == "<YOUR_BUCKET>"  # the rest is untouched

        # Re-applying the prereqs (an upgrade of arkd) leaves the installation as it is.
        out = envtest.kubectl("apply", "-f", str(MANIFESTS / "common" / "00-prereqs.yaml")).stdout
        assert "configured" not in out and "created" not in out, out
    finally:
        for kind, name in (("config", "default"), ("deployment", "ark"), ("daemonset", "restic")):
            envtest.kubectl("-n", ARK_NS, "delete", kind, name, "--ignore-not-found", "--wait=false", check=False)
