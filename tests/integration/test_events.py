"""EventRecorder writing core/v1 Events to the real apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from arkd.kube.client import KubeClient
from arkd.kube.events import MAX_MESSAGE_LENGTH, EventRecorder
from arkd.kube.resource import CONFIGMAPS, EVENTS, NAMESPACES


@pytest.fixture
async def recorder(kube: KubeClient) -> AsyncIterator[EventRecorder]:
    rec = EventRecorder(kube, "arkd-test", host="node-1")
    rec.start()
    yield rec
    await rec.close()


async def make_configmap(kube: KubeClient, namespace: str, name: str = "subject") -> dict[str, Any]:
    return await kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": name, "namespace": namespace}})


async def events_about(kube: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return await kube.list(EVENTS, namespace, field_selector=f"involvedObject.name={name}")


async def test_an_event_describes_the_involved_object(
    kube: KubeClient, namespace: str, recorder: EventRecorder
) -> None:
    cm = await make_configmap(kube, namespace)
    recorder.record(cm, "Warning", "BackupFailed", "bucket ark-backups does not exist")
    await recorder.flush()

    [event] = await events_about(kube, namespace, "subject")
    assert event["involvedObject"] == {
        "apiVersion": "v1", "kind": "ConfigMap", "name": "subject", "namespace": namespace,
        "uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"],
    }
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning", "BackupFailed", "bucket ark-backups does not exist")
    assert event["source"] == {"component": "arkd-test", "host": "node-1"}
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"]


async def test_repeats_are_folded_into_one_event_with_a_count(
    kube: KubeClient, namespace: str, recorder: EventRecorder
) -> None:
    cm = await make_configmap(kube, namespace)
    for _ in range(3):
        recorder.record(cm, "Normal", "Synced", "in sync")
    recorder.record(cm, "Normal", "Synced", "something else")
    await recorder.flush()

    events = await events_about(kube, namespace, "subject")
    by_message = {e["message"]: e["count"] for e in events}
    assert by_message == {"in sync": 3, "something else": 1}


async def test_events_for_cluster_scoped_objects_go_to_default(
    kube: KubeClient, namespace: str, recorder: EventRecorder
) -> None:
    ns = await kube.get(NAMESPACES, namespace)
    recorder.record(ns, "Normal", "Seen", "namespace looked at")
    await recorder.flush()
    events = await events_about(kube, "default", namespace)
    assert [(e["involvedObject"]["kind"], e["reason"]) for e in events] == [("Namespace", "Seen")]


async def test_long_messages_are_truncated(kube: KubeClient, namespace: str, recorder: EventRecorder) -> None:
    cm = await make_configmap(kube, namespace)
    recorder.record(cm, "Warning", "Noisy", "x" * 5000)
    await recorder.flush()
    [event] = await events_about(kube, namespace, "subject")
    assert len(event["message"]) == MAX_MESSAGE_LENGTH
    assert event["message"].endswith("...")


async def test_record_never_blocks_or_raises_and_drops_when_full(kube: KubeClient, namespace: str) -> None:
    cm = await make_configmap(kube, namespace)
    rec = EventRecorder(kube, "arkd-test", queue_size=2)
    # No writer running yet: the queue fills up and further events are dropped, not awaited.
    for i in range(5):
        rec.record(cm, "Normal", "Tick", f"tick {i}")
    assert rec.dropped == 3
    # Garbage in is logged and dropped too, never raised into the caller.
    rec.record({"metadata": {}}, "Normal", "NoKind", "no kind or name")
    rec.record(cm, "Fatal", "BadType", "not Normal or Warning")  # type: ignore[arg-type]
    rec.start()
    await rec.close()
    assert sorted(e["message"] for e in await events_about(kube, namespace, "subject")) == ["tick 0", "tick 1"]


async def test_a_failed_write_does_not_stop_the_recorder(
    kube: KubeClient, namespace: str, recorder: EventRecorder
) -> None:
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost", "namespace": "no-such-ns"}}
    recorder.record(ghost, "Normal", "Lost", "the namespace does not exist")
    cm = await make_configmap(kube, namespace)
    recorder.record(cm, "Normal", "After", "still working")
    await recorder.flush()
    assert [e["reason"] for e in await events_about(kube, namespace, "subject")] == ["After"]
