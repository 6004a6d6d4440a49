"""How `wondercraft-ctl` prints: aligned tables and key/value pairs for people, JSON for scripts,
and the formatting of bytes, times, durations and numbers they share."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip())


def pairs(items: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in items)
    for key, value in items:
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


def json_document(data: Any) -> None:
    """One indented JSON document (a command's whole answer)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def json_line(data: Any) -> None:
    """One JSON object on its own line, flushed (the streaming commands: one per update)."""
    click.echo(json.dumps(data, sort_keys=True))
    sys.stdout.flush()


def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def when(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def seconds(value: float | None) -> str | None:
    """ "1.25 s", or None when there is no value (printed as "-")."""
    return None if value is None else f"{number(value)} s"
