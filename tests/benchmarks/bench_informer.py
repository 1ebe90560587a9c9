"""Benchmark: list+watch of 10,000 ConfigMaps into the informer cache on the real apiserver.

Run on demand (pytest does not collect it):

    .venv/bin/python -m tests.benchmarks.bench_informer [--objects 10000] [--kubeconfig PATH]

Without --kubeconfig it starts its own etcd + kube-apiserver (tests/envtest/harness.py). Prints one
JSON object: seconds_to_synced, rss_before_mib, rss_after_mib and the parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import time
from pathlib import Path
from typing import Any

from arkd.kube.client import KubeClient
from arkd.kube.informer import Informer
from arkd.kube.resource import CONFIGMAPS, NAMESPACES


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (this benchmark needs Linux)")


async def create_objects(kube: KubeClient, namespace: str, count: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    payload = "x" * 256  # a small realistic value, so the cache holds more than bare metadata

    async def one(i: int) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"bench-{i:05d}", "labels": {"app": "bench", "shard": str(i % 16)}},
            "data": {"value": payload, "index": str(i)},
        }
        async with sem:
            await kube.create(CONFIGMAPS, body, namespace)

    await asyncio.gather(*(one(i) for i in range(count)))


async def bench(kubeconfig: str, count: int, concurrency: int, page_size: int) -> dict[str, Any]:
    async with await KubeClient.connect(kubeconfig) as kube:
        namespace = f"bench-{secrets.token_hex(4)}"
        await kube.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        started = time.perf_counter()
        await create_objects(kube, namespace, count, concurrency)
        create_seconds = time.perf_counter() - started

        gc.collect()
        rss_before = rss_mib()
        started = time.perf_counter()
        informer = Informer(kube, CONFIGMAPS, namespace, page_size=page_size)
        task = asyncio.create_task(informer.run())
        await informer.wait_synced()
        seconds_to_synced = time.perf_counter() - started
        gc.collect()
        rss_after = rss_mib()
        cached = len(informer.cache)

        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # deletecollection; the namespace itself would hang in Terminating without a controller-manager.
        await kube.request("DELETE", CONFIGMAPS.path(namespace))

    if cached != count:
        raise RuntimeError(f"informer synced {cached} objects, expected {count}")
    return {
        "objects": count,
        "page_size": page_size,
        "create_seconds": round(create_seconds, 3),
        "create_concurrency": concurrency,
        "seconds_to_synced": round(seconds_to_synced, 3),
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(rss_after, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64, help="creates in flight")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting an envtest")
    args = parser.parse_args(argv)

    env = None
    kubeconfig = args.kubeconfig
    if kubeconfig is None:
        from tests.envtest.harness import Envtest

        env = Envtest().start()
        kubeconfig = env.kubeconfig
    try:
        result = asyncio.run(bench(kubeconfig, args.objects, args.concurrency, args.page_size))
    finally:
        if env is not None:
            env.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
