"""The few SQL fragments SQLite and PostgreSQL spell differently, in one place (pure).

Why: the services' SQL is written once, in the subset both engines run with the same
result (docs/store.md, "Portable SQL"), so the store can run on either engine unchanged.
A handful of things have no common spelling: JSON values, time arithmetic on the
store's UTC text, glob patterns and the session text index. Each is one function here
that returns the fragment for the connection's engine; no other module asks which
engine it is talking to. tests/unit/test_sql_portable.py fails when a SQLite-only
construct appears anywhere else in broker/ (outside broker/store/).

The engine is told by the connection's type: a `sqlite3.Connection` is SQLite,
anything else is the PostgreSQL adapter's connection. Fragments take the SQL
expressions they wrap (column names, `?`), never values: values stay bound parameters.
"""

from __future__ import annotations

import enum
import re
import sqlite3


class Engine(enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def engine_of(conn: object) -> Engine:
    """Which engine `conn` talks to: the one place that decides."""
    return Engine.SQLITE if isinstance(conn, sqlite3.Connection) else Engine.POSTGRESQL


def json_values(engine: Engine, expr: str = "?") -> str:
    """A subquery of the text values of a JSON array, one column named `v` (`x IN (<this>)`,
    or `FROM (<this>) AS a`): `expr` is a column or `?` bound to the array's JSON text."""
    if engine is Engine.SQLITE:
        return f"SELECT value AS v FROM json_each({expr})"  # noqa: S608 (expr: a column or ?)
    return f"SELECT json_array_elements_text(CAST({expr} AS json)) AS v"


def json_text(engine: Engine, expr: str, key: str) -> str:
    """The member `key` of the JSON object in `expr`, as text (NULL when absent); compare
    it with text parameters only (SQLite would give a JSON number as a number)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
        raise ValueError(f"not a plain JSON key: {key!r}")
    if engine is Engine.SQLITE:
        return f"CAST(json_extract({expr}, '$.{key}') AS TEXT)"
    return f"(CAST({expr} AS json) ->> '{key}')"


def seconds_between(engine: Engine, later: str, earlier: str) -> str:
    """`later - earlier` in seconds (a float) for two of the store's UTC time texts."""
    if engine is Engine.SQLITE:
        return f"((julianday({later}) - julianday({earlier})) * 86400.0)"
    return (
        f"CAST(EXTRACT(EPOCH FROM (CAST({later} AS timestamptz)"
        f" - CAST({earlier} AS timestamptz))) AS double precision)"
    )


def shifted_time(engine: Engine, expr: str, seconds: str) -> str:
    """The store's UTC time text `expr` moved by `seconds` (an integer expression or `?`),
    as UTC text with milliseconds (`2026-01-02T03:04:05.678Z`), comparable as text."""
    if engine is Engine.SQLITE:
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {expr}, CAST({seconds} AS INTEGER) || ' seconds')"
    return (
        f"to_char((CAST({expr} AS timestamptz) + CAST({seconds} AS integer)"
        " * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    )


def contains(engine: Engine, haystack: str, needle: str) -> str:
    """True when the text `needle` occurs in `haystack`, case-sensitively (LIKE is not:
    SQLite folds ASCII case)."""
    if engine is Engine.SQLITE:
        return f"(instr({haystack}, {needle}) > 0)"
    return f"(strpos({haystack}, {needle}) > 0)"


def glob(engine: Engine, expr: str) -> str:
    """`expr` matches the pattern bound to the next `?`; bind `glob_pattern(engine, p)`."""
    if engine is Engine.SQLITE:
        return f"({expr} GLOB ?)"
    return f"({expr} ~ ?)"


def glob_pattern(engine: Engine, pattern: str) -> str:
    """The parameter for `glob`: SQLite's GLOB pattern as is, or the anchored POSIX
    regular expression that matches the same texts (`*`, `?`, `[...]`, `[^...]`)."""
    if engine is Engine.SQLITE:
        return pattern
    out, i = ["^"], 0
    while i < len(pattern):
        ch = pattern[i]
        end = pattern.find("]", i + 2) if ch == "[" else -1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif end != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            members = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + members.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out) + "$"
