"""The controller harness against real resourceVersion conflicts on the apiserver."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry

from arkd.controllers.resources import BACKUPS
from arkd.kube.cache import at_least_version
from arkd.kube.client import KubeClient
from arkd.kube.controller import Controller, ControllerMetrics, Done, Result
from arkd.kube.errors import Conflict
from arkd.kube.informer import Informer
from arkd.kube.patch import status_merge_patch
from arkd.kube.workqueue import WorkQueue


async def test_a_stale_status_patch_gets_conflict_and_the_harness_retries_it_to_success(
    kube: KubeClient, namespace: str
) -> None:
    backup = {"apiVersion": "ark.heptio.com/v1", "kind": "Backup", "metadata": {"name": "b"}, "spec": {}}
    created = await kube.create(BACKUPS, backup, namespace)
    informer = Informer(kube, BACKUPS, namespace)
    informer_task = asyncio.create_task(informer.run())
    await informer.wait_synced()
    registry = CollectorRegistry()
    queue = WorkQueue()
    outcomes: list[str] = []
    stale_once = {"armed": True}

    async def reconcile(key: str) -> Result:
        obj = informer.cache.get(key)
        assert obj is not None
        if stale_once["armed"]:
            # Someone else writes between our read and our write: our copy is now stale.
            stale_once["armed"] = False
            await kube.patch(BACKUPS, "b", {"metadata": {"labels": {"touched": "yes"}}}, namespace)
        try:
            await kube.patch(
                BACKUPS, "b", status_merge_patch(obj, {"phase": "InProgress"}), namespace, subresource="status"
            )
        except Conflict:
            outcomes.append("conflict")
            raise
        outcomes.append("written")
        return Done()

    metrics = ControllerMetrics(registry)
    controller = Controller("conflict-test", queue, reconcile, metrics=metrics)
    runner = asyncio.create_task(controller.run())
    try:
        queue.add(f"{namespace}/b")
        final = await informer.cache.wait_for(
            f"{namespace}/b", lambda o: (o.get("status") or {}).get("phase") == "InProgress", timeout=30
        )
        assert final is not None, outcomes
        for _ in range(100):  # the informer may deliver the write before the reconcile records it
            if outcomes[-1] == "written":
                break
            await asyncio.sleep(0.05)
        # The first write conflicts; retries (from a cache that may still lag a moment) end in success.
        assert outcomes[0] == "conflict" and outcomes[-1] == "written"
        assert set(outcomes[:-1]) == {"conflict"}
        assert final["metadata"]["labels"] == {"touched": "yes"}  # the other writer's change survived
        assert at_least_version(created["metadata"]["resourceVersion"])(final)
        conflicts = registry.get_sample_value(
            "arkd_controller_reconcile_total", {"controller": "conflict-test", "result": "conflict"}
        )
        assert conflicts == outcomes.count("conflict")
        errors = registry.get_sample_value("arkd_controller_reconcile_errors_total", {"controller": "conflict-test"})
        assert not errors
    finally:
        runner.cancel()
        informer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        with contextlib.suppress(asyncio.CancelledError):
            await informer_task
