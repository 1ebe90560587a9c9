"""The ark.heptio.com/v1 models read and write Ark v0.9's wire shapes without losing anything."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from arkd.api import (
    API_VERSION,
    KINDS,
    Backup,
    BackupPhase,
    BackupSpec,
    Config,
    DeleteBackupRequest,
    DownloadRequest,
    DownloadTargetKind,
    ObjectMeta,
    ObjectReference,
    PodVolumeBackup,
    PodVolumeBackupPhase,
    PodVolumeOperationProgress,
    PodVolumeRestore,
    ResticRepository,
    ResticRepositoryPhase,
    Restore,
    RestorePhase,
    Schedule,
    SchedulePhase,
    apply_config_defaults,
    resource_for_kind,
    restic_key_secret_name,
)
from arkd.api.meta import ArkObject, validation_messages

META = {
    "name": "nginx-backup",
    "namespace": "heptio-ark",
    "uid": "8b9a2c1e-6a1f-11e8-9f0e-42010a800002",
    "resourceVersion": "1234",
    "generation": 1,
    "creationTimestamp": "2018-06-05T17:43:08Z",
    "labels": {"ark-schedule": "daily"},
}

# Objects as Ark v0.9 (Go) serialises them: unset pointers, slices and times are null, phase "".
ARK_OBJECTS: dict[type[ArkObject], dict[str, Any]] = {
    Backup: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Backup",
        "metadata": META,
        "spec": {
            "includedNamespaces": ["nginx-example"],
            "excludedNamespaces": None,
            "includedResources": None,
            "excludedResources": None,
            "labelSelector": {"matchLabels": {"app": "nginx"}},
            "snapshotVolumes": None,
            "ttl": "720h0m0s",
            "includeClusterResources": None,
            "hooks": {
                "resources": [
                    {
                        "name": "fsfreeze",
                        "includedNamespaces": ["nginx-example"],
                        "excludedNamespaces": None,
                        "includedResources": None,
                        "excludedResources": None,
                        "labelSelector": None,
                        "pre": [
                            {
                                "exec": {
                                    "container": "fsfreeze",
                                    "command": ["/sbin/fsfreeze", "--freeze", "/var/log/nginx"],
                                    "onError": "Fail",
                                    "timeout": "30s",
                                }
                            }
                        ],
                    }
                ]
            },
        },
        "status": {
            "version": 1,
            "expiration": "2018-07-05T17:43:08Z",
            "phase": "Completed",
            "volumeBackups": {
                "pv-1": {"snapshotID": "snap-1", "type": "gp2", "availabilityZone": "us-east-1a", "iops": 100}
            },
            "validationErrors": None,
            "startTimestamp": "2018-06-05T17:43:08Z",
            "completionTimestamp": None,
        },
    },
    Restore: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Restore",
        "metadata": {**META, "name": "nginx-backup-20180605180000"},
        "spec": {
            "backupName": "nginx-backup",
            "includedNamespaces": None,
            "excludedNamespaces": None,
            "includedResources": None,
            "excludedResources": ["nodes", "events", "events.events.k8s.io"],
            "namespaceMapping": {"nginx-example": "nginx-copy"},
            "labelSelector": None,
            "restorePVs": True,
        },
        "status": {"phase": "Completed", "validationErrors": None, "warnings": 2, "errors": 0},
    },
    Schedule: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Schedule",
        "metadata": {**META, "name": "daily"},
        "spec": {
            "template": {"includedNamespaces": ["*"], "labelSelector": None, "ttl": "168h0m0s"},
            "schedule": "0 1 * * *",
        },
        "status": {"phase": "Enabled", "lastBackup": None, "validationErrors": None},
    },
    Config: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Config",
        "metadata": {"name": "default", "namespace": "heptio-ark"},
        "persistentVolumeProvider": {"name": "aws", "config": {"region": "us-west-2"}},
        "backupStorageProvider": {
            "name": "aws",
            "bucket": "ark-backups",
            "resticLocation": "ark-restic/cluster-1",
            "config": {"region": "us-west-2"},
        },
        "backupSyncPeriod": "30m",
        "gcSyncPeriod": "30m",
        "scheduleSyncPeriod": "1m",
        "podVolumeOperationTimeout": "0s",
        "resourcePriorities": None,
        "restoreOnlyMode": False,
    },
    DownloadRequest: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "DownloadRequest",
        "metadata": {**META, "name": "nginx-backup-20180605174308"},
        "spec": {"target": {"kind": "BackupLog", "name": "nginx-backup"}},
        "status": {"phase": "", "downloadURL": "", "expiration": None},
    },
    DeleteBackupRequest: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "DeleteBackupRequest",
        "metadata": {
            **META,
            "name": "nginx-backup-x7k2p",
            "generateName": "nginx-backup-",
            "labels": {
                "ark.heptio.com/backup-name": "nginx-backup",
                "ark.heptio.com/backup-uid": "8b9a2c1e-6a1f-11e8-9f0e-42010a800002",
            },
        },
        "spec": {"backupName": "nginx-backup"},
        "status": {"phase": "Processed", "errors": ["error deleting snapshot snap-1: not found"]},
    },
    PodVolumeBackup: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "PodVolumeBackup",
        "metadata": {
            **META,
            "name": "nginx-backup-t4fzc",
            "generateName": "nginx-backup-",
            "labels": {"ark.heptio.com/backup-name": "nginx-backup", "ark.heptio.com/backup-uid": "u-1"},
            "ownerReferences": [
                {
                    "apiVersion": "ark.heptio.com/v1",
                    "kind": "Backup",
                    "name": "nginx-backup",
                    "uid": "u-1",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "node": "node-1",
            "pod": {"kind": "Pod", "namespace": "nginx-example", "name": "nginx-1", "uid": "pod-uid-1"},
            "volume": "nginx-logs",
            "repoIdentifier": "s3:s3-us-west-2.amazonaws.com/ark-restic/nginx-example",
            "tags": {
                "backup": "nginx-backup",
                "backup-uid": "u-1",
                "ns": "nginx-example",
                "pod": "nginx-1",
                "pod-uid": "pod-uid-1",
                "volume": "nginx-logs",
            },
        },
        "status": {
            "phase": "Completed",
            "path": "/host_pods/pod-uid-1/volumes/kubernetes.io~empty-dir/nginx-logs",
            "snapshotID": "b39ae9a4",
            "message": "",
        },
    },
    PodVolumeRestore: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "PodVolumeRestore",
        "metadata": {**META, "name": "nginx-restore-8hm2x"},
        "spec": {
            "pod": {"kind": "Pod", "namespace": "nginx-example", "name": "nginx-1", "uid": "pod-uid-2"},
            "volume": "nginx-logs",
            "repoIdentifier": "s3:s3-us-west-2.amazonaws.com/ark-restic/nginx-example",
            "snapshotID": "b39ae9a4",
        },
        "status": {"phase": "Failed", "message": "error restoring volume"},
    },
    ResticRepository: {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "ResticRepository",
        "metadata": {"name": "nginx-example", "namespace": "heptio-ark"},
        "spec": {
            "maintenanceFrequency": "24h0m0s",
            "resticIdentifier": "s3:s3-us-west-2.amazonaws.com/ark-restic/nginx-example",
        },
        "status": {"phase": "Ready", "message": "", "lastMaintenanceTime": "2018-06-05T17:43:08Z"},
    },
}


def test_every_kind_has_an_ark_object_example() -> None:
    assert {r.model for r in KINDS} == set(ARK_OBJECTS)


@pytest.mark.parametrize("model", list(ARK_OBJECTS), ids=lambda m: m.KIND)
def test_ark_objects_round_trip_unchanged(model: type[ArkObject]) -> None:
    obj = copy.deepcopy(ARK_OBJECTS[model])
    assert model.from_obj(obj).to_obj() == ARK_OBJECTS[model]


def _with_unknown_fields(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["topLevelFuture"] = {"a": [1, {"b": None}]}
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    for part in ("spec", "status"):
        if part in obj:
            obj[part]["futureField"] = {"nested": {"deeper": [1, 2, 3]}, "flag": True}
    return obj


@pytest.mark.parametrize("model", list(ARK_OBJECTS), ids=lambda m: m.KIND)
def test_unknown_fields_survive_a_round_trip(model: type[ArkObject]) -> None:
    obj = _with_unknown_fields(ARK_OBJECTS[model])
    assert model.from_obj(copy.deepcopy(obj)).to_obj() == obj


def test_unknown_fields_deep_inside_typed_subtrees_survive() -> None:
    obj = copy.deepcopy(ARK_OBJECTS[Backup])
    obj["spec"]["hooks"]["resources"][0]["pre"][0]["exec"]["workingDir"] = "/tmp"
    obj["spec"]["labelSelector"]["matchExpressions"] = [
        {"key": "tier", "operator": "In", "values": ["web"], "future": 1}
    ]
    obj["status"]["volumeBackups"]["pv-1"]["encrypted"] = True
    pvb = copy.deepcopy(ARK_OBJECTS[PodVolumeBackup])
    pvb["spec"]["pod"]["fieldPath"] = "spec.volumes"
    pvb["spec"]["pod"]["futureRef"] = {"x": 1}
    pvb["status"]["progress"] = {"totalBytes": 10, "bytesDone": 5, "filesDone": 3}
    assert Backup.from_obj(copy.deepcopy(obj)).to_obj() == obj
    assert PodVolumeBackup.from_obj(copy.deepcopy(pvb)).to_obj() == pvb


def test_alpha1_repo_prefix_is_kept_though_arkd_uses_repo_identifier() -> None:
    obj = copy.deepcopy(ARK_OBJECTS[PodVolumeBackup])
    del obj["spec"]["repoIdentifier"]
    obj["spec"]["repoPrefix"] = "s3:s3.amazonaws.com/ark-restic"
    pvb = PodVolumeBackup.from_obj(copy.deepcopy(obj))
    assert pvb.spec.repo_identifier is None
    assert pvb.to_obj() == obj


def test_typed_access_to_an_ark_backup() -> None:
    backup = Backup.from_obj(copy.deepcopy(ARK_OBJECTS[Backup]))
    assert backup.name == "nginx-backup"
    assert backup.namespace == "heptio-ark"
    assert backup.metadata.key == "heptio-ark/nginx-backup"
    assert backup.metadata.label("ark-schedule") == "daily"
    assert backup.phase is BackupPhase.COMPLETED
    assert backup.spec.ttl_timedelta == datetime.timedelta(days=30)
    assert backup.status.expiration == datetime.datetime(2018, 7, 5, 17, 43, 8, tzinfo=datetime.UTC)
    assert backup.status.volume_backups is not None
    assert backup.status.volume_backups["pv-1"].snapshot_id == "snap-1"
    hooks = backup.spec.hooks
    assert hooks is not None and hooks.resources is not None
    pre = hooks.resources[0].pre
    assert pre is not None
    exec_hook = pre[0].exec
    assert exec_hook is not None and exec_hook.timeout_timedelta == datetime.timedelta(seconds=30)


def test_pod_volume_backup_controller_reference() -> None:
    pvb = PodVolumeBackup.from_obj(copy.deepcopy(ARK_OBJECTS[PodVolumeBackup]))
    owner = pvb.metadata.controller_owner()
    assert owner is not None and (owner.kind, owner.uid) == ("Backup", "u-1")
    assert pvb.spec.pod is not None and pvb.spec.pod.uid == "pod-uid-1"


@pytest.mark.parametrize(
    ("model", "new"),
    [
        (Backup, BackupPhase.NEW),
        (Restore, RestorePhase.NEW),
        (Schedule, SchedulePhase.NEW),
        (PodVolumeBackup, PodVolumeBackupPhase.NEW),
        (ResticRepository, ResticRepositoryPhase.NEW),
    ],
)
def test_empty_or_missing_phase_means_new(model: type[Any], new: Any) -> None:
    assert model.from_obj({"metadata": {"name": "x"}, "status": {"phase": ""}}).phase is new
    assert model.from_obj({"metadata": {"name": "x"}, "status": {}}).phase is new
    assert model.from_obj({"metadata": {"name": "x"}}).phase is new
    # The wire value stays what it was.
    assert model.from_obj({"status": {"phase": ""}}).to_obj()["status"] == {"phase": ""}


def test_arkd_phases_and_status_fields() -> None:
    backup = Backup.from_obj(
        {
            "status": {
                "phase": "PartiallyFailed",
                "warnings": 1,
                "errors": 2,
                "failureReason": "1 volume failed",
            }
        }
    )
    assert backup.phase is BackupPhase.PARTIALLY_FAILED
    assert (backup.status.warnings, backup.status.errors) == (1, 2)
    restore = Restore.from_obj({"status": {"phase": "Failed", "failureReason": "backup not found"}})
    assert restore.phase is RestorePhase.FAILED
    assert restore.status.failure_reason == "backup not found"


def test_unknown_phase_is_rejected_with_the_allowed_values() -> None:
    with pytest.raises(ValidationError, match="PartiallyFailed"):
        Backup.from_obj({"status": {"phase": "Exploded"}})


def test_objects_built_in_python_serialise_with_wire_names() -> None:
    pvb = PodVolumeBackup(metadata=ObjectMeta(generate_name="b-", namespace="heptio-ark"))
    pvb.spec.node = "node-1"
    pvb.spec.pod = ObjectReference(kind="Pod", namespace="ns", name="p", uid="u")
    pvb.spec.repo_identifier = "/repos/ns"
    pvb.status.phase = PodVolumeBackupPhase.IN_PROGRESS
    pvb.status.progress = PodVolumeOperationProgress(total_bytes=100, bytes_done=40)
    pvb.status.start_timestamp = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    pvb.status.snapshot_id = "abc"
    assert pvb.to_obj() == {
        "apiVersion": API_VERSION,
        "kind": "PodVolumeBackup",
        "metadata": {"generateName": "b-", "namespace": "heptio-ark"},
        "spec": {
            "node": "node-1",
            "pod": {"kind": "Pod", "namespace": "ns", "name": "p", "uid": "u"},
            "repoIdentifier": "/repos/ns",
        },
        "status": {
            "phase": "InProgress",
            "snapshotID": "abc",
            "startTimestamp": "2024-01-02T03:04:05Z",
            "progress": {"totalBytes": 100, "bytesDone": 40},
        },
    }
    # Nothing set, nothing written but the type.
    assert Backup().to_obj() == {"apiVersion": API_VERSION, "kind": "Backup"}


def test_times_are_utc_rfc3339() -> None:
    repo = ResticRepository.from_obj({"status": {"lastMaintenanceTime": "2018-06-05T19:43:08+02:00"}})
    assert repo.status.last_maintenance_time == datetime.datetime(2018, 6, 5, 17, 43, 8, tzinfo=datetime.UTC)
    assert repo.to_obj()["status"]["lastMaintenanceTime"] == "2018-06-05T17:43:08Z"
    repo.status.last_maintenance_time = datetime.datetime(2018, 6, 5, 17, 43, 8, 250000)  # naive = UTC
    assert repo.to_obj()["status"]["lastMaintenanceTime"] == "2018-06-05T17:43:08.250000Z"


def test_durations_stay_go_strings_and_bad_ones_are_rejected() -> None:
    spec = BackupSpec(ttl="90s")
    assert spec.ttl == "90s"
    assert spec.ttl_timedelta == datetime.timedelta(seconds=90)
    with pytest.raises(ValidationError, match='missing unit in duration "12"'):
        Backup.from_obj({"spec": {"ttl": "12"}})
    with pytest.raises(ValidationError, match=r"spec\.ttl"):
        Backup.from_obj({"spec": {"ttl": 12}})
    repo = ResticRepository.from_obj({"spec": {"maintenanceFrequency": "168h"}})
    assert repo.spec.maintenance_frequency_timedelta == datetime.timedelta(days=7)


def test_other_kinds_and_versions_are_refused_clearly() -> None:
    with pytest.raises(ValidationError, match="kind 'Restore' cannot be read as a Backup"):
        Backup.from_obj({"apiVersion": API_VERSION, "kind": "Restore"})
    with pytest.raises(ValidationError, match=r"velero\.io/v1"):
        Backup.from_obj({"apiVersion": "velero.io/v1", "kind": "Backup"})


def test_download_request_needs_a_target() -> None:
    with pytest.raises(ValidationError, match="target"):
        DownloadRequest.from_obj({"spec": {}})
    req = DownloadRequest.from_obj({"spec": {"target": {"kind": "RestoreResults", "name": "r1"}}})
    assert req.spec.target.kind is DownloadTargetKind.RESTORE_RESULTS


def test_config_fields_are_top_level_and_storage_is_required() -> None:
    cfg = Config.from_obj(copy.deepcopy(ARK_OBJECTS[Config]))
    assert cfg.backup_storage_provider.restic_location == "ark-restic/cluster-1"
    assert cfg.backup_sync_period_timedelta == datetime.timedelta(minutes=30)
    with pytest.raises(ValidationError, match="backupStorageProvider"):
        Config.from_obj({"metadata": {"name": "default"}})


def test_apply_config_defaults_fills_ark_defaults() -> None:
    cfg = Config.from_obj({"metadata": {"name": "default"}, "backupStorageProvider": {"name": "aws", "bucket": "b"}})
    out = apply_config_defaults(cfg).to_obj()
    assert out["backupSyncPeriod"] == "1h0m0s"
    assert out["gcSyncPeriod"] == "1h0m0s"
    assert out["scheduleSyncPeriod"] == "1m0s"
    assert out["podVolumeOperationTimeout"] == "4h0m0s"
    assert out["resourcePriorities"] == [
        "namespaces",
        "persistentvolumes",
        "persistentvolumeclaims",
        "secrets",
        "configmaps",
        "serviceaccounts",
        "limitranges",
        "pods",
    ]
    assert out["restoreOnlyMode"] is False
    assert cfg.backup_sync_period is None  # the input is not modified


def test_apply_config_defaults_keeps_settings_and_enforces_the_gc_minimum() -> None:
    cfg = Config.from_obj(copy.deepcopy(ARK_OBJECTS[Config]))
    cfg.gc_sync_period = "10s"
    cfg.resource_priorities = ["pods"]
    cfg.restore_only_mode = True
    out = apply_config_defaults(cfg)
    assert out.backup_sync_period == "30m0s"
    assert out.gc_sync_period == "1m0s"
    assert out.pod_volume_operation_timeout == "4h0m0s"  # "0s" means unset, as in Go
    assert out.resource_priorities == ["pods"]
    assert out.restore_only_mode is True


def test_kinds_registry_matches_ark() -> None:
    assert {r.kind: r.plural for r in KINDS} == {
        "Backup": "backups",
        "Schedule": "schedules",
        "Restore": "restores",
        "Config": "configs",
        "DownloadRequest": "downloadrequests",
        "DeleteBackupRequest": "deletebackuprequests",
        "PodVolumeBackup": "podvolumebackups",
        "PodVolumeRestore": "podvolumerestores",
        "ResticRepository": "resticrepositories",
    }
    res = resource_for_kind("PodVolumeBackup")
    assert (res.crd_name, res.list_kind, res.api_version) == (
        "podvolumebackups.ark.heptio.com",
        "PodVolumeBackupList",
        "ark.heptio.com/v1",
    )
    with pytest.raises(KeyError, match="known kinds: Backup"):
        resource_for_kind("BackupStorageLocation")


def test_restic_key_secret_name() -> None:
    assert restic_key_secret_name("nginx-example") == "ark-restic-credentials-nginx-example"
    with pytest.raises(ValueError, match="volume namespace"):
        restic_key_secret_name("")


def test_validation_messages_name_each_field_and_the_object_itself() -> None:
    with pytest.raises(ValidationError) as field_error:
        Backup.from_obj({"apiVersion": "ark.heptio.com/v1", "kind": "Backup", "spec": {"includedNamespaces": "app"}})
    assert validation_messages(field_error.value, "Backup") == ["spec.includedNamespaces: Input should be a valid list"]
    with pytest.raises(ValidationError) as whole:
        Backup.model_validate("not an object")
    assert validation_messages(whole.value, "Backup")[0].startswith("Backup: ")
