"""Printing Ark objects: tables like Ark's CLI, or the objects themselves as JSON or YAML."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import click
import orjson
import yaml

OUTPUT_FORMATS = click.Choice(["table", "json", "yaml"], case_sensitive=False)


def output_option(f: Any) -> Any:
    return click.option(
        "-o", "--output", type=OUTPUT_FORMATS, default="table", show_default=True, help="Output format."
    )(f)


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_age(value: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short ages: 45s, 12m, 3h, 5d."""
    t = parse_time(value)
    if t is None:
        return "<unknown>"
    secs = int(((now or datetime.datetime.now(datetime.UTC)) - t).total_seconds())
    if secs < 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "d" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def human_time(value: str | None) -> str:
    t = parse_time(value)
    return t.strftime("%Y-%m-%d %H:%M:%S %z") if t else "<n/a>"


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["   ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def print_objects(
    objs: list[dict[str, Any]],
    fmt: str,
    headers: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[str]],
    list_kind: str,
) -> None:
    fmt = fmt.lower()
    if fmt == "table":
        click.echo(table(headers, [row(o) for o in objs]))
        return
    doc: Any = objs[0] if len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}
    if len(objs) != 1:
        doc["kind"] = list_kind if list_kind else "List"
    if fmt == "json":
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "New")
