"""Shared fixtures: a real control plane (etcd + kube-apiserver), namespaces, clients, S3 on moto_server.

Tests that need the apiserver FAIL (never skip) when it cannot be built or started, with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.envtest.harness import Envtest, EnvtestError

if TYPE_CHECKING:
    from arkd.kube.client import KubeClient
    from tests.support.moto import MotoServer


@pytest.fixture(scope="session")
def envtest() -> Iterator[Envtest]:
    env = Envtest()
    try:
        env.start()
    except EnvtestError as exc:
        env.stop()
        pytest.fail(f"the real kube-apiserver is not available: {exc}", pytrace=False)
    # Child processes (the CLI, `ark server`) find the test cluster through KUBECONFIG.
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = env.kubeconfig
    yield env
    if old is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = old
    env.stop()


@pytest.fixture
def namespace(envtest: Envtest) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    envtest.kubectl("create", "namespace", name)
    yield name
    # No namespace controller runs here, so deletion would hang in Terminating; delete and move on.
    envtest.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
async def kube(envtest: Envtest) -> AsyncIterator[KubeClient]:
    from arkd.kube.client import KubeClient

    client = await KubeClient.connect(envtest.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoServer]:
    from tests.support.moto import MotoServer

    server = MotoServer()
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.fail(f"moto_server could not be started: {exc}", pytrace=False)
    yield server
    server.stop()


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    for item in items:
        if "envtest" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.envtest)
