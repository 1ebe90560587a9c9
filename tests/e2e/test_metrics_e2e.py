"""End to end: what `ark server` and `ark restic server` expose on /metrics during and after a restic backup.

Every scrape must pass `promtool check metrics` (Prometheus' own linter, reading the exposition on
stdin), and the counters a dashboard or alert reads must have moved by what happened.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_restic_e2e import (
    VOLUMES_ANNOTATION,
    Site,
    make_local_site,
    phase,
    restic_backups_of,
    teardown,
)
from tests.envtest.harness import Envtest
from tests.support.kubelet import big_files, eventually, size_of, user_files
from tests.support.processes import ArkProcess

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture
def site(envtest: Envtest, namespace: str, tmp_path: Path) -> Iterator[Site]:
    site = make_local_site(envtest, namespace, tmp_path)
    try:
        yield site
    finally:
        teardown(site)


def scrape(proc: ArkProcess) -> str:
    """/metrics of a process, after checking it with promtool."""
    text = proc.metrics()
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, f"promtool rejects the metrics of {proc.name}:\n{check.stdout}{check.stderr}"
    return text


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` (exactly those labels), 0 when the series does not exist yet."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_both_processes_expose_lint_clean_metrics_that_count_the_backup(site: Site) -> None:
    ns, kubelet = site.namespace, site.kubelet
    pod = kubelet.run_pod(ns, "web", {"data": big_files(128, 64), "logs": user_files(21)},
                          annotations={VOLUMES_ANNOTATION: "data,logs"})
    volumes = [kubelet.volume_dir(pod["metadata"]["uid"], v) for v in ("data", "logs")]
    (server,) = site.run(site.server())
    backup = f"{ns}-m"
    site.ark("backup", "create", backup, "--include-namespaces", ns)

    # During: no node agent runs yet, so the backup is certainly waiting for its two volumes.
    eventually("two PodVolumeBackups", lambda: len(site.pvbs(backup)) == 2)
    assert phase(site.backup(backup)) == "InProgress"
    during = scrape(server)
    assert value(during, "ark_backup_attempt_total", schedule="") == 1
    assert value(during, "ark_backup_success_total", schedule="") == 0

    (agent,) = site.run(site.agent())
    node = site.node
    eventually("restic running under the node agent", lambda: restic_backups_of(agent), interval=0.02)
    scrape(agent)

    final = site.wait_backup(backup)
    assert phase(final) == "Completed", final.get("status")
    after = scrape(server)
    assert value(after, "ark_backup_attempt_total", schedule="") == 1
    assert value(after, "ark_backup_success_total", schedule="") == 1
    assert value(after, "ark_backup_partial_failure_total", schedule="") == 0
    assert value(after, "ark_backup_duration_seconds_count", schedule="") == 1
    assert value(after, "ark_backup_items", schedule="") > 0
    assert value(after, "ark_restic_repository_ready", repository=ns) == 1

    agent_after = scrape(agent)
    backup_labels = {"node": node, "operation": "backup"}
    assert value(agent_after, "ark_pod_volume_operations_total", result="completed", **backup_labels) == 2
    assert value(agent_after, "ark_pod_volume_operations_total", result="failed", **backup_labels) == 0
    assert value(agent_after, "ark_pod_volume_bytes_total", **backup_labels) == sum(size_of(v) for v in volumes)
    assert value(agent_after, "ark_pod_volume_operation_duration_seconds_count", **backup_labels) == 2
    assert value(agent_after, "ark_pod_volume_operations_in_flight", **backup_labels) == 0
