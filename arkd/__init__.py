"""arkd: Kubernetes backup and restore with restic pod volume backups, compatible with Heptio Ark v0.9."""

__version__ = "0.1.0"
