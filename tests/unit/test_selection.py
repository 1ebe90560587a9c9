"""Which volumes of a pod are backed up, what users are told about the rest, and PVB names and tags."""

from __future__ import annotations

import re
from typing import Any

import pytest

from arkd.podvolume.selection import (
    SelectedVolume,
    pod_volume_backup_name,
    requested_volumes,
    restic_tags,
    select_volumes,
)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def pod(annotation: str | None, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "app", "uid": "u-1"}
    if annotation is not None:
        meta["annotations"] = {"backup.ark.heptio.com/backup-volumes": annotation}
    return {"metadata": meta, "spec": {"volumes": volumes}}


VOLUMES = [
    {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
    {"name": "cache", "emptyDir": {}},
    {"name": "logs", "hostPath": {"path": "/var/log"}},
]


def test_pvc_and_emptydir_volumes_are_selected_in_annotation_order() -> None:
    selection = select_volumes(pod("cache,data", VOLUMES))
    assert selection.volumes == [SelectedVolume("cache"), SelectedVolume("data", claim_name="data-claim")]
    assert selection.warnings == []


def test_no_annotation_means_no_volumes() -> None:
    assert select_volumes(pod(None, VOLUMES)).volumes == []
    assert select_volumes(pod("", VOLUMES)).volumes == []


def test_entries_are_not_trimmed_like_ark_and_empty_entries_are_ignored() -> None:
    assert requested_volumes(pod("data, cache,,", VOLUMES)) == ["data", " cache"]
    selection = select_volumes(pod("data, cache,,", VOLUMES))
    assert selection.volumes == [SelectedVolume("data", claim_name="data-claim")]
    assert selection.warnings == [
        "volume  cache named in backup.ark.heptio.com/backup-volumes is not in pod app/web; not backing it up"
    ]


def test_duplicates_are_backed_up_once() -> None:
    assert select_volumes(pod("cache,cache", VOLUMES)).volumes == [SelectedVolume("cache")]


def test_unknown_and_hostpath_volumes_are_skipped_with_a_warning() -> None:
    selection = select_volumes(pod("missing,logs,cache", VOLUMES))
    assert selection.volumes == [SelectedVolume("cache")]
    assert selection.warnings[0] == (
        "volume missing named in backup.ark.heptio.com/backup-volumes is not in pod app/web; "
        "not backing it up"
    )
    assert selection.warnings[1].startswith("hostPath volumes are not supported: volume logs of pod app/web")


def test_backup_name_is_deterministic_and_distinct_per_volume() -> None:
    a = pod_volume_backup_name("nightly", "app", "web", "data")
    assert a == pod_volume_backup_name("nightly", "app", "web", "data")
    assert a.startswith("nightly-")
    others = {
        pod_volume_backup_name("nightly", "app", "web", "cache"),
        pod_volume_backup_name("nightly", "app", "web-2", "data"),
        pod_volume_backup_name("nightly", "app2", "web", "data"),
        pod_volume_backup_name("nightly2", "app", "web", "data"),
    }
    assert a not in others and len(others) == 4


@pytest.mark.parametrize("backup", ["b" * 253, "a" * 241 + ".b" + "c" * 10, "x" * 242 + "-y"])
def test_long_backup_names_give_valid_names_of_at_most_253_chars(backup: str) -> None:
    name = pod_volume_backup_name(backup, "app", "web", "data")
    assert len(name) <= 253
    assert DNS_SUBDOMAIN.match(name), name


def test_six_restic_tags() -> None:
    tags = restic_tags(
        backup_name="nightly", backup_uid="b-uid", pod_name="web", pod_uid="p-uid", pod_namespace="app",
        volume="data",
    )
    assert tags == {
        "backup": "nightly", "backup-uid": "b-uid", "pod": "web", "pod-uid": "p-uid", "ns": "app",
        "volume": "data",
    }
