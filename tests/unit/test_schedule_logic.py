"""When a Schedule makes backups, what they are called, and what a bad cron expression tells the user."""

from __future__ import annotations

import datetime

import pytest

from arkd.controllers.deletion import label_value
from arkd.controllers.schedule import (
    ScheduleError,
    backup_for_slot,
    backup_name,
    parse_schedule,
    validate_schedule,
)

UTC = datetime.UTC


def t(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule_obj(name: str = "nightly", cron: str = "0 1 * * *", **template: object) -> dict[str, object]:
    return {
        "apiVersion": "ark.heptio.com/v1",
        "kind": "Schedule",
        "metadata": {"name": name, "namespace": "heptio-ark"},
        "spec": {"schedule": cron, "template": template},
    }


def test_next_run_is_the_first_slot_strictly_after_the_last_backup() -> None:
    cron = parse_schedule("0 */6 * * *")
    assert cron.next_after(t("2018-06-01T05:59:59")) == t("2018-06-01T06:00:00")
    # A backup made exactly at a slot does not make that slot due again.
    assert cron.next_after(t("2018-06-01T06:00:00")) == t("2018-06-01T12:00:00")


def test_nothing_is_due_before_the_next_slot() -> None:
    cron = parse_schedule("* * * * *")
    assert cron.due_slot(t("2018-06-01T00:00:00"), t("2018-06-01T00:00:59")) is None


def test_a_slot_is_due_from_its_exact_second() -> None:
    cron = parse_schedule("* * * * *")
    assert cron.due_slot(t("2018-06-01T00:00:00"), t("2018-06-01T00:01:00")) == t("2018-06-01T00:01:00")


def test_missed_runs_after_downtime_collapse_into_the_latest_slot() -> None:
    cron = parse_schedule("0 * * * *")
    last = t("2018-06-01T00:00:00")
    now = t("2018-06-03T05:30:00")  # 53 hourly runs were missed
    slot = cron.due_slot(last, now)
    assert slot == t("2018-06-03T05:00:00")
    # Once that one is made, nothing else is due until the next hour.
    assert slot is not None
    assert cron.due_slot(slot, now) is None
    assert cron.next_after(slot) == t("2018-06-03T06:00:00")


def test_every_descriptor_counts_from_the_last_backup() -> None:
    cron = parse_schedule("@every 90m")
    last = t("2018-06-01T00:00:00")
    assert cron.next_after(last) == t("2018-06-01T01:30:00")
    assert cron.due_slot(last, t("2018-06-01T01:29:59")) is None
    assert cron.due_slot(last, t("2018-06-01T05:00:00")) == t("2018-06-01T04:30:00")


def test_descriptors_are_accepted() -> None:
    assert parse_schedule("@daily").next_after(t("2018-06-01T10:00:00")) == t("2018-06-02T00:00:00")
    assert parse_schedule("@hourly").next_after(t("2018-06-01T10:00:00")) == t("2018-06-01T11:00:00")


def test_times_are_utc_whatever_the_input_zone() -> None:
    cron = parse_schedule("0 1 * * *")
    cest = datetime.timezone(datetime.timedelta(hours=2))
    # 00:30 UTC, written in UTC+2
    assert cron.next_after(datetime.datetime(2018, 6, 1, 2, 30, tzinfo=cest)) == t("2018-06-01T01:00:00")


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("", "spec.schedule is empty"),
        ("* * * *", "has 5 fields"),
        ("0 0 * * * *", "has 5 fields"),
        ("61 * * * *", "out of range"),
        ("*/0 * * * *", "not acceptable"),
        ("0 0 31 2 *", "never matches"),
        ("@fortnightly", "unknown descriptor"),
        ("@every soon", "invalid duration"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_schedule(expression)
    message = str(err.value)
    assert says in message
    # Every message shows what a valid value looks like.
    assert "e.g." in message or "@every" in message or "Go duration" in message


def test_validation_reports_the_cron_problem_as_a_validation_error() -> None:
    cron, errors = validate_schedule(schedule_obj(cron="0 25 * * *"))
    assert cron is None
    assert len(errors) == 1
    assert "invalid schedule '0 25 * * *'" in errors[0]


def test_a_name_too_long_for_its_backup_names_is_refused() -> None:
    cron, errors = validate_schedule(schedule_obj(name="s" * 240))
    assert cron is None
    assert "at most 238" in errors[0]


def test_backups_are_named_after_the_slot_in_utc() -> None:
    assert backup_name("nightly", t("2018-06-01T01:00:00")) == "nightly-20180601010000"


def test_a_scheduled_backup_is_the_template_labelled_with_its_schedule() -> None:
    obj = schedule_obj(includedNamespaces=["app"], ttl="24h0m0s")
    backup = backup_for_slot(obj, t("2018-06-01T01:00:00"))
    assert backup["metadata"] == {
        "name": "nightly-20180601010000",
        "namespace": "heptio-ark",
        "labels": {"ark-schedule": "nightly"},
    }
    assert backup["spec"] == {"includedNamespaces": ["app"], "ttl": "24h0m0s"}
    assert backup["kind"] == "Backup"


def test_long_names_still_make_valid_label_values() -> None:
    long = "a" * 100
    value = label_value(long)
    assert len(value) == 63
    assert value.startswith("a" * 57)
    assert label_value("short") == "short"
    assert label_value("b" * 100) != value
