"""Transport retries against a real HTTP server on 127.0.0.1 that answers 429/5xx as scripted.

The client's sleep is injected so the test sees exactly which delays were chosen.
"""

from __future__ import annotations

import datetime
import email.utils
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration

from arkd.kube.client import KubeClient, RetryPolicy, parse_retry_after
from arkd.kube.errors import ConnectionFailed, Gone, ServerError, TooManyRequests
from arkd.kube.resource import CONFIGMAPS


@dataclass
class Answer:
    status: int
    body: Mapping[str, object] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def status(code: int, reason: str, message: str, **extra: object) -> dict[str, object]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message, **extra}


OK_CM: dict[str, object] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ns"}}


Served = tuple["ScriptedServer", str]


class ScriptedServer:
    """Answers every request with the next scripted Answer (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[tuple[str, str]] = []
        self.watch_chunks: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.query.get("watch") == "true":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            for chunk in self.watch_chunks:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return web.Response(status=answer.status, body=orjson.dumps(answer.body) if answer.body else b"",
                            headers={"Content-Type": "application/json", **answer.headers})


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield scripted, f"http://127.0.0.1:{port}"
    await runner.cleanup()


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(server: Served, sleeps: Sleeps) -> AsyncIterator[KubeClient]:
    configuration = Configuration(host=server[1])
    kube = KubeClient.from_configuration(configuration, retry=RetryPolicy(max_attempts=4, max_delay=10.0,
                                                                            sleep=sleeps))
    yield kube
    await kube.close()


async def test_a_429_is_retried_after_the_servers_retry_after(
    server: Served, client: KubeClient, sleeps: Sleeps
) -> None:
    scripted, _ = server
    scripted.script = [
        Answer(429, status(429, "TooManyRequests", "Too many requests, please try again later."),
               {"Retry-After": "3"}),
        Answer(200, OK_CM),
    ]
    cm = await client.get(CONFIGMAPS, "a", "ns")
    assert cm["metadata"]["name"] == "a"
    assert sleeps.delays == [3.0]
    assert len(scripted.requests) == 2


async def test_a_huge_retry_after_is_capped(server: Served, client: KubeClient, sleeps: Sleeps) -> None:
    scripted, _ = server
    scripted.script = [Answer(429, status(429, "TooManyRequests", "busy"), {"Retry-After": "3600"}),
                       Answer(200, OK_CM)]
    await client.get(CONFIGMAPS, "a", "ns")
    assert sleeps.delays == [10.0]


async def test_retry_after_seconds_in_the_status_details_are_honoured(
    server: Served, client: KubeClient, sleeps: Sleeps
) -> None:
    scripted, _ = server
    scripted.script = [Answer(429, status(429, "TooManyRequests", "busy", details={"retryAfterSeconds": 2})),
                       Answer(200, OK_CM)]
    await client.get(CONFIGMAPS, "a", "ns")
    assert sleeps.delays == [2.0]


async def test_retries_are_bounded_and_the_last_error_carries_the_server_message(
    server: Served, client: KubeClient, sleeps: Sleeps
) -> None:
    scripted, _ = server
    scripted.script = [Answer(429, status(429, "TooManyRequests", "storage is overloaded"), {"Retry-After": "1"})]
    with pytest.raises(TooManyRequests) as caught:
        await client.get(CONFIGMAPS, "a", "ns")
    assert str(caught.value) == "storage is overloaded"
    assert caught.value.retry_after == 1.0
    assert len(scripted.requests) == 4
    assert sleeps.delays == [1.0, 1.0, 1.0]


async def test_a_5xx_on_a_get_is_retried_with_backoff(
    server: Served, client: KubeClient, sleeps: Sleeps
) -> None:
    scripted, _ = server
    scripted.script = [Answer(503, status(503, "ServiceUnavailable", "etcd leader changed")),
                       Answer(500, status(500, "InternalError", "try again")),
                       Answer(200, OK_CM)]
    await client.get(CONFIGMAPS, "a", "ns")
    assert len(scripted.requests) == 3
    assert len(sleeps.delays) == 2
    assert all(0 < d <= 10.0 for d in sleeps.delays)


async def test_a_5xx_on_a_create_is_not_retried(server: Served, client: KubeClient, sleeps: Sleeps) -> None:
    """The server may have acted on the POST before failing; resending could create twice."""
    scripted, _ = server
    scripted.script = [Answer(503, status(503, "ServiceUnavailable", "etcd leader changed")), Answer(201, OK_CM)]
    with pytest.raises(ServerError) as caught:
        await client.create(CONFIGMAPS, OK_CM)
    assert str(caught.value) == "etcd leader changed"
    assert len(scripted.requests) == 1
    assert sleeps.delays == []


async def test_a_429_on_a_create_is_retried(server: Served, client: KubeClient, sleeps: Sleeps) -> None:
    """A 429 means the server did not act, so even a POST is safe to resend."""
    scripted, _ = server
    scripted.script = [Answer(429, status(429, "TooManyRequests", "busy"), {"Retry-After": "1"}),
                       Answer(201, OK_CM)]
    created = await client.create(CONFIGMAPS, OK_CM)
    assert created["metadata"]["name"] == "a"
    assert [m for m, _ in scripted.requests] == ["POST", "POST"]
    assert sleeps.delays == [1.0]


async def test_a_refused_connection_is_retried_then_reported_clearly(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kube = KubeClient.from_configuration(Configuration(host=f"http://127.0.0.1:{port}"),
                                         retry=RetryPolicy(max_attempts=3, sleep=sleeps))
    try:
        with pytest.raises(ConnectionFailed) as caught:
            await kube.create(CONFIGMAPS, OK_CM)
    finally:
        await kube.close()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert len(sleeps.delays) == 2


async def test_watch_lines_split_across_chunks_are_reassembled(server: Served, client: KubeClient) -> None:
    scripted, _ = server
    events = [{"type": "ADDED", "object": {**OK_CM, "metadata": {"name": f"cm{i}", "resourceVersion": str(i)}}}
              for i in range(3)]
    payload = b"".join(orjson.dumps(e) + b"\n" for e in events)
    scripted.watch_chunks = [payload[:7], payload[7:50], payload[50:]]
    got = [e async for e in client.watch(CONFIGMAPS, "ns", resource_version="0")]
    assert got == events
    assert "allowWatchBookmarks=true" in scripted.requests[0][1]


async def test_a_watch_error_event_410_raises_gone_after_earlier_events(
    server: Served, client: KubeClient
) -> None:
    scripted, _ = server
    added = {"type": "ADDED", "object": OK_CM}
    expired = {"type": "ERROR", "object": status(410, "Expired", "too old resource version: 5 (90)")}
    scripted.watch_chunks = [orjson.dumps(added) + b"\n" + orjson.dumps(expired) + b"\n"]
    seen = []
    with pytest.raises(Gone) as caught:
        async for event in client.watch(CONFIGMAPS, "ns", resource_version="5"):
            seen.append(event)
    assert seen == [added]
    assert str(caught.value) == "too old resource version: 5 (90)"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    parsed = parse_retry_after(email.utils.format_datetime(later, usegmt=True))
    assert parsed is not None and 100 < parsed <= 120
