"""Find a pod volume's directory under the kubelet's pods directory, as mounted in the node agent.

The kubelet keeps each volume of a pod at `<pods dir>/<pod uid>/volumes/<plugin>/<dir>`, where
`<plugin>` is e.g. `kubernetes.io~empty-dir` and `<dir>` is the volume name, or for a
PersistentVolumeClaim the bound PersistentVolume's name. CSI volumes mount one level deeper, at
`kubernetes.io~csi/<dir>/mount`. The search must find exactly one directory; when it does not, the
error says what was searched and what was there, because "expected one matching path, got 0" was
one of the least helpful messages of Ark and Velero.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
PvcGetter = Callable[[str, str], Obj | None]

CSI_PLUGIN_DIR = "kubernetes.io~csi"
CSI_MOUNT_DIR = "mount"


class VolumePathError(Exception):
    """The volume's directory cannot be determined or found; the message says why and what to check."""


def _pod_ref(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def volume_directory_name(pod: Obj, volume: str, get_pvc: PvcGetter) -> str:
    """The `<dir>` part of the volume's path: the PV name for a PVC volume, else the volume name.

    `get_pvc(namespace, name)` returns the claim (e.g. from an informer cache) or None.
    """
    ref = _pod_ref(pod)
    spec_volumes = (pod.get("spec") or {}).get("volumes") or []
    found = next((v for v in spec_volumes if isinstance(v, dict) and v.get("name") == volume), None)
    if found is None:
        names = ", ".join(str(v.get("name")) for v in spec_volumes if isinstance(v, dict)) or "none"
        raise VolumePathError(f"volume {volume} is not in pod {ref} (its volumes: {names})")
    if "hostPath" in found:
        raise VolumePathError(
            f"volume {volume} of pod {ref} is a hostPath volume; hostPath volumes are not supported"
        )
    claim = found.get("persistentVolumeClaim")
    if not isinstance(claim, dict):
        return volume
    claim_name = claim.get("claimName")
    if not claim_name:
        raise VolumePathError(
            f"volume {volume} of pod {ref} is a persistentVolumeClaim volume without claimName"
        )
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    pvc = get_pvc(namespace, str(claim_name))
    if pvc is None:
        raise VolumePathError(
            f"PersistentVolumeClaim {namespace}/{claim_name} of volume {volume} of pod {ref} was not found"
        )
    pv_name = (pvc.get("spec") or {}).get("volumeName")
    if not pv_name:
        raise VolumePathError(
            f"PersistentVolumeClaim {namespace}/{claim_name} of volume {volume} of pod {ref} is not bound "
            "to a PersistentVolume (spec.volumeName is empty)"
        )
    return str(pv_name)


def _listing(volumes_dir: Path) -> str:
    """"plugin/dir" entries under a pod's volumes directory, for error messages."""
    entries = sorted(
        f"{plugin.name}/{d.name}"
        for plugin in volumes_dir.iterdir()
        if plugin.is_dir()
        for d in plugin.iterdir()
    )
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:20])
    more = f" and {len(entries) - 20} more" if len(entries) > 20 else ""
    return f"it has {shown}{more}"


def find_volume_path(
    host_pods_dir: str | Path, pod_uid: str, dir_name: str, *, volume: str, pod: str
) -> Path:
    """The single directory of volume `volume` (named `dir_name` on disk) of pod `pod` ("ns/name").

    Raises VolumePathError saying what was searched and what was found.
    """
    if not pod_uid:
        raise VolumePathError(f"pod {pod} has no UID; cannot locate its volume {volume}")
    root = Path(host_pods_dir)
    pattern = root / pod_uid / "volumes" / "*" / dir_name
    where = f"volume {volume} of pod {pod} (uid {pod_uid})"
    if not root.is_dir():
        raise VolumePathError(
            f"no directory for {where}: the host pods directory {root} does not exist; mount the kubelet's "
            "pods directory (usually /var/lib/kubelet/pods) there or set the node agent's host pods directory"
        )
    pod_dir = root / pod_uid
    if not pod_dir.is_dir():
        raise VolumePathError(
            f"no directory for {where} under {pattern}: {pod_dir} does not exist; is the pod running on this "
            f"node, and is {root} the kubelet's pods directory?"
        )
    volumes_dir = pod_dir / "volumes"
    if not volumes_dir.is_dir():
        raise VolumePathError(
            f"no directory for {where} under {pattern}: {volumes_dir} does not exist; "
            "are the pod's volumes mounted?"
        )
    matches = sorted(p for p in volumes_dir.glob(f"*/{_escape(dir_name)}") if p.is_dir())
    if not matches:
        raise VolumePathError(
            f"no directory for {where} under {pattern}: is the pod running on this node and the volume "
            f"mounted? ({volumes_dir}: {_listing(volumes_dir)})"
        )
    if len(matches) > 1:
        found = ", ".join(str(m) for m in matches)
        raise VolumePathError(
            f"expected one directory for {where} under {pattern}, found {len(matches)}: {found}"
        )
    path = matches[0]
    if path.parent.name == CSI_PLUGIN_DIR:
        mount = path / CSI_MOUNT_DIR
        if not mount.is_dir():
            raise VolumePathError(
                f"CSI volume directory {path} of {where} has no {CSI_MOUNT_DIR}/ subdirectory; "
                "is the volume mounted?"
            )
        return mount
    return path


def _escape(name: str) -> str:
    """Escape glob metacharacters so a volume or PV name is matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
