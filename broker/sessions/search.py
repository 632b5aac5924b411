r"""`broker sessions search`: the text index narrows, the recordings decide.

A regular expression over typed input (`--input`) reads only the recordings the index
says hold every literal the expression requires (query.required_literals), plus those
whose input the index does not hold yet (running sessions, the backlog after an upgrade,
inputs longer than typed.MAX_RAW); their files are then searched exactly as a full scan
would, so the hits, their order and their fields are the scan's. An expression with no
such literal, or one over output, is a scan of at most MAX_SCAN recordings, and the
result says so. Word, prefix and phrase queries are answered from the typed command
lines the index stores (and, for recordings it does not hold yet, from their files).
Every path reads at most MAX_SCAN recordings (or index rows) and says when it stopped.

User expressions run with RE2 (google-re2), never with `re`: RE2 matches in time linear
in the input and releases the GIL, so no pattern can freeze the daemon's other threads
(the API, the reaper, heartbeats) the way a backtracking `(\w+\s?)+$` does with `re`.
The pattern's bytes are compiled as Latin-1, so it is a bytes regex as before: each
byte one character, `\w`/`\d`/`\b` ASCII, `(?i)` case-folding per byte.
"""

from __future__ import annotations

import heapq
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import re2  # type: ignore[import-untyped]

from broker.core.errors import UsageError
from broker.sessions import iolog, query, rows, typed
from broker.sessions.query import Mode, QueryError
from broker.sessions.rows import Filters

MAX_PATTERN = 1000
EXCERPT = 60
MAX_SCAN = 100_000  # recordings (or typed-line rows) one search reads at most, any mode
_NARROW_MORE = "narrow with --since, --user or --node"

# The recording's directory as a descriptor, or None when it cannot be opened (purged,
# removed outside the broker): such a recording is no hit, as in a full scan.
Opener = Callable[[dict[str, Any]], int | None]
Labeller = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class SearchResult:
    hits: list[dict[str, Any]] = field(default_factory=list)
    mode: Mode = "regex"
    narrowed: bool = False  # the index chose which recordings were read
    literals: list[str] = field(default_factory=list)  # what it narrowed by
    read: int = 0  # recordings whose files were read
    complete: bool = True  # False: the scan stopped at MAX_SCAN recordings
    note: str | None = None  # one line on how the search was done, when it matters


# What RE2 refuses that Python's `re` takes, named in the one-line refusal.
UNSUPPORTED = (
    r"backreferences (\1, (?P=name)), lookaround ((?=, (?!, (?<=, (?<!), atomic groups"
    r" and possessive repeats, conditionals, \Z (use \z), (?x) and (?a)/(?L)/(?u) flags"
)


@dataclass(frozen=True)
class Regex:
    """A user's expression compiled by RE2 over bytes; `pattern` is what the index
    narrows by (query.required_literals)."""

    pattern: bytes
    _engine: Any

    def search(self, data: bytes | mmap.mmap) -> tuple[int, int] | None:
        """(start, end) of the leftmost match, or None; linear in len(data)."""
        m = self._engine.search(data)
        return None if m is None else (int(m.start()), int(m.end()))


def _options() -> Any:
    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1  # bytes in, bytes matched: as `re` on bytes
    opts.log_errors = False  # a bad pattern is the user's refusal, not a line on stderr
    return opts


def compile_regex(pattern: str) -> Regex:
    """The user's expression, or a UsageError (exit 2) in one line: too long, or a syntax
    RE2 does not have (it never backtracks, so it has no backreferences or lookaround)."""
    if len(pattern) > MAX_PATTERN:
        raise UsageError(f"the pattern is longer than {MAX_PATTERN} characters")
    raw = pattern.encode("utf-8")
    try:
        engine = re2.compile(raw, _options())
    except re2.error as exc:
        why = exc.args[0].decode("utf-8", "replace") if exc.args else "not RE2 syntax"
        raise UsageError(
            f"bad regular expression ({why}); not supported: {UNSUPPORTED}",
            fix="rewrite the pattern without them (RE2 syntax)",
        ) from exc
    return Regex(raw, engine)


class Search:
    """One search over one connection; `open_dir` and `label` come from the service."""

    def __init__(self, conn: Any, open_dir: Opener, label: Labeller) -> None:
        self._conn = conn
        self._open = open_dir
        self._label = label

    def run(
        self, text: str, streams: tuple[str, ...], f: Filters, mode: Mode = "regex"
    ) -> SearchResult:
        if mode == "regex":
            return self.regex(compile_regex(text), streams, f)
        try:
            q = query.text_query(mode, text)
        except QueryError as exc:
            raise UsageError(str(exc), fix="see `broker sessions search --help`") from exc
        return self.typed(q, f)

    def regex(
        self, regex: Regex, streams: tuple[str, ...], f: Filters, *, narrow: bool = True
    ) -> SearchResult:
        """Hits of a bytes regex in the chosen streams, newest first, at most f.limit."""
        result = SearchResult()
        literals = query.required_literals(regex.pattern) if narrow else []
        input_only = set(streams) <= set(iolog.INPUT)
        match = None
        if literals and input_only:
            match = query.TextMatch("input", tuple(literals))
            result.narrowed, result.literals = True, literals
        # Narrowed or not, at most MAX_SCAN recordings are read (the newest).
        ids = list(rows.regex_candidates(self._conn, f, match, MAX_SCAN + 1))
        if len(ids) > MAX_SCAN:
            ids, result.complete = ids[:MAX_SCAN], False
        for rid in ids:
            row = rows.recording(self._conn, rid)
            if row is None:
                continue
            result.read += 1
            found = self._match(row, regex, streams)
            if found is not None:
                result.hits.append({**self._label(row), "match": found})
                if len(result.hits) >= f.limit:
                    break
        result.note = _regex_note(result, literals, input_only, len(ids))
        return result

    def _match(
        self, row: dict[str, Any], regex: Regex, streams: tuple[str, ...]
    ) -> dict[str, Any] | None:
        dir_fd = self._open(row)
        if dir_fd is None:
            return None
        try:
            for stream in streams:
                found = _match_file(dir_fd, stream, regex)
                if found is not None:
                    return found
        except iolog.IologError:
            return None
        finally:
            os.close(dir_fd)
        return None

    def typed(self, q: query.TextQuery, f: Filters) -> SearchResult:
        """Word, prefix or phrase hits in the typed command lines, newest first; at most
        MAX_SCAN recordings' lines are looked at (index rows and files together)."""
        result = SearchResult(mode=q.mode, narrowed=q.match is not None)
        indexed = rows.typed_candidates(self._conn, f, q.match, MAX_SCAN + 1)
        pending = ((k, rid, None) for k, rid in rows.typed_pending(self._conn, f, MAX_SCAN + 1))
        merged: Iterator[tuple[str, str, str | None]] = heapq.merge(
            indexed, pending, key=lambda c: (c[0], c[1]), reverse=True
        )
        for seen, (_key, rid, lines) in enumerate(merged):
            if seen >= MAX_SCAN:
                result.complete = False
                break
            row = rows.recording(self._conn, rid)
            if row is None:
                continue
            if lines is None:
                result.read += 1
                lines = self._typed_from_files(row)
            found = _typed_hit(q, lines)
            if found is not None:
                result.hits.append({**self._label(row), "match": found})
                if len(result.hits) >= f.limit:
                    break
        notes = []
        if q.match is None:
            notes.append(f"a {q.mode} shorter than 3 characters: every typed line was read")
        if not result.complete:
            notes.append(f"looked at the newest {MAX_SCAN} recordings only; {_NARROW_MORE}")
        result.note = "; ".join(notes) or None
        return result

    def _typed_from_files(self, row: dict[str, Any]) -> str:
        dir_fd = self._open(row)
        if dir_fd is None:
            return ""
        try:
            return typed.input_text(dir_fd).typed
        except iolog.IologError:
            return ""
        finally:
            os.close(dir_fd)


def _typed_hit(q: query.TextQuery, lines: str) -> dict[str, Any] | None:
    """The first match in the typed lines, with the whole line it is on as the excerpt."""
    m = q.check.search(lines)
    if m is None:
        return None
    start = lines.rfind("\n", 0, m.start()) + 1
    end = lines.find("\n", m.end())
    excerpt = lines[start : len(lines) if end < 0 else end]
    return {"stream": "typed", "offset": m.start(), "excerpt": excerpt[:200]}


def _regex_note(result: SearchResult, literals: list[str], input_only: bool, total: int) -> str:
    if result.narrowed:
        note = f"narrowed by the index to {total} candidate recording(s) for {literals!r}"
        if not result.complete:
            note += f"; read the newest {MAX_SCAN} only: {_NARROW_MORE}"
        return note
    why = (
        "the index holds typed input only (--input narrows)"
        if not input_only
        else "no literal of 3+ characters every match must contain"
    )
    scanned = f"read up to {total} recording(s)"
    if not result.complete:
        scanned = f"read the newest {MAX_SCAN} only; {_NARROW_MORE}"
    return f"not narrowed ({why}): {scanned}"


def _match_file(dir_fd: int, stream: str, regex: Regex) -> dict[str, Any] | None:
    fd = iolog.open_file(dir_fd, stream)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        # Mapped, not read: a multi-GB stream costs address space, not memory.
        data: bytes | mmap.mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
    finally:
        os.close(fd)
    try:
        span = regex.search(data)
        if span is None:
            return None
        start, end = max(0, span[0] - EXCERPT), min(len(data), span[1] + EXCERPT)
        excerpt = bytes(data[start:end]).decode("utf-8", "replace")
        return {"stream": stream, "offset": span[0], "excerpt": excerpt}
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
