"""A real S3 endpoint for tests: `moto_server` (from moto[server]) on a free loopback port.

`MotoServer()` is plain and synchronous so it can back a session fixture. With `iam_auth=True`
it creates an IAM user allowed `s3:*`, uses that user's keys, and then switches moto's IAM
authentication on (`/moto-api/reset-auth`, the server-mode form of `INITIAL_NO_AUTH_ACTION_COUNT`),
so requests signed with any other keys fail the way real S3 fails them. With `tls=True` it
serves HTTPS with a self-signed certificate (for `insecureSkipTLSVerify`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3

_START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3


class MotoServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "moto_server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("moto_server")
    if found is None:
        raise MotoServerError("moto_server not found; install moto[server] into the venv")
    return found


class MotoServer:
    def __init__(
        self,
        *,
        region: str = "us-east-1",
        access_key: str = "AKIAARKDTESTKEY00001",
        secret_key: str = "arkd-test-secret-key-0000000000000000000",
        iam_auth: bool = False,
        tls: bool = False,
    ) -> None:
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.iam_auth = iam_auth
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="arkd-moto-"))
        self.credentials_file = str(self._tmp / "credentials")
        # An empty config file keeps a developer's ~/.aws/config out of the tests.
        self.config_file = str(self._tmp / "config")
        self.log_file = str(self._tmp / "moto_server.log")

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def __enter__(self) -> MotoServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        last_error = ""
        for _ in range(_PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._launch()
                break
            except MotoServerError as exc:
                # Another process may have taken the port between probe and bind; try a new one.
                last_error = str(exc)
                self._terminate()
        else:
            raise MotoServerError(f"moto_server did not start: {last_error}")
        try:
            self.write_credentials_file(self.access_key, self.secret_key)
            Path(self.config_file).write_text("")
            if self.iam_auth:
                self._enable_iam_auth()
        except BaseException:
            # `with MotoServer()` never reaches __exit__ when start fails: do not leak the process.
            self._terminate()
            raise

    def _launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [_moto_server_binary(), "-H", self.host, "-p", str(self.port), *(["-s"] if self.tls else [])],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MotoServerError(f"exited with {self._proc.returncode}: {self._log_tail()}")
            if self._answers():
                return
            time.sleep(0.1)
        raise MotoServerError(
            f"no answer on {self.endpoint} within {_START_TIMEOUT:.0f}s: {self._log_tail()}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1, context=self._ssl_context()):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl._create_unverified_context() if self.tls else None

    def _log_tail(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")[-2000:].strip()
        except OSError:
            return ""

    def write_credentials_file(self, access_key: str, secret_key: str, path: str | None = None) -> str:
        target = path or self.credentials_file
        Path(target).write_text(
            f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
        )
        return target

    def env(self) -> dict[str, str]:
        """AWS variables that point the standard credential chain at this server's keys only."""
        return {
            "AWS_SHARED_CREDENTIALS_FILE": self.credentials_file,
            "AWS_CONFIG_FILE": self.config_file,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def store_config(self) -> dict[str, str]:
        """`backupStorageProvider.config` for an `aws` provider aimed at this server."""
        return {"region": self.region, "s3Url": self.endpoint, "s3ForcePathStyle": "true"}

    def client(self, service: str = "s3") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=not self.tls,
        )

    def make_bucket(self, name: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.client().create_bucket(**kwargs)

    def _enable_iam_auth(self) -> None:
        iam = self.client("iam")
        iam.create_user(UserName="arkd-test")
        iam.put_user_policy(
            UserName="arkd-test",
            PolicyName="s3-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="arkd-test")["AccessKey"]
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]
        self.write_credentials_file(self.access_key, self.secret_key)
        # A form content type would make Flask swallow the body, so send it as plain text.
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self._ssl_context()) as resp:
            if resp.status != 200:
                raise MotoServerError(f"could not enable IAM authentication: HTTP {resp.status}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._tmp, ignore_errors=True)
