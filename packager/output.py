"""How commands talk to people and to machines: tables and notes on a terminal, one JSON object
with `--json`. Notes go to stderr so that stdout stays parseable."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object for machines.")


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print `data` as JSON, or `text` (default: a key/value table of `data`) for people."""
    if as_json:
        click.echo(json.dumps(data, indent=None, sort_keys=True, default=str))
        return
    click.echo(text if text is not None else table(data))


def note(message: str) -> None:
    click.echo(message, err=True)


def warn(message: str) -> None:
    click.echo(f"packager: warning: {message}", err=True)


def table(data: Any) -> str:
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0)
        return "\n".join(f"{str(k).ljust(width)}  {_cell(v)}" for k, v in data.items())
    return str(data)


def grid(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (no colours: logs and CI read it too)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def progress_enabled(as_json: bool) -> bool:
    """Progress bars only for people at a terminal."""
    return not as_json and sys.stderr.isatty()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)
