"""The local demo: arkd's main job end to end on this machine, with nothing to set up by hand.

A real etcd + kube-apiserver on loopback stands in for a cluster; a directory stands in for the
bucket; `ark server` and `ark restic server` run as processes; this script plays the kubelet (it
creates the pod volume folders the node agent reads, and marks the restic-wait init container
running). Every step is printed as a user would type it. Nothing is left running.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.envtest.harness import Envtest, free_port  # noqa: E402

NODE = "demo-node"
APP_NS = "demo"
ARK_NS = "heptio-ark"
BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def say(text: str) -> None:
    print(f"\n{BOLD}# {text}{RESET}", flush=True)


class Demo:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="arkd-demo-"))
        self.store = self.work / "bucket"
        self.restic = self.work / "restic-repos"
        self.host_pods = self.work / "host_pods"
        for d in (self.store, self.restic, self.host_pods):
            d.mkdir()
        self.env: Envtest | None = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    # -- running things the way a user would ---------------------------------------------------
    def child_env(self) -> dict[str, str]:
        assert self.env is not None
        env = dict(os.environ)
        env["KUBECONFIG"] = self.env.kubeconfig
        env["PATH"] = f"{Path(self.env.kubectl_bin).parent}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def sh(self, *args: str, input: str | None = None, check: bool = True, show: bool = True) -> str:
        if show:
            print(f"{DIM}${RESET} {' '.join(args)}", flush=True)
        proc = subprocess.run(
            list(args), input=input, capture_output=True, text=True, env=self.child_env(), check=False
        )
        out = proc.stdout + (proc.stderr if proc.returncode else "")
        if show and out.strip():
            print(out.rstrip(), flush=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"{RED}demo failed: `{' '.join(args)}` exited with {proc.returncode}{RESET}")
        return proc.stdout

    def kubectl_json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.sh("kubectl", *args, "-o", "json", show=False))  # type: ignore[no-any-return]

    def start(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115
        print(f"{DIM}${RESET} {' '.join(args)} &", flush=True)
        self.procs.append(
            (name, subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, env=self.child_env()))
        )

    # -- the kubelet's part ---------------------------------------------------------------------
    def volume_dir(self, pod_uid: str, volume: str) -> Path:
        return self.host_pods / pod_uid / "volumes" / "kubernetes.io~empty-dir" / volume

    def wait_for(self, what: str, fn, timeout: float = 120):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            time.sleep(0.5)
        raise SystemExit(f"{RED}demo failed: timed out waiting for {what}; logs in {self.work}{RESET}")

    # -- the story ------------------------------------------------------------------------------
    def run(self) -> None:
        say("Start a local control plane (etcd + kube-apiserver 1.20 on loopback) with Ark's CRDs")
        self.env = Envtest().start()
        print(f"kube-apiserver at {self.env.server}; kubeconfig {self.env.kubeconfig}")
        self.sh("kubectl", "apply", "-f", str(REPO / "manifests/common/00-prereqs.yaml"))

        say("Point Ark at a local directory as its bucket, and another for restic repositories")
        config = {
            "apiVersion": "ark.heptio.com/v1",
            "kind": "Config",
            "metadata": {"name": "default", "namespace": ARK_NS},
            "backupStorageProvider": {
                "name": "local",
                "bucket": "ark",
                "config": {"path": str(self.store)},
                "resticLocation": str(self.restic),
            },
            "backupSyncPeriod": "1m",
            "gcSyncPeriod": "1m",
        }
        self.sh("kubectl", "apply", "-f", "-", input=json.dumps(config))

        say("Run the Ark server and the restic node agent of node demo-node")
        self.start(
            "ark-server", "ark", "server", "--metrics-address", f"127.0.0.1:{free_port()}", "--log-format", "text"
        )
        self.start(
            "ark-restic",
            "ark",
            "restic",
            "server",
            "--node-name",
            NODE,
            "--host-pods-dir",
            str(self.host_pods),
            "--metrics-address",
            f"127.0.0.1:{free_port()}",
            "--log-format",
            "text",
        )

        say("An application: namespace demo, a ConfigMap, and pod web with two volumes to back up")
        self.sh("kubectl", "create", "namespace", APP_NS)
        self.sh("kubectl", "-n", APP_NS, "create", "configmap", "settings", "--from-literal=greeting=hello")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": APP_NS, "labels": {"app": "web"}},
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {
                        "name": "web",
                        "image": "nginx:1.25",
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/usr/share/nginx/html"},
                            {"name": "logs", "mountPath": "/var/log/nginx"},
                        ],
                    }
                ],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "logs", "emptyDir": {}}],
            },
        }
        self.sh("kubectl", "apply", "-f", "-", input=json.dumps(pod))
        uid = self.kubectl_json("-n", APP_NS, "get", "pod", "web")["metadata"]["uid"]
        original = self.write_volume_data(uid)
        print(f"(the kubelet's part: wrote {len(original)} files under {self.host_pods / uid / 'volumes'})")
        self.sh("kubectl", "-n", APP_NS, "annotate", "pod/web", "backup.ark.heptio.com/backup-volumes=data,logs")

        say("Create the namespace's restic encryption key, then back the namespace up")
        self.sh("ark", "restic", "init-repository", "--namespace", APP_NS, "--key-size", "64")
        self.sh("ark", "backup", "create", "b1", "--include-namespaces", APP_NS, "--wait")
        self.sh("kubectl", "-n", ARK_NS, "get", "podvolumebackups", "-l", "ark.heptio.com/backup-name=b1")
        self.sh("ark", "backup", "describe", "b1", "--details")
        self.sh("ark", "restic", "repo", "get")

        say("Disaster: delete the application")
        self.sh("kubectl", "-n", APP_NS, "delete", "pod", "web", "--grace-period=0", "--force")
        self.sh("kubectl", "-n", APP_NS, "delete", "configmap", "settings")
        shutil.rmtree(self.host_pods / uid)

        say("Restore it from the backup")
        restore = subprocess.Popen(
            ["ark", "restore", "create", "r1", "--from-backup", "b1", "--wait"], env=self.child_env()
        )
        print(f"{DIM}${RESET} ark restore create r1 --from-backup b1 --wait")
        new = self.wait_for(
            "the restored pod",
            lambda: self.kubectl_json("-n", APP_NS, "get", "pods")["items"],
        )[0]
        new_uid = new["metadata"]["uid"]
        init = new["spec"].get("initContainers") or []
        print(f"(restored pod web has uid {new_uid} and init containers {[c['name'] for c in init]})")
        restored_uid = self.kubectl_json("-n", ARK_NS, "get", "restore", "r1")["metadata"]["uid"]
        self.play_kubelet_for_restored_pod(new, restored_uid)
        if restore.wait(timeout=300) != 0:
            raise SystemExit(f"{RED}demo failed: the restore did not complete; logs in {self.work}{RESET}")
        self.sh("ark", "restore", "describe", "r1", "--details")
        self.sh("kubectl", "-n", APP_NS, "get", "configmap", "settings", "-o", "jsonpath={.data.greeting}")

        say("Check that the data came back byte for byte")
        restored = self.read_volume_data(new_uid)
        if restored != original:
            missing = sorted(set(original) - set(restored))
            raise SystemExit(f"{RED}demo failed: restored data differs (missing or changed: {missing[:5]}){RESET}")
        print(f"{GREEN}all {len(original)} files restored byte for byte into pod web (uid {new_uid}){RESET}")

    def write_volume_data(self, uid: str) -> dict[str, str]:
        files: dict[str, str] = {}
        for volume, count in (("data", 20), ("logs", 5)):
            root = self.volume_dir(uid, volume)
            root.mkdir(parents=True)
            for i in range(count):
                rel = f"{volume}/dir{i % 3}/file{i}.txt"
                path = root / rel.split("/", 1)[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                body = os.urandom(4096 * (i + 1))
                path.write_bytes(body)
                files[rel] = hashlib.sha256(body).hexdigest()
        return files

    def read_volume_data(self, uid: str) -> dict[str, str]:
        files: dict[str, str] = {}
        for volume in ("data", "logs"):
            root = self.volume_dir(uid, volume)
            for path in root.rglob("*"):
                if path.is_file() and ".ark" not in path.relative_to(root).parts:
                    files[f"{volume}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files

    def play_kubelet_for_restored_pod(self, pod: dict, restore_uid: str) -> None:  # type: ignore[type-arg]
        uid = pod["metadata"]["uid"]
        # The scheduler's part: a restored pod has no node yet (restores drop spec.nodeName).
        self.api(
            "POST",
            f"/api/v1/namespaces/{APP_NS}/pods/web/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": "web"},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
            },
        )
        for volume in ("data", "logs"):
            self.volume_dir(uid, volume).mkdir(parents=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api(
            "PATCH",
            f"/api/v1/namespaces/{APP_NS}/pods/web/status",
            {
                "status": {
                    "phase": "Pending",
                    "initContainerStatuses": [
                        {
                            "name": "restic-wait",
                            "image": "arkd/ark:latest",
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": started}},
                        }
                    ],
                }
            },
        )
        print(
            f"(the scheduler's and kubelet's part: bound pod web to {NODE}, mounted its volumes, "
            "started the restic-wait init container)"
        )
        volumes_dir = self.host_pods / uid / "volumes" / "kubernetes.io~empty-dir"
        self.sh("ark", "restic", "wait", restore_uid, "--restores-dir", str(volumes_dir), "--timeout", "180")

    def api(self, method: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
        import ssl
        import urllib.request

        assert self.env is not None
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req = urllib.request.Request(
            f"{self.env.server}{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.env.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=self.env.ca_file)) as resp:
            resp.read()

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"{DIM}stopped {name} (exit {proc.returncode}){RESET}")
        if self.env is not None:
            self.env.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    demo = Demo()
    try:
        demo.run()
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        for name, _ in demo.procs:
            log = demo.work / f"{name}.log"
            if log.exists():
                print(f"--- last lines of {name} log ---", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-25:]), file=sys.stderr)
        demo.stop()
        return 1
    demo.stop()
    say("Done: nothing is left running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
