"""The pod-volume domain shared by `ark server` and the node agent.

- `selection`: which volumes of a pod are backed up (the backup-volumes annotation), the
  deterministic PodVolumeBackup name and the six restic tags.
- `hostpath`: the directory of a pod volume under the kubelet's pods directory.
- `tracker`: completion futures per Backup/Restore UID, derived from an informer's cache, with
  per-object progress times for stall detection.
- `keys`: the restic key of each volume namespace, in a Secret in the Ark namespace.
"""
