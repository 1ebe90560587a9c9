"""Where the client finds its cluster: explicit path, $KUBECONFIG, ~/.kube/config, then in-cluster.

Each candidate kubeconfig points at its own small HTTP server on 127.0.0.1, so the tests prove
which configuration was really used by asking the server that answered.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from arkd.kube.client import (
    ConfigSource,
    KubeClient,
    KubeConfigError,
    load_configuration,
    resolve_config_source,
)


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, str]]:
    """Three API servers that say who they are on /version and echo the bearer token."""
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    for name in ("explicit", "env", "home"):
        async def version(request: web.Request, name: str = name) -> web.Response:
            return web.json_response({"server": name, "auth": request.headers.get("Authorization", "")})

        app = web.Application()
        app.router.add_get("/version", version)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield urls
    for runner in runners:
        await runner.cleanup()


def write_kubeconfig(path: Path, server: str, token: str, *, extra_context: tuple[str, str] | None = None) -> str:
    clusters = [{"name": "c", "cluster": {"server": server}}]
    contexts = [{"name": "main", "context": {"cluster": "c", "user": "u"}}]
    if extra_context:
        clusters.append({"name": "other", "cluster": {"server": extra_context[1]}})
        contexts.append({"name": extra_context[0], "context": {"cluster": "other", "user": "u"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": clusters, "contexts": contexts,
        "users": [{"name": "u", "user": {"token": token}}], "current-context": "main",
    }))
    return str(path)


@pytest.fixture
def layout(tmp_path: Path, servers: dict[str, str]) -> dict[str, str]:
    return {
        "explicit": write_kubeconfig(tmp_path / "explicit.yaml", servers["explicit"], "tok-explicit"),
        "env": write_kubeconfig(tmp_path / "env.yaml", servers["env"], "tok-env"),
        "home": str(tmp_path / "home"),
        "home_config": write_kubeconfig(tmp_path / "home" / ".kube" / "config", servers["home"], "tok-home"),
    }


async def answering_server(kubeconfig: str | None, env: dict[str, str], home: str,
                           context: str | None = None) -> dict[str, str]:
    configuration = await load_configuration(kubeconfig, context, environ=env, home=home)
    async with KubeClient.from_configuration(configuration) as client:
        answer: dict[str, str] = await client.request("GET", "/version")
    return answer


async def test_an_explicit_path_beats_kubeconfig_env_and_home(layout: dict[str, str]) -> None:
    answer = await answering_server(layout["explicit"], {"KUBECONFIG": layout["env"]}, layout["home"])
    assert answer == {"server": "explicit", "auth": "Bearer tok-explicit"}


async def test_kubeconfig_env_beats_home(layout: dict[str, str]) -> None:
    answer = await answering_server(None, {"KUBECONFIG": layout["env"]}, layout["home"])
    assert answer == {"server": "env", "auth": "Bearer tok-env"}


async def test_home_config_is_used_when_nothing_else_is_set(layout: dict[str, str]) -> None:
    answer = await answering_server(None, {}, layout["home"])
    assert answer == {"server": "home", "auth": "Bearer tok-home"}


async def test_kubeconfig_env_may_list_several_files(layout: dict[str, str], tmp_path: Path) -> None:
    env = {"KUBECONFIG": os.pathsep.join([str(tmp_path / "missing.yaml"), layout["env"]])}
    answer = await answering_server(None, env, layout["home"])
    assert answer["server"] == "env"


async def test_a_named_context_selects_its_cluster(tmp_path: Path, servers: dict[str, str]) -> None:
    path = write_kubeconfig(tmp_path / "two.yaml", servers["explicit"], "t", extra_context=("alt", servers["home"]))
    answer = await answering_server(path, {}, str(tmp_path), context="alt")
    assert answer["server"] == "home"


async def test_an_unknown_context_is_a_clear_error(layout: dict[str, str]) -> None:
    with pytest.raises(KubeConfigError, match="nope"):
        await load_configuration(layout["explicit"], "nope", environ={}, home=layout["home"])


def test_a_missing_explicit_file_is_reported_not_skipped(layout: dict[str, str]) -> None:
    with pytest.raises(KubeConfigError, match="/no/such/kubeconfig"):
        resolve_config_source("/no/such/kubeconfig", environ={"KUBECONFIG": layout["env"]}, home=layout["home"])


def test_a_kubeconfig_env_naming_no_file_is_reported(layout: dict[str, str]) -> None:
    with pytest.raises(KubeConfigError, match="KUBECONFIG=/nowhere"):
        resolve_config_source(None, environ={"KUBECONFIG": "/nowhere"}, home=layout["home"])


def test_in_cluster_is_the_last_resort(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    source = resolve_config_source(None, environ=env, home=str(tmp_path / "nohome"), service_account_dir=str(sa))
    assert source == ConfigSource("in-cluster", str(sa))


def test_nothing_found_says_every_option(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError) as caught:
        resolve_config_source(None, environ={}, home=str(tmp_path), service_account_dir=str(tmp_path / "sa"))
    message = str(caught.value)
    for hint in ("--kubeconfig", "KUBECONFIG", str(tmp_path / ".kube" / "config"), "service account"):
        assert hint in message
