"""The services' SQL stays in the subset SQLite and PostgreSQL run alike (docs/store.md).

Every string literal in broker/ (outside broker/store/, which owns the engines, and
broker/core/sqldialect.py, which spells the fragments that differ) is scanned for the
SQLite-only constructs that would fail, or silently mean something else, on PostgreSQL:
an unquoted `user` there is CURRENT_USER, not the column. A failure names file:line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from broker.core import sqldialect
from broker.core.sqldialect import Engine

ROOT = Path(__file__).resolve().parents[2] / "broker"
EXEMPT = {ROOT / "core" / "sqldialect.py"}

# What each construct is, and what to write instead.
FORBIDDEN = {
    r"\bINSERT\s+OR\s+(IGNORE|REPLACE|ABORT|FAIL|ROLLBACK)\b": "INSERT ... ON CONFLICT",
    r"\bREPLACE\s+INTO\b": "INSERT ... ON CONFLICT (key) DO UPDATE",
    r"(?<!\{)\bGLOB\b": "sqldialect.glob",
    r"\browid\b": "a real key column",
    r"\bIFNULL\s*\(": "COALESCE",
    r"\bjson_extract\s*\(": "sqldialect.json_text",
    r"\bjson_each\s*\(": "sqldialect.json_values",
    r"\bstrftime\s*\(\s*'": "a time computed in Python, or sqldialect",
    r"\bjulianday\s*\(": "sqldialect.seconds_between",
    r"\b(date|datetime|unixepoch)\s*\(\s*'": "a time computed in Python",
    r"\binstr\s*\(": "sqldialect.contains",
    r"\bCOLLATE\s+NOCASE\b": "lower(...) on both sides",
    r"\bINDEXED\s+BY\b": "no index hint",
    r"\bPRAGMA\b": "a named function beside the store",
    r"\bLIMIT\s+-1\b": "no LIMIT",
    r"^lastrowid$": "INSERT ... RETURNING id",
    r"\b(=|!=|<>)\s*NULL\b": "IS NULL / IS NOT NULL",
    r"(?<![\"'\w.])(user|offset)(?![\"\w])": 'the quoted column ("user", "offset")',
    r"\?\s+IS\s+(NOT\s+)?NULL": "CAST(? AS TEXT) IS NULL (PostgreSQL cannot type a bare ?)",
    r"\bIS\s+(NOT\s+)?\?": "IS [NOT] DISTINCT FROM ? (PostgreSQL's IS takes NULL only)",
    r"\bsum\(\s*(NOT\s+EXISTS|[\w.]+\s*(=|!=|<|>|IS\b))": "sum(CASE WHEN ... THEN 1 ELSE 0 END)",
    r"\bWHEN\s+\?\s+THEN\b": "WHEN CAST(? AS INTEGER) = 1 THEN (a parameter is no boolean)",
    r"\bMATCH\s+\?": "the session text index's named functions (sessions/rows.py)",
}
# A string is SQL when it has one of these (docstrings and messages are skipped).
SQLISH = re.compile(
    r"\b(SELECT|INSERT|UPDATE \w+ SET|DELETE FROM|WHERE|ORDER BY|GROUP BY|JOIN)\b"
    r"|(=|<|>|\bIN|\bLIKE|\bGLOB|\bMATCH)\s*\(?\?"
    r"|^\s*[a-z_]+(\s*,\s*[a-z_.\"]+){3,}\s*,?\s*$"
)


def strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `path`, docstrings not."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "lastrowid":
            found.append((node.lineno, "lastrowid"))  # RETURNING instead
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(node.lineno, node.value)] if id(node) not in docstrings else []
    return found


def offences(text: str, *, sql: bool = True) -> list[str]:
    """What in this text is SQLite-only, each with its replacement: in SQL, any spelling;
    in any other string, the keywords as SQL spells them (upper case)."""
    out = []
    for pattern, instead in FORBIDDEN.items():
        if "user|offset" in pattern and not sql:
            continue
        flags = re.IGNORECASE if sql and "user|offset" not in pattern else 0
        match = re.search(pattern, text, flags)
        if match:
            out.append(f"{match.group(0)!r} (use {instead})")
    return out


def test_no_sqlite_only_sql_outside_the_store() -> None:
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        if path in EXEMPT or (ROOT / "store") in path.parents:
            continue
        for line, text in strings(path):
            found = offences(text, sql=bool(SQLISH.search(text)))
            problems += [f"{path.relative_to(ROOT.parent)}:{line}: {o}" for o in found]
    assert not problems, "SQLite-only SQL (docs/store.md, Portable SQL):\n" + "\n".join(problems)


def test_the_scan_catches_what_it_names() -> None:
    """Each construct the scan forbids is found in a statement that uses it."""
    assert offences("SELECT id, user FROM grants WHERE state = 'active'")
    assert offences("INSERT OR IGNORE INTO t (a) VALUES (?)")
    assert offences("SELECT 1 FROM audit_events WHERE action GLOB ?")
    assert offences("SELECT json_extract(details, '$.reason') FROM audit_events")
    assert offences("SELECT ts FROM t WHERE (? IS NULL OR ts > ?)")
    assert offences('SELECT "offset" FROM detect_streams WHERE offset > 0')
    assert not offences('SELECT id, "user" FROM grants g WHERE g.user = ? ORDER BY id')
    assert not offences("SELECT seq FROM audit_events LIMIT ? OFFSET ?")
    assert offences("action GLOB ?", sql=False)
    assert offences("UPDATE t SET a = CASE WHEN ? THEN ? ELSE a END WHERE id = ?")
    assert offences("SELECT coalesce(sum(outcome = 'refused'), 0) FROM audit_events")
    assert not offences("SELECT e.target FROM audit_events e WHERE e.target = 'user:' || g.user")
    assert not offences("the user's grants, glob and all", sql=False)


def test_glob_patterns_mean_the_same_on_postgresql() -> None:
    """The regular expression PostgreSQL gets matches exactly what SQLite's GLOB does."""
    cases = {
        "policy.*": (["policy.apply", "policy."], ["policyxapply", "mfa.policy.x"]),
        "mfa.[a-f]*": (["mfa.enrol", "mfa.activate"], ["mfa.verify", "mfa."]),
        "grant.appl?": (["grant.apply"], ["grant.appl", "grant.applied"]),
        "x[^a]y": (["xby"], ["xay"]),
    }
    for pattern, (hits, misses) in cases.items():
        regex = re.compile(sqldialect.glob_pattern(Engine.POSTGRESQL, pattern))
        assert all(regex.search(h) for h in hits), pattern
        assert not any(regex.search(m) for m in misses), pattern
        assert sqldialect.glob_pattern(Engine.SQLITE, pattern) == pattern


def test_markers_are_filled_per_engine_and_unknown_ones_refused() -> None:
    """A query written once with markers reads as each engine's SQL; a typo is an error,
    never braces sent to the database."""
    sql = "SELECT {seconds:a.end,a.start} FROM t AS a WHERE a.node IN ({values})"
    lite = sqldialect.render(Engine.SQLITE, sql)
    pg = sqldialect.render(Engine.POSTGRESQL, sql)
    assert "julianday(a.end)" in lite and "json_each(?)" in lite
    assert "EXTRACT(EPOCH" in pg and "json_array_elements_text(CAST(? AS json))" in pg
    assert "{" not in lite + pg
    with pytest.raises(ValueError, match="unknown SQL marker"):
        sqldialect.render(Engine.SQLITE, "SELECT {valeus} FROM t")


def test_text_search_terms_are_literal_on_postgresql() -> None:
    """A searched `100%_done` is those characters, not LIKE wildcards; SQLite gets the FTS5
    expression the caller quoted."""
    cond, params = sqldialect.text_match(Engine.POSTGRESQL, "input", ["100%_done", "rm"], "x")
    assert cond == "(t.input ILIKE ? ESCAPE '\\' AND t.input ILIKE ? ESCAPE '\\')"
    assert params == ["%100\\%\\_done%", "%rm%"]
    assert sqldialect.text_match(Engine.SQLITE, "input", ["rm"], '{input} : ("rm")') == (
        "session_text MATCH ?",
        ['{input} : ("rm")'],
    )
