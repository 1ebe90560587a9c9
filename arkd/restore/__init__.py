"""Restore domain logic: the safe tarball reader, restore order and non-restorable resources,
per-kind restore actions (including the restic-wait init container) and RestoreResult."""
