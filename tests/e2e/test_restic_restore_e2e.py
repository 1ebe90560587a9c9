"""End to end: restoring restic pod volumes with the real processes, the CLI and `ark restic wait`.

One backup of pod `web` (two annotated volumes) serves every test here. The test plays the
scheduler and the kubelet of the restored pod: binds it, creates its volume folders, runs the
`restic-wait` init container's command (`ark restic wait`) as a real process and reports it Running.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_restic_e2e import (
    ARK_NS,
    TERMINAL,
    VOLUMES_ANNOTATION,
    Obj,
    Site,
    new_key,
    own_site,
    phase,
    volume_blocks,
)
from tests.envtest.harness import Envtest
from tests.support.kubelet import assert_same_tree, eventually, user_files
from tests.support.processes import ARK

VOLUMES = ["data", "logs"]


@dataclass
class Backed:
    site: Site
    backup: str
    pod: Obj
    snapshots: dict[str, str]  # volume -> snapshot ID the backup recorded

    @property
    def namespace(self) -> str:
        return self.site.namespace

    def original(self, volume: str) -> Path:
        """The backed-up volume's folder, still on the node: what every restore must reproduce."""
        return self.site.kubelet.volume_dir(self.pod["metadata"]["uid"], volume)


@pytest.fixture(scope="module")
def backed_up(envtest: Envtest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    with own_site(envtest, tmp_path_factory.mktemp("restic-restore")) as site:
        namespace = site.namespace
        site.run(site.server(), site.agent())
        pod = site.kubelet.run_pod(namespace, "web", {"data": user_files(11), "logs": user_files(12, size=4096)},
                                   annotations={VOLUMES_ANNOTATION: ",".join(VOLUMES)})
        site.kubectl("-n", namespace, "create", "configmap", "settings", "--from-literal=greeting=hello")
        site.ark("restic", "init-repository", "--namespace", namespace, "--key-data", new_key())
        backup = f"{namespace}-b"
        site.ark("backup", "create", backup, "--include-namespaces", namespace, "--wait")
        snapshots = {p["spec"]["volume"]: p["status"]["snapshotID"] for p in site.pvbs(backup)}
        assert sorted(snapshots) == VOLUMES
        try:
            yield Backed(site, backup, pod, snapshots)
        finally:
            for mapped in (f"{namespace}-copy", f"{namespace}-stuck"):
                envtest.kubectl("delete", "namespace", mapped, "--wait=false", "--ignore-not-found", check=False)


# ------------------------------------------------------------------------------------ helpers


def restore_create(site: Site, *args: str) -> subprocess.Popen[str]:
    """`ark restore create ... --wait`, left running while the test plays the kubelet."""
    return subprocess.Popen([*ARK, "restore", "create", *args, "--wait"], env=site.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def restore_obj(site: Site, name: str) -> Obj:
    return site.kubectl_json("-n", ARK_NS, "get", "restore", name)


def pvrs_of(site: Site, restore_uid: str) -> list[Obj]:
    items: list[Obj] = site.kubectl_json(
        "-n", ARK_NS, "get", "podvolumerestores", "-l", f"ark.heptio.com/restore-uid={restore_uid}"
    )["items"]
    return items


def wait_pvrs(site: Site, restore_uid: str) -> list[Obj]:
    """The restore's PodVolumeRestores, once it made one per volume."""
    return eventually("a PodVolumeRestore per volume",
                      lambda: found if len(found := pvrs_of(site, restore_uid)) == len(VOLUMES) else None)


def restored_pod(site: Site, namespace: str, old_uid: str) -> Obj:
    def probe() -> Obj | None:
        got = site.envtest.kubectl("-n", namespace, "get", "pod", "web", "-o", "json", check=False)
        if got.returncode != 0:
            return None
        pod: Obj = json.loads(got.stdout)
        return pod if pod["metadata"]["uid"] != old_uid else None

    return eventually(f"the restored pod {namespace}/web", probe)


def assert_restic_wait_first(pod: Obj, restore_uid: str) -> None:
    init = pod["spec"]["initContainers"][0]
    assert init["name"] == "restic-wait"
    assert init["command"] == ["ark", "restic", "wait", restore_uid]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {v: f"/restores/{v}" for v in VOLUMES}
    assert not pod["spec"].get("nodeName"), "a restored pod must go through the scheduler again"


def play_kubelet_and_restic_wait(b: Backed, pod: Obj, restore_uid: str) -> dict[str, Path]:
    """Schedule the pod, mount its volumes, run restic-wait; returns the volume folders once it exited 0."""
    site, kubelet = b.site, b.site.kubelet
    namespace = pod["metadata"]["namespace"]
    pod = kubelet.bind(namespace, "web")
    folders = kubelet.mount(pod, VOLUMES)
    waiter = subprocess.Popen(
        [*ARK, "restic", "wait", restore_uid, "--restores-dir", str(kubelet.volumes_dir(pod["metadata"]["uid"])),
         "--interval", "0.2"],
        env=site.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == f"Waiting for restic to restore volumes: {', '.join(VOLUMES)}\n"
        # Nothing is restored before the init container runs: the kubelet has not mounted everything yet.
        assert {phase(p) for p in wait_pvrs(site, restore_uid)} == {"New"}
        kubelet.start_first_init_container(pod)
        out, err = waiter.communicate(timeout=180)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, f"ark restic wait exited {waiter.returncode}: {out}{err}\n{site.logs()}"
    assert out.strip().endswith("All restic restores are done")
    for volume, folder in folders.items():
        # The done files were there for restic-wait, and it consumed them.
        assert not (folder / ".ark").exists(), f"done file left in volume {volume}"
    kubelet.report_running(kubelet.pod(namespace, "web"))
    return folders


def finish(site: Site, creating: subprocess.Popen[str], name: str) -> str:
    out, _ = creating.communicate(timeout=180)
    assert creating.returncode == 0, f"{out}\n{site.logs()}"
    assert f"Restore {name} finished: Completed" in out
    return out


# ------------------------------------------------------------------------------------ the tests


def test_restore_brings_both_volumes_back_byte_for_byte(backed_up: Backed) -> None:
    b, site = backed_up, backed_up.site
    ns = b.namespace
    site.kubectl("-n", ns, "delete", "pod", "web", "--grace-period=0", "--force")
    site.kubectl("-n", ns, "delete", "configmap", "settings")

    name = f"{ns}-r1"
    creating = restore_create(site, name, "--from-backup", b.backup)
    pod = restored_pod(site, ns, b.pod["metadata"]["uid"])
    restore_uid = restore_obj(site, name)["metadata"]["uid"]
    assert_restic_wait_first(pod, restore_uid)
    assert pod["metadata"]["annotations"][VOLUMES_ANNOTATION] == "data,logs"

    folders = play_kubelet_and_restic_wait(b, pod, restore_uid)
    for volume, folder in folders.items():
        assert_same_tree(b.original(volume), folder)
    finish(site, creating, name)

    assert phase(restore_obj(site, name)) == "Completed"
    described = site.ark("restore", "describe", name, "--details").stdout
    lines = described.splitlines()
    assert "Phase:   Completed" in lines and "  Completed:  2" in lines, described
    started = next(line for line in lines if line.startswith("Started:    "))
    completed = next(line for line in lines if line.startswith("Completed:  "))
    assert "<n/a>" not in started and "<n/a>" not in completed, described
    blocks = volume_blocks(described)
    assert sorted(blocks) == [f"{ns}/web: data", f"{ns}/web: logs"]
    for volume in VOLUMES:
        block = blocks[f"{ns}/web: {volume}"]
        assert block["Phase"] == "Completed" and block["Snapshot"] == b.snapshots[volume]
    assert site.kubectl("-n", ns, "get", "configmap", "settings", "-o", "jsonpath={.data.greeting}") == "hello"


def test_restore_into_a_mapped_namespace_reads_the_source_repository_with_its_key(backed_up: Backed) -> None:
    b, site = backed_up, backed_up.site
    source, target = b.namespace, f"{b.namespace}-copy"
    name = f"{source}-r2"

    creating = restore_create(site, name, "--from-backup", b.backup, "--namespace-mappings", f"{source}:{target}")
    pod = restored_pod(site, target, b.pod["metadata"]["uid"])
    restore_uid = restore_obj(site, name)["metadata"]["uid"]
    assert_restic_wait_first(pod, restore_uid)
    for pvr in wait_pvrs(site, restore_uid):
        assert pvr["spec"]["pod"]["namespace"] == target
        assert pvr["spec"]["repoIdentifier"] == site.identifier(source)
        assert pvr["spec"]["snapshotID"] == b.snapshots[pvr["spec"]["volume"]]

    folders = play_kubelet_and_restic_wait(b, pod, restore_uid)
    for volume, folder in folders.items():
        assert_same_tree(b.original(volume), folder)
    finish(site, creating, name)

    # The copy has no key of its own: the data came with the source namespace's key.
    no_key = site.envtest.kubectl("-n", ARK_NS, "get", "secret", f"ark-restic-credentials-{target}", check=False)
    assert no_key.returncode != 0 and "NotFound" in no_key.stderr
    assert site.envtest.kubectl("-n", ARK_NS, "get", "resticrepository", target, check=False).returncode != 0


def test_pod_that_never_starts_restic_wait_times_out_after_the_restore_annotation(backed_up: Backed) -> None:
    b, site = backed_up, backed_up.site
    source, target = b.namespace, f"{b.namespace}-stuck"
    name = f"{source}-r3"
    restore = {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": ARK_NS, "annotations": {"ark.heptio.com/pod-volume-timeout": "5s"}},
        "spec": {"backupName": b.backup, "includedNamespaces": ["*"], "namespaceMapping": {source: target}},
    }
    site.envtest.kubectl("apply", "-f", "-", input=json.dumps(restore))
    pod = restored_pod(site, target, b.pod["metadata"]["uid"])
    # Scheduled onto a node with a node agent, but its init container never starts.
    site.kubelet.bind(target, "web")

    final = eventually("the restore to finish", lambda: o if phase(o := restore_obj(site, name)) in TERMINAL else None)
    assert phase(final) == "PartiallyFailed", final.get("status")
    assert pod["spec"]["initContainers"][0]["name"] == "restic-wait"

    described = site.ark("restore", "describe", name, "--details").stdout
    assert "Phase:   PartiallyFailed" in described and "  Failed:  2" in described.splitlines()
    assert (f"Reason:  2 pod volumes not restored: volume data of pod {target}/web, volume logs of pod {target}/web"
            in described), described
    timeout = ("timed out after 5s waiting for pod volume restore; is the pod's restic-wait init container running "
               "on a node with the node agent (ark restic server)?")
    blocks = volume_blocks(described)
    assert sorted(blocks) == [f"{target}/web: data", f"{target}/web: logs"]
    for block in blocks.values():
        assert block["Phase"] == "Failed" and block["Message"] == timeout, block
