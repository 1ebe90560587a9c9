"""app.py wiring that needs the real apiserver."""

from __future__ import annotations

import pytest

from arkd.app import own_image
from arkd.config import DEFAULT_RESTORE_HELPER_IMAGE, ServerSettings
from arkd.kube.client import KubeClient
from arkd.kube.resource import PODS


async def test_restore_helper_image_follows_the_servers_own_image(
    kube: KubeClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ark-7d9f", "namespace": namespace},
        "spec": {"containers": [{"name": "sidecar", "image": "other:1"}, {"name": "ark", "image": "registry/ark:v9"}]},
    }
    await kube.create(PODS, pod, namespace)
    settings = ServerSettings(namespace=namespace)
    monkeypatch.setenv("POD_NAME", "ark-7d9f")
    assert await own_image(kube, settings) == "registry/ark:v9"
    monkeypatch.setenv("POD_NAME", "no-such-pod")
    assert await own_image(kube, settings) == DEFAULT_RESTORE_HELPER_IMAGE
    monkeypatch.delenv("POD_NAME")
    assert await own_image(kube, settings) == DEFAULT_RESTORE_HELPER_IMAGE
