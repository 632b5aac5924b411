"""Terminal output: rich tables for people, JSON for scripts, one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.core.timeutil import from_text, parse_moment, to_display, to_text, utcnow

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Stable JSON on stdout (sorted keys), nothing else; a record as the daemon sent it."""
    sys.stdout.write(json.dumps(_plain(data), indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", by_alias=True)
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


def fields(record: BaseModel) -> list[list[Any]]:
    """A record's fields as key/value rows, valued as in its JSON."""
    return [[k, v] for k, v in record.model_dump(mode="json", by_alias=True).items()]


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table; every cell is escaped, so directory or node data cannot inject markup."""
    grid = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(escape(_cell(value)) for value in row))
    out.print(grid)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in text)


def _text(message: str) -> str:
    """Markup escaped and control characters (ESC, CR ...) replaced, line breaks kept:
    messages can carry DNs and names from the directory."""
    return "\n".join(escape(_cell(line)) for line in message.split("\n"))


def say(message: str) -> None:
    out.print(_text(message))


def fail(message: str) -> None:
    err.print(f"broker: error: {_text(message)}")


def warn(message: str) -> None:
    err.print(f"broker: warning: {_text(message)}")


def moment(text: str | None) -> str | None:
    """--since/--until (an ISO time or a duration ago) as the UTC text the daemon expects
    (it validates it again)."""
    return to_text(parse_moment(text, utcnow())) if text else None


def when(stamp: str | datetime | None) -> str:
    """A stored UTC time for a table: `2026-11-23 17:38:45Z`, or `-`."""
    if not stamp:
        return "-"
    return to_display(stamp if isinstance(stamp, datetime) else from_text(stamp))
