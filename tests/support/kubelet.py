"""The scheduler's and the kubelet's part for end-to-end tests, on the real apiserver.

There is no scheduler or kubelet here, so tests do their jobs by hand, the way the real ones do
them: bind a pod to a node through the `pods/binding` subresource, create the pod's volume folders
under the host pods directory (`<host_pods>/<pod uid>/volumes/kubernetes.io~empty-dir/<volume>/`)
and report container states through the `pods/status` subresource. The node agent under test
reads exactly these. Also here: writing volume data a user would have, and comparing directory
trees byte for byte.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tests.envtest.harness import Envtest

Obj = dict[str, Any]
T = TypeVar("T")

EMPTY_DIR = "kubernetes.io~empty-dir"
WAIT_SECONDS = 120.0


def eventually(what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS, interval: float = 0.2) -> T:
    """The first truthy result of `probe`; fails saying what never happened (a safety net, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """The scheduler and the kubelet of one node, whose pods directory is `host_pods`."""

    def __init__(self, envtest: Envtest, node: str, host_pods: Path) -> None:
        self.envtest = envtest
        self.node = node
        self.host_pods = host_pods
        host_pods.mkdir(parents=True, exist_ok=True)
        self._ssl = ssl.create_default_context(cafile=envtest.ca_file)

    # -- the API calls a scheduler and a kubelet make ---------------------------------------------
    def api(self, method: str, path: str, body: Obj | None = None, content_type: str = "application/json") -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.envtest.server}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.envtest.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(req, context=self._ssl, timeout=30) as resp:
            out: Obj = json.loads(resp.read() or b"{}")
            return out

    def pod(self, namespace: str, name: str) -> Obj:
        return self.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def create_pod(
        self, namespace: str, name: str, volumes: Iterable[str], annotations: dict[str, str] | None = None
    ) -> Obj:
        """An unscheduled pod (as a Deployment would make it) with an emptyDir volume per name."""
        names = list(volumes)
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                         "annotations": dict(annotations or {})},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "nginx:1.25",
                        "volumeMounts": [{"name": v, "mountPath": f"/mnt/{v}"} for v in names],
                    }
                ],
                "volumes": [{"name": v, "emptyDir": {}} for v in names],
            },
        }
        return self.api("POST", f"/api/v1/namespaces/{namespace}/pods", body)

    def bind(self, namespace: str, name: str, node: str | None = None) -> Obj:
        """The scheduler's decision: POST pods/binding; returns the bound pod."""
        target = node or self.node
        self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods/{name}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": target},
            },
        )
        pod = self.pod(namespace, name)
        assert pod["spec"]["nodeName"] == target
        return pod

    def _patch_status(self, namespace: str, name: str, status: Obj) -> Obj:
        return self.api(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    def report_running(self, pod: Obj) -> Obj:
        """Every container Running (the pod's init containers, if any, terminated successfully)."""
        meta, spec = pod["metadata"], pod["spec"]
        started = _now()
        status: Obj = {
            "phase": "Running",
            "containerStatuses": [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
                 "started": True, "state": {"running": {"startedAt": started}}}
                for c in spec["containers"]
            ],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                          "finishedAt": started}}}
                for c in spec["initContainers"]
            ]
        return self._patch_status(meta["namespace"], meta["name"], status)

    def start_first_init_container(self, pod: Obj) -> Obj:
        """Pending, with the first init container Running and the others waiting (what restic-wait sees)."""
        meta, spec = pod["metadata"], pod["spec"]
        statuses = []
        for i, c in enumerate(spec["initContainers"]):
            state = {"running": {"startedAt": _now()}} if i == 0 else {"waiting": {"reason": "PodInitializing"}}
            statuses.append({"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                             "restartCount": 0, "state": state})
        return self._patch_status(meta["namespace"], meta["name"],
                                  {"phase": "Pending", "initContainerStatuses": statuses})

    # -- the node's disk ---------------------------------------------------------------------------
    def volumes_dir(self, pod_uid: str) -> Path:
        return self.host_pods / pod_uid / "volumes" / EMPTY_DIR

    def volume_dir(self, pod_uid: str, volume: str) -> Path:
        return self.volumes_dir(pod_uid) / volume

    def mount(self, pod: Obj, volumes: Iterable[str]) -> dict[str, Path]:
        """Create the (empty) emptyDir folders of the pod's volumes, as the kubelet does before starting it."""
        out = {}
        for volume in volumes:
            path = self.volume_dir(pod["metadata"]["uid"], volume)
            path.mkdir(parents=True, exist_ok=True)
            out[volume] = path
        return out

    def run_pod(self, namespace: str, name: str, data: dict[str, Callable[[Path], None]],
                annotations: dict[str, str] | None = None) -> Obj:
        """Create, schedule and start a pod whose volumes hold the data each writer puts there."""
        pod = self.create_pod(namespace, name, data, annotations)
        pod = self.bind(namespace, name)
        for volume, path in self.mount(pod, data).items():
            data[volume](path)
        self.report_running(pod)
        return self.pod(namespace, name)


# ------------------------------------------------------------------------------------ volume data


def user_files(seed: int, size: int = 192 * 1024) -> Callable[[Path], None]:
    """A writer of what a user keeps in a volume: nested folders, binary data, an empty file, a symlink, modes."""

    def write(root: Path) -> None:
        rnd = random.Random(seed)
        (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
        (root / "data.bin").write_bytes(rnd.randbytes(size))
        (root / "nested" / "notes.txt").write_text(f"volume seed {seed}\n" * 200)
        (root / "nested" / "deeper" / "small.bin").write_bytes(rnd.randbytes(1000 + seed))
        (root / "empty").write_bytes(b"")
        (root / "empty-dir").mkdir(exist_ok=True)
        script = root / "run.sh"
        script.write_text("#!/bin/sh\necho hello\n")
        script.chmod(0o750)
        secret = root / "nested" / "private.key"
        secret.write_bytes(rnd.randbytes(64))
        secret.chmod(0o600)
        (root / "latest").symlink_to("nested/notes.txt")

    return write


def big_files(random_mib: int, sparse_mib: int) -> Callable[[Path], None]:
    """A writer of a large volume: `random_mib` MiB of random bytes and a `sparse_mib` MiB sparse file."""

    def write(root: Path) -> None:
        chunk = 1 << 20
        with (root / "random.bin").open("wb") as f:
            for _ in range(random_mib):
                f.write(os.urandom(chunk))
        with (root / "sparse.img").open("wb") as f:
            f.truncate(sparse_mib * chunk)
            f.seek(sparse_mib * chunk // 2)
            f.write(b"the middle of a sparse file")
        (root / "README").write_text("a large volume\n")

    return write


def tree(root: Path, skip: Iterable[str] = ()) -> dict[str, tuple[str, str, int]]:
    """{relative path: (kind, sha-256 of the contents or the link target, permission bits)}."""
    skipped = set(skip)
    out: dict[str, tuple[str, str, int]] = {}
    for dirpath, dirs, files in os.walk(root):
        rel_root = Path(dirpath).relative_to(root)
        dirs[:] = sorted(d for d in dirs if str(rel_root / d) not in skipped)
        for entry in [*dirs, *sorted(files)]:
            full, rel = Path(dirpath) / entry, str(rel_root / entry)
            if rel in skipped:
                continue
            mode = full.lstat().st_mode & 0o7777
            if full.is_symlink():
                out[rel] = ("symlink", os.readlink(full), 0)
            elif full.is_dir():
                out[rel] = ("dir", "", mode)
            else:
                digest = hashlib.sha256()
                with full.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                out[rel] = ("file", digest.hexdigest(), mode)
    return out


def assert_same_tree(expected: Path, actual: Path, skip: Iterable[str] = ()) -> int:
    """Both trees hold the same entries with the same bytes, link targets and modes; returns the entry count."""
    want, got = tree(expected, skip), tree(actual, skip)
    assert got, f"{actual} is empty"
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    assert not (missing or extra or changed), (
        f"{actual} differs from {expected}: missing {missing[:10]}, unexpected {extra[:10]}, "
        f"different {[(k, want[k], got[k]) for k in changed[:5]]}"
    )
    return len(got)


def size_of(root: Path) -> int:
    """Bytes in the regular files under `root` (sparse files count their full length, as restic does)."""
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def key_forms(key: bytes) -> list[bytes]:
    """The ways a key can leak: as it is, and base64-encoded (as it sits in its Secret)."""
    return [key, base64.b64encode(key)]
