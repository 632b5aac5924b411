"""Terminal output: rich tables for people, tab-separated lines and JSON for scripts,
one-line errors on stderr.

Why the split: a table piped into `cut`/`awk` must not carry box drawing or escapes,
and a script must be able to ask for JSON once (BROKER_FORMAT=json) instead of on
every command. rich is imported only when something is drawn on a terminal, so
scripted calls and `broker --version` do not pay for it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from broker.core.errors import UsageError
from broker.core.timeutil import from_text, parse_moment, to_display, to_text, utcnow

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

FORMAT_VAR = "BROKER_FORMAT"
FORMATS = ("table", "tsv", "json")  # table: rich on a terminal, tab-separated otherwise


@dataclass
class Presentation:
    """How listings are shown in this process: set once from the environment and options."""

    format: str = "table"
    headers: bool = True


presentation = Presentation()


def configure(environ: Mapping[str, str]) -> None:
    """Read BROKER_FORMAT (allow-listed: a typo must not silently change what scripts parse)."""
    value = environ.get(FORMAT_VAR, "").strip().lower() or "table"
    if value not in FORMATS:
        raise UsageError(
            f"{FORMAT_VAR}={_cell(environ.get(FORMAT_VAR, ''))[:40]!r} is not a format",
            fix=f"set it to one of {', '.join(FORMATS)}, or unset it",
        )
    presentation.format = value


def hide_headers() -> None:
    """--no-headers: tables without their header line (and title)."""
    presentation.headers = False


def json_requested() -> bool:
    """BROKER_FORMAT=json: every listing and show answers as with --json."""
    return presentation.format == "json"


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


@cache
def out() -> Console:
    """stdout for people. Under NO_COLOR no escape at all: color_system None drops bold and
    dim too (rich's own NO_COLOR handling keeps them)."""
    from rich.console import Console  # lazy: start-up

    return Console(highlight=False, soft_wrap=True, color_system=None if _no_color() else "auto")


@cache
def err() -> Console:
    """stderr: errors, warnings, spinners and progress bars (those only on a terminal)."""
    from rich.console import Console  # lazy: start-up

    return Console(
        stderr=True,
        highlight=False,
        soft_wrap=True,
        color_system=None if _no_color() else "auto",
    )


def stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def print_json(data: Any) -> None:
    """Stable JSON on stdout (sorted keys), nothing else; a record as the daemon sent it."""
    sys.stdout.write(json.dumps(_plain(data), indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _plain(data: Any) -> Any:
    if hasattr(data, "model_dump"):  # a pydantic record (not imported here: start-up)
        return data.model_dump(mode="json", by_alias=True)
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


def fields(record: BaseModel) -> list[list[Any]]:
    """A record's fields as key/value rows, valued as in its JSON."""
    return [[k, v] for k, v in record.model_dump(mode="json", by_alias=True).items()]


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on a terminal; tab-separated lines otherwise (or with BROKER_FORMAT=tsv).

    Every cell has control characters (tab and newline included) replaced, so a value
    from the directory or a node can neither split a line or a field nor inject
    markup or escapes."""
    if presentation.format == "tsv" or not stdout_is_terminal():
        _tsv(title, columns, rows)
        return
    from rich.markup import escape  # lazy: only on a terminal
    from rich.table import Table

    grid = Table(title=title, title_justify="left", show_header=presentation.headers)
    for column in columns:
        grid.add_column(escape(_cell(column)))
    for row in rows:
        grid.add_row(*(escape(_cell(value)) for value in row))
    out().print(grid)


def _tsv(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Header line (after `# title` when there is one) unless --no-headers, then a line per row."""
    lines: list[str] = []
    if presentation.headers:
        if title:
            lines.append(f"# {_cell(title)}")
        lines.append("\t".join(_cell(column) for column in columns))
    lines.extend("\t".join(_cell(value) for value in row) for row in rows)
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in text)


def _text(message: str) -> str:
    """Markup escaped and control characters (ESC, CR ...) replaced, line breaks kept:
    messages can carry DNs and names from the directory."""
    from rich.markup import escape  # lazy: start-up

    return "\n".join(escape(_cell(line)) for line in message.split("\n"))


def say(message: str) -> None:
    out().print(_text(message))


def fail(message: str) -> None:
    err().print(f"broker: error: {_text(message)}")


def warn(message: str) -> None:
    err().print(f"broker: warning: {_text(message)}")


def moment(text: str | None) -> str | None:
    """--since/--until (an ISO time or a duration ago) as the UTC text the daemon expects
    (it validates it again)."""
    return to_text(parse_moment(text, utcnow())) if text else None


def when(stamp: str | datetime | None) -> str:
    """A stored UTC time for a table: `2026-11-23 17:38:45Z`, or `-`."""
    if not stamp:
        return "-"
    return to_display(stamp if isinstance(stamp, datetime) else from_text(stamp))
