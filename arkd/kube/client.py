"""Async Kubernetes REST client returning plain dicts.

Configuration loading and the HTTP transport (TLS, auth, connection pool) come from
kubernetes-asyncio; responses are read raw (``_preload_content=False``) and parsed with orjson,
because deserialising into kubernetes-asyncio model objects halves throughput and loses
unknown fields.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import load_kube_config

from arkd.kube.errors import ApiError, ConnectionFailed, Gone, error_from_response, error_from_status
from arkd.kube.resource import Resource

logger = logging.getLogger("arkd.kube.client")

Obj = dict[str, Any]
ObjList = list[Obj]
PatchType = Literal["merge", "json", "strategic"]

PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_PAGE_SIZE = 500

# RFC 9110 idempotent methods: repeating them after a lost or failed answer changes nothing.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_RETRYABLE_5XX = frozenset({500, 502, 503, 504})


class KubeConfigError(Exception):
    """No usable Kubernetes configuration; the message says where we looked and what to do."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ConfigSource:
    """Where the connection settings come from: a kubeconfig file (list) or the pod's service account."""

    kind: Literal["kubeconfig", "in-cluster"]
    location: str


def resolve_config_source(
    kubeconfig: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> ConfigSource:
    """Pick the configuration like kubectl: explicit path, $KUBECONFIG, ~/.kube/config, in-cluster."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise KubeConfigError(
                f"kubeconfig file {kubeconfig} does not exist; pass the path of a readable file"
            )
        return ConfigSource("kubeconfig", str(path))
    from_env = env.get("KUBECONFIG", "")
    if from_env:
        paths = [p for p in from_env.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in paths):
            raise KubeConfigError(
                f"KUBECONFIG={from_env} names no existing file; fix the variable or unset it"
            )
        return ConfigSource("kubeconfig", os.pathsep.join(str(Path(p).expanduser()) for p in paths))
    home_dir = Path(home) if home is not None else Path.home()
    default = home_dir / ".kube" / "config"
    if default.is_file():
        return ConfigSource("kubeconfig", str(default))
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"):
        if (Path(service_account_dir) / "token").is_file():
            return ConfigSource("in-cluster", service_account_dir)
        raise KubeConfigError(
            f"running in a pod but {service_account_dir}/token is missing; "
            "mount a service account token (automountServiceAccountToken: true)"
        )
    raise KubeConfigError(
        f"no Kubernetes configuration found: pass --kubeconfig, set KUBECONFIG, create {default}, "
        "or run inside a pod with a service account"
    )


async def load_configuration(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Configuration:
    """A kubernetes-asyncio Configuration from the first source ``resolve_config_source`` finds."""
    env = os.environ if environ is None else environ
    source = resolve_config_source(
        kubeconfig, environ=env, home=home, service_account_dir=service_account_dir
    )
    configuration = Configuration()
    try:
        if source.kind == "kubeconfig":
            await load_kube_config(
                config_file=source.location,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            loader = InClusterConfigLoader(
                token_filename=str(Path(service_account_dir) / "token"),
                cert_filename=str(Path(service_account_dir) / "ca.crt"),
                environ=dict(env),
            )
            loader.load_and_set(configuration)
    except ConfigException as exc:
        where = f"context {context!r} of " if context else ""
        raise KubeConfigError(
            f"cannot load {where}{source.kind} configuration from {source.location}: {exc}"
        ) from exc
    logger.debug("loaded kubernetes configuration", extra={"source": source.kind, "location": source.location,
                                                             "server": configuration.host})
    return configuration


# --------------------------------------------------------------------------- retries


async def _real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Transport retries for 429 and 5xx answers and failed connections.

    Only idempotent requests are retried after a 5xx or a dropped connection; any request is
    retried after a 429 or a refused connection, since the server did not act on it.
    """

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    sleep: Callable[[float], Awaitable[None]] = field(default=_real_sleep, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: the server's Retry-After, else jittered backoff."""
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), self.max_delay)
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return float(backoff * random.uniform(0.5, 1.0))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds; accepts delta-seconds and HTTP-dates, ignores garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


# --------------------------------------------------------------------------- watch stream


class WatchStream:
    """Events of one watch request; use ``async for`` (``async with`` closes it deterministically).

    Awaiting the stream returns itself, so ``async for e in await client.watch(...)`` works too.
    """

    def __init__(self, events: AsyncGenerator[Obj, None]) -> None:
        self._events = events

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Obj:
        return await self._events.__anext__()

    def __await__(self) -> Generator[Any, None, Self]:
        return self._itself().__await__()

    async def _itself(self) -> Self:
        return self

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- client


class KubeClient:
    """CRUD, patch, list and watch on any resource, with typed errors from ``arkd.kube.errors``."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 60.0,
    ) -> None:
        self._api = api_client
        self._config: Configuration = api_client.configuration
        self._retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._closed = False

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 60.0,
    ) -> KubeClient:
        """Connect using ``kubeconfig``, else $KUBECONFIG, else ~/.kube/config, else in-cluster."""
        configuration = await load_configuration(kubeconfig, context)
        return cls.from_configuration(configuration, retry=retry, request_timeout=request_timeout)

    @classmethod
    def from_configuration(
        cls,
        configuration: Configuration,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 60.0,
    ) -> KubeClient:
        api_client = ApiClient(configuration=configuration)
        api_client.user_agent = "arkd"
        return cls(api_client, retry=retry, request_timeout=request_timeout)

    @property
    def server(self) -> str:
        """Base URL of the API server."""
        return str(self._config.host)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._api.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------------- typed verbs

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self._object("GET", res.path(namespace, name))

    async def list_page(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = DEFAULT_PAGE_SIZE,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        """One raw list page: ``items`` plus ``metadata.resourceVersion`` and ``metadata.continue``.

        Items get ``apiVersion`` and ``kind`` filled in (the server omits them in lists).
        ``resource_version="0"`` lets the server answer from its watch cache (then ``limit`` is ignored).
        """
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit:
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        page = await self._object("GET", res.path(namespace), params=params)
        items = page.get("items")
        if items is None:
            page["items"] = items = []
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return page

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> ObjList:
        """Every matching object, following ``continue`` tokens page by page."""
        items: ObjList = []
        token: str | None = None
        while True:
            try:
                page = await self.list_page(res, namespace, label_selector=label_selector,
                                            field_selector=field_selector, limit=limit, continue_=token)
            except Gone:
                if token is None:
                    raise
                # The continue token outlived etcd's compaction; a consistent full list is the fix.
                logger.info("continue token expired, listing without pages",
                            extra={"resource": str(res), "namespace": namespace})
                page = await self.list_page(res, namespace, label_selector=label_selector,
                                            field_selector=field_selector, limit=None)
                return list(page["items"])
            items.extend(page["items"])
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        """Create ``obj``; the namespace defaults to ``obj.metadata.namespace``."""
        ns = self._namespace_for(res, obj, namespace)
        return await self._object("POST", res.path(ns), body=obj)

    async def replace(
        self, res: Resource, name: str, obj: Obj, namespace: str | None = None, subresource: str | None = None
    ) -> Obj:
        """PUT the whole object; carries ``metadata.resourceVersion``, so a stale copy gets Conflict."""
        ns = self._namespace_for(res, obj, namespace)
        return await self._object("PUT", res.path(ns, name, subresource), body=obj)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Obj | ObjList,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj:
        """Patch with a JSON merge patch (dict), JSON patch (list of ops) or strategic merge patch (dict)."""
        content_type = PATCH_CONTENT_TYPES.get(patch_type)
        if content_type is None:
            raise ValueError(f"unknown patch_type {patch_type!r}; use one of {sorted(PATCH_CONTENT_TYPES)}")
        if patch_type == "json" and not isinstance(patch, list):
            raise TypeError(
                "a JSON patch is a list of operations like {'op': 'replace', 'path': ..., 'value': ...}"
            )
        if patch_type != "json" and not isinstance(patch, dict):
            raise TypeError(
                f"a {patch_type} patch is a dict (a partial object); use patch_type='json' for op lists"
            )
        return await self._object("PATCH", res.path(namespace, name, subresource), body=patch,
                                  content_type=content_type)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: Literal["Foreground", "Background", "Orphan"] | None = None,
        preconditions_uid: str | None = None,
        preconditions_resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> Obj | None:
        """Delete; returns the object when it still exists (finalizers, graceful deletion), else None."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation is not None:
            options["propagationPolicy"] = propagation
        preconditions: dict[str, str] = {}
        if preconditions_uid is not None:
            preconditions["uid"] = preconditions_uid
        if preconditions_resource_version is not None:
            preconditions["resourceVersion"] = preconditions_resource_version
        if preconditions:
            options["preconditions"] = preconditions
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        result = await self._object("DELETE", res.path(namespace, name), body=options)
        if result.get("kind") == "Status":
            return None
        return result

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> WatchStream:
        """Watch events ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}``.

        An ERROR event with code 410 (resourceVersion too old) raises Gone: relist and watch again.
        The stream ends when the server closes it (after ``timeout_seconds``).
        """
        params: dict[str, str] = {"watch": "true"}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        return WatchStream(self._watch_events(res.path(namespace), params, timeout_seconds))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        """Any API call; returns the parsed JSON (or text for non-JSON answers, None for empty ones)."""
        resp = await self._open(method.upper(), path, params=params, body=body, content_type=content_type,
                                timeout=self._timeout)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _connection_failed(self.server, method, path, exc) from exc
        finally:
            resp.release()
        if not data:
            return None
        if "json" in resp.headers.get("Content-Type", "application/json"):
            return orjson.loads(data)
        return data.decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------- internals

    @staticmethod
    def _namespace_for(res: Resource, obj: Obj, namespace: str | None) -> str | None:
        if not res.namespaced:
            return None
        if namespace:
            return namespace
        ns = (obj.get("metadata") or {}).get("namespace")
        if not ns:
            raise ValueError(f"{res.group_resource} is namespaced: pass namespace= or set metadata.namespace")
        return str(ns)

    async def _object(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Obj:
        result = await self.request(method, path, params=params, body=body, content_type=content_type)
        if not isinstance(result, dict):
            raise ApiError(0, "BadResponse", f"{method} {path}: expected a JSON object from the API server, "
                                             f"got {type(result).__name__}")
        return result

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        headers.update(self._api.default_headers)
        # auth_settings() also runs the token refresh hook (in-cluster token rotation).
        for setting in (await self._config.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    async def _open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Any,
        content_type: str | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """Send with retries; returns a 2xx response whose body is still unread."""
        if self._closed:
            raise RuntimeError("KubeClient is closed")
        url = f"{self.server}{path}"
        idempotent = method in _IDEMPOTENT
        attempt = 0
        while True:
            attempt += 1
            headers = await self._headers(content_type)
            try:
                resp: aiohttp.ClientResponse = await self._api.rest_client.request(
                    method, url, query_params=dict(params) if params else None, headers=headers, body=body,
                    _preload_content=False, _request_timeout=timeout,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A refused connection never reached the server, so even a POST may be resent.
                refused = isinstance(exc, aiohttp.ClientConnectorError)
                if (idempotent or refused) and attempt < self._retry.max_attempts:
                    delay = self._retry.delay(attempt, None)
                    logger.warning("API request failed to connect, retrying",
                                   extra={"method": method, "path": path, "attempt": attempt,
                                          "delay": delay, "error": str(exc)})
                    await self._retry.sleep(delay)
                    continue
                raise _connection_failed(self.server, method, path, exc) from exc
            if resp.status < 300:
                return resp
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                data = b""
            finally:
                resp.release()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            err = error_from_response(resp.status, data, method=method, path=path, retry_after=retry_after)
            if retry_after is None and err.details.get("retryAfterSeconds"):
                retry_after = float(err.details["retryAfterSeconds"])
            retryable = resp.status == 429 or (idempotent and resp.status in _RETRYABLE_5XX)
            if retryable and attempt < self._retry.max_attempts:
                delay = self._retry.delay(attempt, retry_after)
                logger.warning("API request throttled or failed, retrying",
                               extra={"method": method, "path": path, "status": resp.status,
                                      "attempt": attempt, "delay": delay, "error": err.message})
                await self._retry.sleep(delay)
                continue
            raise err

    async def _watch_events(
        self, path: str, params: dict[str, str], timeout_seconds: int | None
    ) -> AsyncGenerator[Obj, None]:
        # No total timeout: the stream lives as long as the server keeps it. A read timeout with
        # slack past the server-side timeout detects a dead connection.
        read_timeout = None if timeout_seconds is None else timeout_seconds + 30.0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=read_timeout)
        resp = await self._open("GET", path, params=params, body=None, content_type=None, timeout=timeout)
        buffer = bytearray()
        try:
            try:
                async for chunk in resp.content.iter_any():
                    buffer.extend(chunk)
                    start = 0
                    while (end := buffer.find(b"\n", start)) >= 0:
                        line = bytes(buffer[start:end])
                        start = end + 1
                        if line.strip():
                            yield _watch_event(line, path)
                    del buffer[:start]
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _connection_failed(self.server, "WATCH", path, exc) from exc
            if bytes(buffer).strip():
                yield _watch_event(bytes(buffer), path)
        finally:
            resp.close()


def _watch_event(line: bytes, path: str) -> Obj:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ApiError(0, "BadResponse", f"WATCH {path}: undecodable watch event: {exc}") from exc
    if not isinstance(event, dict):
        raise ApiError(0, "BadResponse", f"WATCH {path}: watch event is not a JSON object")
    if event.get("type") == "ERROR":
        status = event.get("object")
        if isinstance(status, dict) and status.get("code") == 410:
            raise error_from_status(status)
    return event


def _connection_failed(server: str, method: str, path: str, exc: BaseException) -> ConnectionFailed:
    detail = str(exc) or type(exc).__name__
    return ConnectionFailed(0, "ConnectionFailed",
                            f"{method} {path}: cannot talk to the API server at {server}: {detail}")

