"""A real etcd + kube-apiserver on loopback for tests, the demo and benchmarks.

The apiserver binary is built once from Debian's `kubernetes` source package by
`tests/envtest/setup.sh` into ~/.cache/arkd/envtest/bin. Nothing here is faked: CRDs, watches with
bookmarks, the status subresource, RBAC and server-side validation are the real ones.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("ARKD_ENVTEST_CACHE", Path.home() / ".cache" / "arkd" / "envtest"))
PREREQS = REPO_ROOT / "manifests" / "common" / "00-prereqs.yaml"


class EnvtestError(RuntimeError):
    """The control plane could not be provided; the message says why and what to run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    cached = CACHE_DIR / "bin" / name
    if cached.exists():
        return str(cached)
    found = shutil.which(name)
    if name != "kube-apiserver" and found:
        return found
    raise EnvtestError(
        f"{name} not found in {CACHE_DIR / 'bin'}; run `bash tests/envtest/setup.sh` to install the "
        "packages and build it from Debian's kubernetes source package"
    )


def _make_certs(cert_dir: Path) -> None:
    """A self-signed CA, a serving cert for 127.0.0.1, and the service-account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, path: Path) -> None:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )

    now = datetime.datetime.now(datetime.UTC)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "arkd-envtest-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = key()
    import ipaddress

    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (cert_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "apiserver.crt").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    write_key(srv_key, cert_dir / "apiserver.key")
    sa_key = key()
    write_key(sa_key, cert_dir / "sa.key")
    (cert_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class Envtest:
    """etcd + kube-apiserver processes; `start()` blocks until the apiserver is healthy."""

    def __init__(self, workdir: str | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="arkd-envtest-"))
        self.cert_dir = self.workdir / "pki"
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.ca_file = str(self.cert_dir / "ca.crt")
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self.kubectl_bin = _binary("kubectl")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Envtest:
        apiserver = _binary("kube-apiserver")
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(etcd).exists():
            raise EnvtestError("etcd not found; run `bash tests/envtest/setup.sh` (installs etcd-server)")
        _make_certs(self.cert_dir)
        (self.cert_dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self._etcd = subprocess.Popen(
            [
                etcd,
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(4 * 1024**3),
            ],
            stdout=open(self.workdir / "etcd.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self._wait_http(f"http://127.0.0.1:{self.etcd_port}/health", "etcd", ssl_ctx=None)
        self._apiserver_args = [
            apiserver,
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={self.cert_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={self.cert_dir / 'apiserver.key'}",
            f"--client-ca-file={self.cert_dir / 'ca.crt'}",
            f"--token-auth-file={self.cert_dir / 'tokens.csv'}",
            f"--service-account-key-file={self.cert_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.cert_dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            f"--cert-dir={self.cert_dir}",
            "--watch-cache=true",
            "--max-requests-inflight=1000",
            "--max-mutating-requests-inflight=500",
            "--v=1",
        ]
        self._start_apiserver()
        self._write_kubeconfig(self.token, self.kubeconfig)
        if PREREQS.exists():
            self.install_prereqs()
        return self

    def _start_apiserver(self) -> None:
        self._apiserver = subprocess.Popen(
            self._apiserver_args,
            stdout=open(self.workdir / "apiserver.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        ctx = ssl.create_default_context(cafile=self.ca_file)
        self._wait_http(f"{self.server}/readyz", "kube-apiserver", ssl_ctx=ctx, timeout=90)

    def restart_apiserver(self) -> None:
        """Stop and start the apiserver on the same port and etcd: every watch breaks."""
        self._stop(self._apiserver)
        self._start_apiserver()

    def stop(self) -> None:
        self._stop(self._apiserver)
        self._stop(self._etcd)
        shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait_http(self, url: str, what: str, ssl_ctx: ssl.SSLContext | None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in (self._etcd, self._apiserver):
                if proc is not None and proc.poll() is not None:
                    log = self.workdir / ("etcd.log" if proc is self._etcd else "apiserver.log")
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise EnvtestError(f"{what} exited with code {proc.returncode}:\n{tail}")
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(req, timeout=2, context=ssl_ctx) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:
                last = str(exc)
            time.sleep(0.2)
        raise EnvtestError(f"{what} did not become healthy within {timeout:.0f}s: {last}")

    # -- clients ----------------------------------------------------------------------------
    def _write_kubeconfig(self, token: str, path: str) -> str:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "envtest", "cluster": {"server": self.server, "certificate-authority": self.ca_file}}
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "user"}}],
            "current-context": "envtest",
        }
        Path(path).write_text(yaml.safe_dump(cfg))
        return path

    def make_kubeconfig(self, token: str, path: str) -> str:
        """A kubeconfig for another bearer token, such as a ServiceAccount's."""
        return self._write_kubeconfig(token, path)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def install_prereqs(self) -> None:
        self.kubectl("apply", "-f", str(PREREQS))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l", "component=ark")

    def env(self) -> dict[str, str]:
        """Environment for child processes (ark server, CLI) that should talk to this apiserver."""
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        return env
