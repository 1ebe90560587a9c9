"""Parsing restic 0.14 output. Sample lines were captured from restic 0.14.0 on this machine."""

from __future__ import annotations

import pytest

from arkd.restic import Progress, Reason, ResticError, ResticOutputError, classify, parse_line
from arkd.restic.messages import (
    BackupOutput,
    ErrorMessage,
    InvalidLine,
    OtherMessage,
    StatusMessage,
    SummaryMessage,
    VerboseStatusMessage,
    parse_init,
    parse_keys,
    parse_object,
    parse_snapshots,
    parse_time,
)
from arkd.restic.runner import StderrTail, _LineSplitter

STATUS = (
    '{"message_type":"status","seconds_elapsed":2,"seconds_remaining":3,"percent_done":0.4,"total_files":10,'
    '"files_done":4,"total_bytes":1000,"bytes_done":400,"current_files":["/a","/b"]}'
)
STATUS_FIRST = '{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":100000}'
STATUS_ERRORS = '{"message_type":"status","percent_done":0,"error_count":1}'
SCAN_FINISHED = (
    '{"message_type":"status","action":"scan_finished","item":"","duration":0.205975968,"data_size":300008,'
    '"data_size_in_repo":0,"metadata_size":0,"metadata_size_in_repo":0,"total_files":4}'
)
VERBOSE = (
    '{"message_type":"verbose_status","action":"modified","item":"/f1","duration":0.002253984,'
    '"data_size":100005,"data_size_in_repo":100090,"metadata_size":0,"metadata_size_in_repo":0,"total_files":0}'
)
SUMMARY = (
    '{"message_type":"summary","files_new":4,"files_changed":0,"files_unmodified":0,"dirs_new":1,'
    '"dirs_changed":0,"dirs_unmodified":0,"data_blobs":4,"tree_blobs":2,"data_added":301737,'
    '"total_files_processed":4,"total_bytes_processed":300003,"total_duration":0.2166852,"snapshot_id":"f905df4b"}'
)
ERROR = (
    '{"message_type":"error","error":{"Op":"open","Path":"bad","Err":13},"during":"archival","item":"/tmp/rx/unr/bad"}'
)
SNAPSHOTS = (
    '[{"time":"2026-11-24T20:30:49.050006453Z","tree":"dd752ee8df93bd5b83c8418f99a2bebaf405b301799efa34aae27b40'
    'c9c92564","paths":["/tmp/rx/data"],"hostname":"ark","username":"root","tags":["a=1","b=2"],'
    '"id":"f905df4b4399086416016ed395ae972baf67a9c0b0acd7016b8650ba2ed9753f","short_id":"f905df4b"},'
    '{"time":"2026-11-24T21:30:49.5+01:00","parent":"f905df4b4399086416016ed395ae972baf67a9c0b0acd7016b8650ba2ed9'
    '753f","tree":"ee","paths":["/v"],"hostname":"node","username":"root","tags":["plain","k=v=w"],'
    '"id":"0011223344556677889900112233445566778899001122334455667788990011"}]'
)
KEYS = (
    '[{"current":false,"id":"16dfbcc3","userName":"root","hostName":"vm","created":"2026-11-24 20:30:45"},'
    '{"current":true,"id":"fc54952f","userName":"root","hostName":"vm","created":"2026-11-24 20:34:40"}]'
)


def test_status_line_becomes_progress_in_percent() -> None:
    message = parse_line(STATUS)
    assert isinstance(message, StatusMessage)
    assert message.current_files == ("/a", "/b")
    assert message.seconds_remaining == 3
    assert message.to_progress() == Progress(
        total_bytes=1000, bytes_done=400, files_done=4, total_files=10, percent=40.0
    )


def test_sparse_status_lines_default_missing_fields_to_zero() -> None:
    first = parse_line(STATUS_FIRST)
    assert isinstance(first, StatusMessage)
    assert first.to_progress() == Progress(100000, 0, 0, 1, 0.0)
    errors = parse_line(STATUS_ERRORS)
    assert isinstance(errors, StatusMessage)
    assert errors.error_count == 1


def test_scan_finished_and_verbose_lines_are_not_progress() -> None:
    scan = parse_line(SCAN_FINISHED)
    assert isinstance(scan, VerboseStatusMessage)
    assert (scan.action, scan.data_size, scan.total_files) == ("scan_finished", 300008, 4)
    verbose = parse_line(VERBOSE)
    assert isinstance(verbose, VerboseStatusMessage)
    assert (verbose.action, verbose.item) == ("modified", "/f1")


def test_summary_line_carries_snapshot_id_and_counters() -> None:
    message = parse_line(SUMMARY)
    assert isinstance(message, SummaryMessage)
    assert message.snapshot_id == "f905df4b"
    assert (message.files_new, message.dirs_new, message.data_added) == (4, 1, 301737)
    assert message.total_bytes_processed == 300003
    assert message.total_duration == pytest.approx(0.2166852)


def test_error_line_names_the_item_and_errno() -> None:
    message = parse_line(ERROR)
    assert message == ErrorMessage(error="open bad: Permission denied", during="archival", item="/tmp/rx/unr/bad")


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ("{}", "unknown error"),
        ('{"message":"read /x: input/output error"}', "read /x: input/output error"),
        ('"plain text"', "plain text"),
        ('{"Op":"lstat","Path":"/gone","Err":"x"}', "lstat /gone: failed"),
        ('{"Something":1}', '{"Something": 1}'),
    ],
)
def test_error_shapes_from_other_restic_versions(error: str, text: str) -> None:
    message = parse_line(f'{{"message_type":"error","error":{error},"during":"scan","item":"/x"}}')
    assert isinstance(message, ErrorMessage)
    assert message.error == text


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "Warning: at least one source file could not be read",
        "\x1b[2Ksignal interrupt received, cleaning up",
        "[1, 2]",
        '"text"',
        "{not json}",
        '{"message_type":',
    ],
)
def test_non_json_lines_are_kept_as_text(line: str) -> None:
    message = parse_line(line)
    assert isinstance(message, InvalidLine)
    assert message.text == line


def test_every_truncation_of_real_lines_parses_without_raising() -> None:
    for line in (STATUS, SUMMARY, ERROR, SCAN_FINISHED):
        for cut in range(len(line)):
            message = parse_line(line[:cut])
            assert isinstance(message, InvalidLine)


def test_wrong_types_do_not_crash() -> None:
    message = parse_line(
        '{"message_type":"status","percent_done":"half","total_bytes":true,"bytes_done":null,"current_files":5}'
    )
    assert isinstance(message, StatusMessage)
    assert message.to_progress() == Progress(0, 0, 0, 0, 0.0)
    summary = parse_line('{"message_type":"summary","snapshot_id":7,"data_added":"x"}')
    assert isinstance(summary, SummaryMessage)
    assert (summary.snapshot_id, summary.data_added) == (None, 0)


def test_unknown_message_types_are_passed_through() -> None:
    message = parse_line('{"message_type":"exit_error","code":10,"message":"repository does not exist"}')
    assert isinstance(message, OtherMessage)
    assert message.message_type == "exit_error"
    assert message.data["code"] == 10


def test_percent_is_derived_from_bytes_when_restic_sends_none_and_clamped() -> None:
    derived = parse_line('{"message_type":"status","total_bytes":200,"bytes_done":50}')
    assert isinstance(derived, StatusMessage)
    assert derived.to_progress().percent == 25.0
    over = parse_line('{"message_type":"status","percent_done":1.7}')
    assert isinstance(over, StatusMessage)
    assert over.to_progress().percent == 100.0


def test_backup_output_tracks_progress_summary_and_unreadable_paths() -> None:
    seen: list[Progress] = []
    output = BackupOutput(seen.append, source_dir="/tmp/rx/unr")
    for line in [STATUS_FIRST, "garbage", STATUS, SCAN_FINISHED, ERROR, STATUS_ERRORS, SUMMARY, ERROR]:
        output.on_line(line)
    assert [p.percent for p in seen] == [0.0, 40.0, 0.0]
    assert output.summary is not None
    assert output.summary.snapshot_id == "f905df4b"
    assert output.error_count == 2
    assert output.unreadable_paths() == ("bad",)  # relative to the backed-up directory, deduplicated
    final = output.final_progress()
    assert final == Progress(300003, 300003, 4, 4, 100.0)


def test_backup_output_bounds_the_error_list() -> None:
    output = BackupOutput(None, source_dir="/src", max_errors=3)
    for i in range(10):
        output.on_line(
            f'{{"message_type":"error","error":{{"Op":"open","Path":"f{i}","Err":13}},"item":"/src/d/f{i}"}}'
        )
    assert output.error_count == 10
    assert output.unreadable_paths() == ("d/f0", "d/f1", "d/f2")
    assert output.final_progress() is None


def test_error_without_item_uses_the_path_in_the_message() -> None:
    output = BackupOutput(None, source_dir="/src")
    output.on_line('{"message_type":"error","error":{"Op":"open","Path":"sub/f","Err":5},"item":""}')
    assert output.unreadable_paths() == ("sub/f",)


def test_parse_snapshots_with_nanosecond_times_offsets_and_plain_tags() -> None:
    first, second = parse_snapshots(SNAPSHOTS)
    assert first.short_id == "f905df4b"
    assert first.id.startswith("f905df4b")
    assert first.tags == {"a": "1", "b": "2"}
    assert first.raw_tags == ("a=1", "b=2")
    assert first.paths == ("/tmp/rx/data",)
    assert first.hostname == "ark"
    assert first.parent is None
    assert first.time.isoformat() == "2026-11-24T20:30:49.050006+00:00"
    assert second.short_id == "00112233"  # derived when restic omits it
    assert second.tags == {"plain": "", "k": "v=w"}
    assert second.parent == first.id
    assert second.time.utcoffset() is not None
    assert second.time.timestamp() == pytest.approx(first.time.timestamp() + 0.45, abs=0.01)


def test_parse_snapshots_empty_and_invalid() -> None:
    assert parse_snapshots("[]") == []
    assert parse_snapshots("null") == []
    with pytest.raises(ResticOutputError, match="not valid JSON"):
        parse_snapshots('[{"id":')
    with pytest.raises(ResticOutputError, match="not a JSON array"):
        parse_snapshots('{"id":"x"}')
    with pytest.raises(ResticOutputError, match="without an id"):
        parse_snapshots('[{"time":"2026-11-24T20:30:49Z"}]')
    with pytest.raises(ResticOutputError, match="unparseable time"):
        parse_snapshots('[{"id":"ab","time":"yesterday"}]')


def test_parse_time_without_zone_is_utc() -> None:
    assert parse_time("2026-01-02T03:04:05.123456789").isoformat() == "2026-01-02T03:04:05.123456+00:00"


def test_parse_keys() -> None:
    keys = parse_keys(KEYS)
    assert [(k.id, k.current) for k in keys] == [("16dfbcc3", False), ("fc54952f", True)]
    assert keys[0].username == "root"
    assert keys[0].hostname == "vm"
    assert keys[1].created == "2026-11-24 20:34:40"


def test_parse_stats_and_init() -> None:
    stats = parse_object('{"total_size":300003,"total_file_count":5,"snapshots_count":1}\n', "stats")
    assert stats["total_size"] == 300003
    with pytest.raises(ResticOutputError, match="printed no JSON object"):
        parse_object("nothing here", "stats")
    assert parse_init("created restic repository bdfcd35407 at ./repo\n\nPlease note ...") == "bdfcd35407"
    assert parse_init("unexpected") == ""


# stderr texts restic 0.14.0 printed on this machine for each failure
MISSING_LOCAL = (
    "Fatal: unable to open config file: stat nope/config: no such file or directory\n"
    "Is there a repository at the following location?\n./nope"
)
MISSING_S3_KEY = (
    "Fatal: unable to open config file: Stat: The specified key does not exist.\n"
    "Is there a repository at the following location?\ns3:http://127.0.0.1:5987/bucket1/p"
)
MISSING_S3_BUCKET = (
    "Fatal: unable to open config file: Stat: The specified bucket does not exist\n"
    "Is there a repository at the following location?\ns3:http://127.0.0.1:5987/nobucket/p"
)
REFUSED = (
    'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:1/bucket/?location=": dial tcp '
    "127.0.0.1:1: connect: connection refused\nIs there a repository at the following location?\n"
    "s3:http://127.0.0.1:1/bucket/p"
)
LOCKED = (
    "unable to create lock in backend: repository is already locked by PID 20211 on vm "
    "by root (UID 0, GID 0)\n"
    "lock was created at 2026-11-24 20:33:15 (1.401963152s ago)\nstorage ID ae1fdad2\n"
    "the `unlock` command can be used to remove stale locks"
)
DENIED_REPO = "Fatal: unable to open repository at pd/repo: ReadDir: open pd/repo/keys: permission denied"
DENIED_LOCKS = (
    "List(lock) returned error, retrying after 552.330144ms: open pd/repo/locks: permission denied\n"
    "open pd/repo/locks: permission denied\nunable to create lock in backend"
)


@pytest.mark.parametrize(
    ("exit_code", "stderr", "reason"),
    [
        (1, "Fatal: wrong password or no key found", Reason.WRONG_PASSWORD),
        (1, MISSING_LOCAL, Reason.REPOSITORY_NOT_FOUND),
        (1, MISSING_S3_KEY, Reason.REPOSITORY_NOT_FOUND),
        (1, MISSING_S3_BUCKET, Reason.REPOSITORY_NOT_FOUND),
        (1, REFUSED, Reason.UNREACHABLE),
        (1, LOCKED, Reason.LOCKED),
        (1, DENIED_REPO, Reason.PERMISSION_DENIED),
        (1, DENIED_LOCKS, Reason.PERMISSION_DENIED),
        (
            1,
            "Fatal: create repository at ./repo failed: config file already exists",
            Reason.ALREADY_INITIALIZED,
        ),
        (1, "Fatal: refusing to remove key currently used to access repository", Reason.KEY_IN_USE),
        (1, 'invalid id "deadbeef": no matching ID found for prefix "deadbeef"', Reason.ID_NOT_FOUND),
        (1, "Fatal: something new", Reason.UNKNOWN),
        (3, "Warning: at least one source file could not be read", Reason.INCOMPLETE),
        (130, "signal interrupt received, cleaning up", Reason.INTERRUPTED),
        (10, "Fatal: repository does not exist", Reason.REPOSITORY_NOT_FOUND),
        (11, "", Reason.LOCKED),
        (12, "", Reason.WRONG_PASSWORD),
    ],
)
def test_failure_classification(exit_code: int, stderr: str, reason: Reason) -> None:
    assert classify(exit_code, stderr) is reason


def test_restic_error_message_names_command_code_and_last_lines() -> None:
    err = ResticError(1, "\x1b[2Kfirst\n\nsecond\nthird\nFatal: wrong password or no key found\n", "restic backup")
    assert str(err) == "restic backup exited with code 1: second | third | Fatal: wrong password or no key found"
    assert err.reason is Reason.WRONG_PASSWORD
    assert err.stderr_tail.startswith("first")
    assert str(ResticError(2, "", "restic check")) == "restic check exited with code 2: no error output"
    assert ResticError(1, "x", "restic init", reason=Reason.LOCKED).reason is Reason.LOCKED


def test_restic_error_message_keeps_the_line_that_says_what_went_wrong() -> None:
    stderr = (
        "unable to create lock in backend: repository is already locked exclusively by PID 812 on node-3 by root\n"
        "lock was created at 2026-11-24 23:34:15 (520ms ago)\n"
        "storage ID cc4add59\n"
        "the `unlock` command can be used to remove stale locks\n"
    )
    err = ResticError(1, stderr, "restic backup")
    assert err.reason is Reason.LOCKED
    assert str(err) == (
        "restic backup exited with code 1: unable to create lock in backend: repository is already locked "
        "exclusively by PID 812 on node-3 by root | lock was created at 2026-11-24 23:34:15 (520ms ago) | "
        "storage ID cc4add59 | the `unlock` command can be used to remove stale locks"
    )


def test_stderr_tail_is_bounded_by_lines_and_bytes() -> None:
    tail = StderrTail(max_lines=3, max_bytes=20)
    for i in range(10):
        tail.add(f"line {i}")
    assert tail.text() == "line 7\nline 8\nline 9"
    tail.add("x" * 100)
    assert tail.text() == "x" * 20
    small = StderrTail(max_lines=64, max_bytes=15)
    for i in range(5):
        small.add(f"l{i}abc")
    assert small.text() == "l3abc\nl4abc"


def test_line_splitter_handles_chunk_boundaries_and_cuts_overlong_lines() -> None:
    lines: list[str] = []
    splitter = _LineSplitter(lines.append, max_line=10)
    for chunk in [b"ab", b"c\r\nde", b"f\n" + b"x" * 25, b"y" * 5 + b"\nnext\n", b"\xff tail"]:
        splitter.feed(chunk)
    splitter.close()
    assert lines == ["abc", "def", "x" * 10, "next", "\ufffd tail"]
