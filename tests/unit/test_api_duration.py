"""Go duration strings behave exactly like Go's time.ParseDuration and Duration.String()."""

from __future__ import annotations

import datetime

import pytest

from arkd.api.duration import (
    DURATION_PATTERN,
    HOUR,
    MICROSECOND,
    MILLISECOND,
    MINUTE,
    NANOSECOND,
    SECOND,
    DurationError,
    format_duration,
    format_duration_ns,
    parse_duration,
    parse_duration_ns,
)

MAX = (1 << 63) - 1
MIN = -(1 << 63)

# Go's time_test.go parseDurationTests.
PARSE_CASES = [
    ("0", 0),
    ("5s", 5 * SECOND),
    ("30s", 30 * SECOND),
    ("1478s", 1478 * SECOND),
    ("-5s", -5 * SECOND),
    ("+5s", 5 * SECOND),
    ("-0", 0),
    ("+0", 0),
    ("5.0s", 5 * SECOND),
    ("5.6s", 5 * SECOND + 600 * MILLISECOND),
    ("5.s", 5 * SECOND),
    (".5s", 500 * MILLISECOND),
    ("1.0s", 1 * SECOND),
    ("1.00s", 1 * SECOND),
    ("1.004s", 1 * SECOND + 4 * MILLISECOND),
    ("1.0040s", 1 * SECOND + 4 * MILLISECOND),
    ("100.00100s", 100 * SECOND + 1 * MILLISECOND),
    ("10ns", 10 * NANOSECOND),
    ("11us", 11 * MICROSECOND),
    ("12\u00b5s", 12 * MICROSECOND),
    ("12\u03bcs", 12 * MICROSECOND),
    ("13ms", 13 * MILLISECOND),
    ("14s", 14 * SECOND),
    ("15m", 15 * MINUTE),
    ("16h", 16 * HOUR),
    ("3h30m", 3 * HOUR + 30 * MINUTE),
    ("10.5s4m", 4 * MINUTE + 10 * SECOND + 500 * MILLISECOND),
    ("-2m3.4s", -(2 * MINUTE + 3 * SECOND + 400 * MILLISECOND)),
    ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6),
    ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND),
    ("52763797000ns", 52763797000),
    ("0.3333333333333333333h", 20 * MINUTE),
    ("9007199254740993ns", (1 << 53) + 1),
    ("9223372036854775807ns", MAX),
    ("9223372036854775.807us", MAX),
    ("9223372036s854ms775us807ns", MAX),
    ("-9223372036854775808ns", MIN),
    ("-9223372036854775.808us", MIN),
    ("-9223372036s854ms775us808ns", MIN),
    ("-2562047h47m16.854775808s", MIN),
    ("0.100000000000000000000h", 6 * MINUTE),
    ("0.830103483285477580700h", 49 * MINUTE + 48 * SECOND + 372539827),
    # Ark's own values.
    ("720h0m0s", 720 * HOUR),
    ("720h", 720 * HOUR),
    ("1h30m0s", 90 * MINUTE),
    ("90s", 90 * SECOND),
    ("1.5h", 90 * MINUTE),
]

# Go's time_test.go durationTests (Duration.String()), plus the forms Ark writes.
FORMAT_CASES = [
    (0, "0s"),
    (1, "1ns"),
    (1100, "1.1\u00b5s"),
    (2200 * MICROSECOND, "2.2ms"),
    (3300 * MILLISECOND, "3.3s"),
    (4 * MINUTE + 5 * SECOND, "4m5s"),
    (4 * MINUTE + 5001 * MILLISECOND, "4m5.001s"),
    (5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND, "5h6m7.001s"),
    (8 * MINUTE + 1, "8m0.000000001s"),
    (MAX, "2562047h47m16.854775807s"),
    (MIN, "-2562047h47m16.854775808s"),
    (720 * HOUR, "720h0m0s"),
    (90 * MINUTE, "1h30m0s"),
    (90 * SECOND, "1m30s"),
    (1500 * MILLISECOND, "1.5s"),
    (500 * MILLISECOND, "500ms"),
    (-90 * SECOND, "-1m30s"),
]

# Go's parseDurationErrorTests and other garbage.
INVALID = [
    "",
    "3",
    "-",
    "s",
    ".",
    "-.",
    ".s",
    "+.s",
    "1d",
    "\x85\x85",
    "\xffff",
    "hello \xffff world",
    "9223372036854775810ns",
    "9223372036854775808ns",
    "-9223372036854775809ns",
    "9223372036854ms775us808ns",
    "-9223372036854ms775us809ns",
    "1h 30m",
    " 1h",
    "3 days",
]


@pytest.mark.parametrize(("text", "ns"), PARSE_CASES)
def test_parse_matches_go(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(("ns", "text"), FORMAT_CASES)
def test_format_matches_go(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


@pytest.mark.parametrize(("ns", "text"), FORMAT_CASES)
def test_formatted_text_parses_back(ns: int, text: str) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", INVALID)
def test_garbage_is_rejected_with_the_input_and_the_expected_form(text: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration_ns(text)
    message = str(err.value)
    assert message.startswith("time: ")
    assert '"720h"' in message  # says what a valid value looks like


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(DurationError, match='missing unit in duration "12"'):
        parse_duration("12")
    with pytest.raises(DurationError, match='unknown unit "d" in duration "1d"'):
        parse_duration("1d")
    with pytest.raises(DurationError, match='invalid duration "abc"'):
        parse_duration("abc")
    with pytest.raises(DurationError, match="must be a string"):
        parse_duration(12)  # type: ignore[arg-type]


def test_timedelta_api() -> None:
    assert parse_duration("720h") == datetime.timedelta(days=30)
    assert parse_duration("1.5h") == datetime.timedelta(minutes=90)
    assert parse_duration("-1m30s") == datetime.timedelta(seconds=-90)
    # timedelta has microsecond resolution: nanoseconds are truncated toward zero.
    assert parse_duration("1500ns") == datetime.timedelta(microseconds=1)
    assert parse_duration("-1500ns") == datetime.timedelta(microseconds=-1)
    assert format_duration(datetime.timedelta(days=30)) == "720h0m0s"
    assert format_duration(datetime.timedelta(seconds=90)) == "1m30s"
    assert format_duration(datetime.timedelta(0)) == "0s"
    assert format_duration(datetime.timedelta(milliseconds=500)) == "500ms"
    assert format_duration(parse_duration("90s")) == "1m30s"
    with pytest.raises(DurationError, match="int64"):
        format_duration(datetime.timedelta(days=300 * 365))


@pytest.mark.parametrize("text", [t for t, _ in PARSE_CASES])
def test_crd_pattern_accepts_every_valid_duration(text: str) -> None:
    import re

    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", [t for t in INVALID if "922337" not in t])
def test_crd_pattern_rejects_malformed_durations(text: str) -> None:
    import re

    assert not re.fullmatch(DURATION_PATTERN, text)
