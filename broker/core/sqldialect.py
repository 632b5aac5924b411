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
import string
from collections.abc import Callable
from typing import Any


class Engine(enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def engine_of(conn: object) -> Engine:
    """Which engine `conn` talks to: the one place that decides."""
    return Engine.SQLITE if isinstance(conn, sqlite3.Connection) else Engine.POSTGRESQL


def begin_snapshot(engine: Engine) -> str:
    """Begin a read transaction whose every statement sees one snapshot (SQLite's deferred
    BEGIN in WAL does; PostgreSQL's default READ COMMITTED would not)."""
    if engine is Engine.SQLITE:
        return "BEGIN"
    return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


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
    """`later - earlier` in seconds (a float) for two of the store's UTC time texts,
    rounded to the millisecond on both engines: SQLite's julianday is a float of days,
    so exactly one hour came out as 3599.99999..., and a histogram put it in the bucket
    below the one PostgreSQL's exact interval lands in."""
    if engine is Engine.SQLITE:
        return f"round((julianday({later}) - julianday({earlier})) * 86400.0, 3)"
    return (
        f"CAST(round(EXTRACT(EPOCH FROM (CAST({later} AS timestamptz)"
        f" - CAST({earlier} AS timestamptz))), 3) AS double precision)"
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


def unindexed(engine: Engine, expr: str) -> str:
    """`expr` as an operand SQLite will not look up through an index (its unary plus: the
    planner then scans the few rows it has instead of probing once per listed value);
    PostgreSQL has no such hint (and no unary plus on text): the column as is."""
    return f"+{expr}" if engine is Engine.SQLITE else expr


def glob(engine: Engine, expr: str, pattern: str = "?") -> str:
    """`expr` matches the pattern `pattern` (the next `?`, or a column holding one): bind
    or store `glob_pattern(engine, p)`."""
    if engine is Engine.SQLITE:
        return f"({expr} GLOB {pattern})"
    return f"({expr} ~ {pattern})"


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


# --- the session text index (sessions search) ---------------------------------------------
# SQLite: session_text is an FTS5 table (trigram tokenizer, migration 17) whose rowid is
# the recording id read as base 36. PostgreSQL: a plain table session_text (rid TEXT
# PRIMARY KEY, typed TEXT NOT NULL, input TEXT NOT NULL) with pg_trgm GIN indexes on
# typed and input (gin_trgm_ops), so a substring test by ILIKE is an index scan, as
# FTS5's trigram MATCH is; both fold case.

Statement = tuple[str, tuple[object, ...]]


def text_replace(engine: Engine, rid: str, typed: str, raw: str) -> list[Statement]:
    """The statements that put one recording's text in the index, replacing what was there."""
    if engine is Engine.SQLITE:
        key = int(rid, 36)
        return [
            ("DELETE FROM session_text WHERE rowid = ?", (key,)),
            (
                "INSERT INTO session_text (rowid, rid, typed, input) VALUES (?, ?, ?, ?)",
                (key, rid, typed, raw),
            ),
        ]
    # rowid is the table's key there too (NOT NULL, no default: `broker db copy` brings
    # SQLite's over), so an insert gives it the same value SQLite's does.
    return [
        ("DELETE FROM session_text WHERE rid = ?", (rid,)),
        (
            "INSERT INTO session_text (rowid, rid, typed, input) VALUES (?, ?, ?, ?)",
            (int(rid, 36), rid, typed, raw),
        ),
    ]


def text_delete(engine: Engine) -> tuple[str, str | None]:
    """(the delete of one recording's row, bound to `text_key_value`; what to run after
    the deletes, or None). FTS5 keeps deleted trigrams in older segments until merged:
    'optimize' merges them now, so a purged recording's text is gone from the file."""
    if engine is Engine.SQLITE:
        optimize = "INSERT INTO session_text (session_text) VALUES ('optimize')"
        return "DELETE FROM session_text WHERE rowid = ?", optimize
    return "DELETE FROM session_text WHERE rid = ?", None


def text_key(engine: Engine) -> str:
    """The column of session_text (aliased t) that finds its row fastest."""
    return "t.rowid" if engine is Engine.SQLITE else "t.rid"


def text_key_value(engine: Engine, rid: str) -> int | str:
    """`text_key`'s value for a recording id."""
    return int(rid, 36) if engine is Engine.SQLITE else rid


def text_joined(engine: Engine) -> str:
    """session_text t joined to recordings, the index driving (SQLite's CROSS JOIN fixes
    that order; PostgreSQL refuses CROSS JOIN ... ON and plans the order itself)."""
    join = "CROSS JOIN" if engine is Engine.SQLITE else "JOIN"
    return f"session_text t {join} recordings ON recordings.id = t.rid"


def pending_recordings(engine: Engine) -> str:
    """recordings, read through the partial index of those whose text the index lacks
    (SQLite's planner would take recordings_state without statistics)."""
    if engine is Engine.SQLITE:
        return "recordings INDEXED BY recordings_text_pending"
    return "recordings"


def text_match(engine: Engine, column: str, terms: list[str], fts: str) -> tuple[str, list[object]]:
    """(the condition on session_text t, its parameters) that holds when every term is a
    case-folded substring of `column`: SQLite binds the FTS5 expression `fts` (built and
    quoted by sessions/query.py), PostgreSQL one ILIKE per term, % _ \\ escaped."""
    if column not in ("typed", "input"):
        raise ValueError(column)
    if engine is Engine.SQLITE:
        return "session_text MATCH ?", [fts]
    escaped = [re.sub(r"([%_\\])", r"\\\1", t) for t in terms]
    clause = " AND ".join(f"t.{column} ILIKE ? ESCAPE '\\'" for _ in terms)
    return f"({clause})", [f"%{t}%" for t in escaped]


class _Fragments(string.Formatter):
    """Fills `{name}` and `{name:arg,arg}` markers with this module's fragments."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return key

    def format_field(self, value: Any, format_spec: str) -> str:
        args = [a.strip() for a in format_spec.split(",")] if format_spec else []
        fragment = _MARKERS.get(str(value))
        if fragment is None:
            raise ValueError(f"unknown SQL marker {{{value}}}")
        return fragment(self.engine, *args)


_MARKERS: dict[str, Callable[..., str]] = {
    "values": json_values,
    "text": json_text,
    "seconds": seconds_between,
    "shifted": shifted_time,
    "contains": contains,
    "glob": glob,
    "unindexed": unindexed,
}


def render(engine: Engine, sql: str) -> str:
    """`sql` with its markers filled for `engine`: `{values}` (json_values of `?`),
    `{text:expr,key}`, `{seconds:later,earlier}`, `{shifted:expr,seconds}`,
    `{contains:haystack,needle}`, `{glob:expr[,pattern]}`, `{unindexed:expr}`; no other
    braces are allowed, so
    queries written once read as SQL with the differing pieces named."""
    return _Fragments(engine).format(sql)
