"""Object keys must match Ark 0.9's bucket layout exactly, so Ark-written buckets restore with arkd."""

from __future__ import annotations

import pytest

from arkd.storage.layout import (
    ObjectKind,
    ParsedKey,
    backup_log_key,
    backup_metadata_key,
    backup_names_from_prefixes,
    backup_prefix,
    backup_tarball_key,
    parse_key,
    podvolumebackups_key,
    restore_log_key,
    restore_results_key,
)


def test_keys_match_ark_0_9() -> None:
    b = "nginx-backup-20180614"
    assert backup_prefix(b) == "nginx-backup-20180614/"
    assert backup_metadata_key(b) == "nginx-backup-20180614/ark-backup.json"
    assert backup_tarball_key(b) == "nginx-backup-20180614/nginx-backup-20180614.tar.gz"
    assert backup_log_key(b) == "nginx-backup-20180614/nginx-backup-20180614-logs.gz"
    assert podvolumebackups_key(b) == "nginx-backup-20180614/nginx-backup-20180614-podvolumebackups.json.gz"
    # Restore objects live under the backup's directory, not the restore's.
    assert restore_log_key(b, "r-1") == "nginx-backup-20180614/restore-r-1-logs.gz"
    assert restore_results_key(b, "r-1") == "nginx-backup-20180614/restore-r-1-results.gz"


@pytest.mark.parametrize("bad", ["", "a/b", ".", ".."])
def test_names_that_would_break_the_layout_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid backup name"):
        backup_tarball_key(bad)
    with pytest.raises(ValueError, match="invalid restore name"):
        restore_log_key("ok", bad)


def test_backup_names_from_top_level_prefixes() -> None:
    prefixes = ["b1/", "b2/", "nested/deeper/", "not-a-prefix", "/", "b3/"]
    assert backup_names_from_prefixes(prefixes) == ["b1", "b2", "b3"]


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("b1/ark-backup.json", ParsedKey("b1", ObjectKind.METADATA)),
        ("b1/b1.tar.gz", ParsedKey("b1", ObjectKind.CONTENTS)),
        ("b1/b1-logs.gz", ParsedKey("b1", ObjectKind.LOG)),
        ("b1/b1-podvolumebackups.json.gz", ParsedKey("b1", ObjectKind.POD_VOLUME_BACKUPS)),
        ("b1/restore-b1-20180614-logs.gz", ParsedKey("b1", ObjectKind.RESTORE_LOG, "b1-20180614")),
        ("b1/restore-r-results.gz", ParsedKey("b1", ObjectKind.RESTORE_RESULTS, "r")),
        ("b1/other.tar.gz", None),
        ("b1/restore--logs.gz", None),
        ("b1/sub/ark-backup.json", None),
        ("ark-backup.json", None),
    ],
)
def test_parse_key(key: str, parsed: ParsedKey | None) -> None:
    assert parse_key(key) == parsed


def test_every_helper_round_trips_through_parse_key() -> None:
    b, r = "daily-20180614", "daily-20180614-restore"
    assert parse_key(backup_metadata_key(b)) == ParsedKey(b, ObjectKind.METADATA)
    assert parse_key(backup_tarball_key(b)) == ParsedKey(b, ObjectKind.CONTENTS)
    assert parse_key(backup_log_key(b)) == ParsedKey(b, ObjectKind.LOG)
    assert parse_key(podvolumebackups_key(b)) == ParsedKey(b, ObjectKind.POD_VOLUME_BACKUPS)
    assert parse_key(restore_log_key(b, r)) == ParsedKey(b, ObjectKind.RESTORE_LOG, r)
    assert parse_key(restore_results_key(b, r)) == ParsedKey(b, ObjectKind.RESTORE_RESULTS, r)
