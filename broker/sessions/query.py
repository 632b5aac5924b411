"""What a `broker sessions search` query asks of the text index (pure: no store, no files).

The index (session_text, FTS5 with the trigram tokenizer) answers "which recordings hold
this substring of 3+ characters", case-folded. Two uses:

- a regular expression (the default mode) is narrowed by the literals every match must
  contain, found conservatively from the parsed pattern; the candidates' files are then
  searched with the expression itself, so the hits are the full scan's hits;
- word, prefix and phrase queries are checked against the typed command lines stored in
  the index, never against the files.

User text never becomes FTS5 query syntax: every term is one double-quoted FTS5 string
(inner quotes doubled), built here and only here.
"""

from __future__ import annotations

import re

# The stdlib's own regex parser (private, no stubs): no second regex grammar of ours.
import re._parser as sre_parse  # type: ignore[import-not-found]
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["regex", "word", "prefix", "phrase"]
MODES: tuple[Mode, ...] = ("regex", "word", "prefix", "phrase")
MAX_TEXT_QUERY = 200
MIN_TERM = 3  # the trigram tokenizer matches nothing shorter
# A word, prefix or phrase query: printable text, no control characters, not only spaces.
_QUERY_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_LITERAL = sre_parse.LITERAL
_BREAKS_ALL = (sre_parse.BRANCH,)  # an alternation: nothing is required of it (conservative)


class QueryError(ValueError):
    """The query text cannot be used in this mode (the message says why)."""


def fts_string(text: str) -> str:
    """One FTS5 string: the text as a quoted phrase, never as operators or columns."""
    return '"' + text.replace('"', '""') + '"'


def match_all(column: str, terms: list[str]) -> str:
    """`{column} : ("t1" AND "t2")`: every term must be a substring of that column."""
    if column not in ("typed", "input"):
        raise ValueError(column)
    return "{" + column + "} : (" + " AND ".join(fts_string(t) for t in terms) + ")"


@dataclass(frozen=True)
class TextMatch:
    """Every term must be a substring of the column: what the index is asked (the store's
    engine decides how, core/sqldialect.text_match; FTS5's expression is `fts`)."""

    column: Literal["typed", "input"]
    terms: tuple[str, ...]

    @property
    def fts(self) -> str:
        return match_all(self.column, list(self.terms))


def required_literals(pattern: bytes) -> list[str]:
    """Substrings (3+ characters, as text) that every match of this bytes regex contains,
    or [] when none can be named with certainty (then the caller scans).

    Conservative on purpose: a run of literal bytes in the pattern's top-level sequence
    (or inside plain groups and repeats of at least one) is required; alternations,
    optional parts and classes end a run and contribute nothing."""
    runs: list[bytearray] = [bytearray()]
    # Only the stdlib's parser runs on the pattern (never its matcher); a pattern it
    # refuses or nests too deeply simply narrows nothing (RE2 decides what is valid).
    try:
        _walk(list(sre_parse.parse(pattern)), runs)
    except (re.error, RecursionError, OverflowError):
        return []
    found: list[str] = []
    for run in runs:
        # Invalid UTF-8 (a \\xff in the pattern) becomes U+FFFD in the indexed text too;
        # only the valid pieces between are certain. NUL never reaches FTS5.
        for piece in re.split("[\ufffd\x00]", bytes(run).decode("utf-8", "replace")):
            if len(piece) >= MIN_TERM and piece not in found:
                found.append(piece)
    return found


def _walk(items: list[tuple[Any, Any]], runs: list[bytearray]) -> None:
    for op, arg in items:
        if op is _LITERAL:
            runs[-1].append(arg)
            continue
        runs.append(bytearray())  # anything else ends the current run
        if op is sre_parse.SUBPATTERN:
            _walk(list(arg[-1]), runs)  # (group, add_flags, del_flags, pattern)
            runs.append(bytearray())
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT):
            low, _high, inner = arg
            if low >= 1:
                _walk(list(inner), runs)
                runs.append(bytearray())
        elif op is sre_parse.ATOMIC_GROUP:
            _walk(list(arg), runs)
            runs.append(bytearray())
        # BRANCH, IN, ANY, AT, GROUPREF, ASSERT...: nothing certain; the run has ended.


@dataclass(frozen=True)
class TextQuery:
    """A word, prefix or phrase query over the typed command lines: the FTS5 expression
    that narrows, and the expression that decides (case-insensitive, like the index)."""

    mode: Mode
    text: str
    match: TextMatch | None  # None: too short for the trigram index; the typed lines are scanned
    check: re.Pattern[str]


def text_query(mode: Mode, text: str) -> TextQuery:
    """Validate a word/prefix/phrase query and build what the index needs for it.

    word: the text as a whole word (not inside a longer word); prefix: a word that starts
    with it; phrase: the words in this order, separated by any run of spaces."""
    if mode == "regex":
        raise ValueError(mode)
    if not _QUERY_TEXT.fullmatch(text) or not text.strip():
        raise QueryError(
            f"a {mode} query is 1 to {MAX_TEXT_QUERY} printable characters, not only spaces"
        )
    words = text.split()
    if mode != "phrase" and len(words) != 1:
        raise QueryError(f"a {mode} query is one word; use --phrase for several")
    body = r"\s+".join(re.escape(w) for w in words)
    # Word edges only where the query has a word character: `rm -rf /` matches `/tmp`.
    head = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    tail = r"(?!\w)" if mode != "prefix" and re.search(r"\w$", words[-1]) else ""
    check = re.compile(head + body + tail, re.IGNORECASE)
    terms = [w for w in words if len(w) >= MIN_TERM]
    return TextQuery(mode, text, TextMatch("typed", tuple(terms)) if terms else None, check)
