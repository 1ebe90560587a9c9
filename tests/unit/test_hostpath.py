"""Finding a volume's directory under the kubelet's pods directory, and the errors users see when it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arkd.podvolume.hostpath import VolumePathError, find_volume_path, volume_directory_name

UID = "6f1c-uid"
POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "app", "uid": UID},
    "spec": {
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
            {"name": "cache", "emptyDir": {}},
            {"name": "logs", "hostPath": {"path": "/var/log"}},
        ]
    },
}
PVCS = {
    ("app", "data-claim"): {"metadata": {"name": "data-claim"}, "spec": {"volumeName": "pv-123"}},
    ("app", "pending"): {"metadata": {"name": "pending"}, "spec": {}},
}


def get_pvc(namespace: str, name: str) -> dict[str, Any] | None:
    return PVCS.get((namespace, name))


def test_directory_name_is_volume_name_or_bound_pv_name() -> None:
    assert volume_directory_name(POD, "cache", get_pvc) == "cache"
    assert volume_directory_name(POD, "data", get_pvc) == "pv-123"


def test_directory_name_errors_name_the_problem() -> None:
    expected = r"volume nope is not in pod app/web \(its volumes: data, cache, logs\)"
    with pytest.raises(VolumePathError, match=expected):
        volume_directory_name(POD, "nope", get_pvc)
    with pytest.raises(VolumePathError, match="hostPath volumes are not supported"):
        volume_directory_name(POD, "logs", get_pvc)
    pending = {**POD, "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "pending"}}]}}
    with pytest.raises(VolumePathError, match=r"app/pending .* is not bound .*spec.volumeName is empty"):
        volume_directory_name(pending, "d", get_pvc)
    missing = {**POD, "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "gone"}}]}}
    with pytest.raises(VolumePathError, match="PersistentVolumeClaim app/gone of volume d of pod app/web"):
        volume_directory_name(missing, "d", get_pvc)


def mkvol(root: Path, plugin: str, name: str) -> Path:
    path = root / UID / "volumes" / plugin / name
    path.mkdir(parents=True)
    return path


def test_finds_the_single_matching_directory(tmp_path: Path) -> None:
    want = mkvol(tmp_path, "kubernetes.io~empty-dir", "cache")
    mkvol(tmp_path, "kubernetes.io~secret", "token")
    assert find_volume_path(tmp_path, UID, "cache", volume="cache", pod="app/web") == want


def test_csi_volumes_are_one_level_deeper(tmp_path: Path) -> None:
    csi = mkvol(tmp_path, "kubernetes.io~csi", "pv-123")
    (csi / "mount").mkdir()
    (csi / "vol_data.json").write_text("{}")
    assert find_volume_path(tmp_path, UID, "pv-123", volume="data", pod="app/web") == csi / "mount"


def test_csi_volume_without_mount_dir_is_reported(tmp_path: Path) -> None:
    mkvol(tmp_path, "kubernetes.io~csi", "pv-123")
    with pytest.raises(VolumePathError, match="has no mount/ subdirectory; is the volume mounted"):
        find_volume_path(tmp_path, UID, "pv-123", volume="data", pod="app/web")


def test_missing_directory_says_what_was_searched_and_what_is_there(tmp_path: Path) -> None:
    mkvol(tmp_path, "kubernetes.io~empty-dir", "other")
    with pytest.raises(VolumePathError) as err:
        find_volume_path(tmp_path, UID, "data", volume="data", pod="app/web")
    message = str(err.value)
    assert message.startswith(
        f"no directory for volume data of pod app/web (uid {UID}) under {tmp_path}/{UID}/volumes/*/data: "
        "is the pod running on this node and the volume mounted?"
    )
    assert "kubernetes.io~empty-dir/other" in message


def test_pod_not_on_this_node(tmp_path: Path) -> None:
    with pytest.raises(VolumePathError, match=rf"{tmp_path}/{UID} does not exist; is the pod running on"):
        find_volume_path(tmp_path, UID, "data", volume="data", pod="app/web")


def test_host_pods_dir_not_mounted(tmp_path: Path) -> None:
    with pytest.raises(VolumePathError, match=r"the host pods directory .* does not exist"):
        find_volume_path(tmp_path / "nope", UID, "data", volume="data", pod="app/web")


def test_more_than_one_match_is_an_error_listing_them(tmp_path: Path) -> None:
    a = mkvol(tmp_path, "kubernetes.io~empty-dir", "data")
    b = mkvol(tmp_path, "kubernetes.io~nfs", "data")
    with pytest.raises(VolumePathError, match="found 2: ") as err:
        find_volume_path(tmp_path, UID, "data", volume="data", pod="app/web")
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_glob_characters_in_names_match_literally(tmp_path: Path) -> None:
    mkvol(tmp_path, "kubernetes.io~empty-dir", "dataX")
    with pytest.raises(VolumePathError, match="no directory"):
        find_volume_path(tmp_path, UID, "data?", volume="data?", pod="app/web")
