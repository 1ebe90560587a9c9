"""Go duration strings (metav1.Duration on the wire), parsed and printed exactly like Go's `time` package.

`parse_duration_ns` / `format_duration_ns` are exact (nanoseconds, int64 range, Go's float rounding of
fractions). `parse_duration` / `format_duration` work on `datetime.timedelta`, whose resolution is one
microsecond: sub-microsecond parts are truncated toward zero.
"""

from __future__ import annotations

import datetime

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_MAX_NS = (1 << 63) - 1
_MIN_NS = -(1 << 63)
_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_DIGITS = "0123456789"
_HINT = 'use a Go duration such as "720h", "1h30m", "90s" or "1.5h" (units ns, us, ms, s, m, h)'

# The same grammar as a regular expression (RE2 and Python compatible), for CRD schemas. It does
# not check the int64 range; parse_duration does.
DURATION_PATTERN = "^[-+]?(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"


class DurationError(ValueError):
    """A string is not a valid Go duration; the message names the input and the expected form."""


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _invalid(orig: str, what: str = "invalid duration") -> DurationError:
    return DurationError(f"time: {what} {_go_quote(orig)}: {_HINT}")


def _leading_int(s: str) -> tuple[int, str] | None:
    """Consumes [0-9]*; None on overflow past 1<<63 (as Go's leadingInt)."""
    x = 0
    i = 0
    while i < len(s) and s[i] in _DIGITS:
        if x > (1 << 63) // 10:
            return None
        x = x * 10 + int(s[i])
        if x > 1 << 63:
            return None
        i += 1
    return x, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """Consumes [0-9]*, ignoring digits past int64 precision (as Go's leadingFraction)."""
    x = 0
    scale = 1.0
    overflow = False
    i = 0
    while i < len(s) and s[i] in _DIGITS:
        if not overflow:
            if x > _MAX_NS // 10:
                overflow = True
            else:
                y = x * 10 + int(s[i])
                if y > 1 << 63:
                    overflow = True
                else:
                    x = y
                    scale *= 10
        i += 1
    return x, scale, s[i:]


def parse_duration_ns(s: str) -> int:
    """Go's time.ParseDuration: a signed sequence of decimal numbers with units, in nanoseconds."""
    if not isinstance(s, str):
        raise DurationError(f'a duration must be a string such as "1h", got {type(s).__name__} {s!r}')
    orig = s
    neg = False
    if s and s[0] in "-+":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(orig)
    total = 0
    while s:
        if not (s[0] == "." or s[0] in _DIGITS):
            raise _invalid(orig)
        before = len(s)
        lead = _leading_int(s)
        if lead is None:
            raise _invalid(orig)
        v, s = lead
        pre = before != len(s)
        post = False
        f, scale = 0, 1.0
        if s and s[0] == ".":
            s = s[1:]
            before = len(s)
            f, scale, s = _leading_fraction(s)
            post = before != len(s)
        if not pre and not post:
            raise _invalid(orig)
        i = 0
        while i < len(s) and not (s[i] == "." or s[i] in _DIGITS):
            i += 1
        if i == 0:
            raise _invalid(orig, "missing unit in duration")
        unit_name, s = s[:i], s[i:]
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise DurationError(f"time: unknown unit {_go_quote(unit_name)} in duration {_go_quote(orig)}: {_HINT}")
        if v > (1 << 63) // unit:
            raise _invalid(orig)
        v *= unit
        if f > 0:
            # Go computes the fraction in float64; doing the same keeps results bit-identical.
            v += int(float(f) * (float(unit) / scale))
            if v > 1 << 63:
                raise _invalid(orig)
        total += v
        if total > 1 << 63:
            raise _invalid(orig)
    if neg:
        return -total
    if total > _MAX_NS:
        raise _invalid(orig)
    return total


def _fmt_frac(v: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction of v/10**prec without trailing zeros, and the integer part."""
    digits = []
    printing = False
    for _ in range(prec):
        digit = v % 10
        printing = printing or digit != 0
        if printing:
            digits.append(str(digit))
        v //= 10
    frac = "." + "".join(reversed(digits)) if printing else ""
    return frac, v


def format_duration_ns(ns: int) -> str:
    """Go's Duration.String(): "72h3m0.5s", "1m30s", "1.5ms", "0s"."""
    if not _MIN_NS <= ns <= _MAX_NS:
        raise DurationError(f"duration {ns}ns does not fit in a Go int64 duration (about 292 years)")
    u = -ns if ns < 0 else ns
    sign = "-" if ns < 0 else ""
    if u == 0:
        return "0s"
    if u < SECOND:
        if u < MICROSECOND:
            prec, unit = 0, "ns"
        elif u < MILLISECOND:
            prec, unit = 3, "\u00b5s"
        else:
            prec, unit = 6, "ms"
        frac, whole = _fmt_frac(u, prec)
        return f"{sign}{whole}{frac}{unit}"
    frac, secs = _fmt_frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes > 0:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours > 0:
            out = f"{hours}h{out}"
    return sign + out


def parse_duration(s: str) -> datetime.timedelta:
    """Go's time.ParseDuration as a timedelta (sub-microsecond parts truncated toward zero)."""
    ns = parse_duration_ns(s)
    micros = abs(ns) // MICROSECOND
    return datetime.timedelta(microseconds=-micros if ns < 0 else micros)


def timedelta_to_ns(td: datetime.timedelta) -> int:
    return ((td.days * 86400 + td.seconds) * 1_000_000 + td.microseconds) * MICROSECOND


def format_duration(td: datetime.timedelta) -> str:
    """Go's Duration.String() of a timedelta: timedelta(hours=720) -> "720h0m0s"."""
    return format_duration_ns(timedelta_to_ns(td))


def validate_duration(s: str) -> str:
    """Returns `s` unchanged if it is a valid Go duration, else raises DurationError."""
    parse_duration_ns(s)
    return s
