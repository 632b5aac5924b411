"""Many regular expressions over session bytes at line rate: a Hyperscan database.

Python's `re` tried every branch of a rule's `\\b` alternation at every byte
(12 MB/s, docs/benchmarks.md) and held the GIL for each 1 MiB search. Here all
the patterns that see a stream kind are compiled into one Hyperscan database
and scanned together in 64 KiB slices of one stream: the scan runs in C with
the GIL released, and a slice takes well under a millisecond, so the daemon's
other threads never wait long. Hyperscan is asked only *which* patterns match
and where the first match of each ends (no start of match: tracking it costs
6x); the detector then lets Python's `re` say exactly where on that line the
match is, so findings read as they did (docs/detection.md "Matching").

Patterns are compiled for bytes without UTF-8 or UCP, with `^`/`$` at line
ends: `\\b`, `\\w`, `\\s`, `\\d` and case-insensitivity are ASCII, as Python's
`re` has them on bytes. Hyperscan needs SSSE3; on a CPU or host without it
the engine is unavailable and says why, and the callers fail closed.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

SLICE = 64 << 10  # bytes per scan call: the longest the detector thread goes without Python

try:  # the wheel carries libhs; a host without it (or without SSSE3) gets the reason
    import hyperscan

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover (the lock installs it everywhere)
    hyperscan = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"the hyperscan module cannot be loaded ({exc})"

_local = threading.local()  # compiled databases and their scratch, one set per thread


def unavailable() -> str | None:
    """Why the engine cannot run on this host, or None when it can (checked once, by
    compiling a one-pattern database: that is where a CPU without SSSE3 is refused)."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    return _probe()


_PROBE: list[str | None] = []


def _probe() -> str | None:
    if not _PROBE:
        try:
            _compile((rb"\bprobe\b",))
            _PROBE.append(None)
        except Exception as exc:  # noqa: BLE001 (any failure here means: cannot run)
            _PROBE.append(f"Hyperscan cannot run on this host ({_reason(exc)}); it needs SSSE3")
    return _PROBE[0]


@functools.lru_cache(maxsize=1024)
def problem(pattern: str) -> str | None:
    """Why the engine cannot compile `pattern` (one line), or None. Policy check calls it
    for every pattern, so a pattern the engine cannot run never reaches the detector."""
    why = unavailable()
    if why is not None:
        return why
    if "\x00" in pattern:
        return "a NUL character cannot be matched; write \\x00"
    if "{," in pattern:
        # Python reads {,n} as {0,n}; Hyperscan (PCRE) as the literal text. Refuse the doubt.
        return "write {0,n}, not {,n} (the two regex dialects read it differently)"
    if "\\Z" in pattern or "\\z" in pattern:
        # Python's \Z is the end of the text, PCRE's also before a final newline.
        return "\\Z and \\z are not allowed; use $ (the end of a line)"
    try:
        _compile((pattern.encode("utf-8"),))
    except Exception as exc:  # noqa: BLE001 (hyperscan.error and its kin: a verdict)
        return f"the detection engine cannot run it ({_reason(exc)})"
    return None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _compile(patterns: Sequence[bytes]) -> Any:
    """A stream-mode database: each pattern reports its first match only (SINGLEMATCH),
    with `^`/`$` at line ends (MULTILINE, as the rules' `re.MULTILINE`)."""
    if hyperscan is None:  # pragma: no cover
        raise RuntimeError(_IMPORT_ERROR)
    db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    flags = hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_SINGLEMATCH
    db.compile(expressions=list(patterns), ids=list(range(len(patterns))), flags=flags)
    return db


class PatternSet:
    """Patterns compiled once per thread; `first_ends` says, for one block of text, where
    the first match of each matching pattern ends."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._key = self.patterns

    def _db(self) -> Any:
        cache: dict[tuple[str, ...], Any] | None = getattr(_local, "dbs", None)
        if cache is None:
            cache = _local.dbs = {}
        db = cache.get(self._key)
        if db is None:
            if len(cache) >= 32:  # policies come and go; keep the newest few
                cache.pop(next(iter(cache)))
            db = cache[self._key] = _compile([p.encode("utf-8") for p in self.patterns])
        return db

    def first_ends(self, text: bytes) -> dict[int, int]:
        """{pattern index: offset just past the end of its first match in `text`}.

        One stream over the block, fed SLICE bytes at a time: matches across slice
        boundaries are found, and each call holds the detector thread for < 1 ms."""
        if not self.patterns or not text:
            return {}
        ends: dict[int, int] = {}

        def seen(pid: int, _start: int, end: int, _flags: int, _ctx: object) -> bool | None:
            ends.setdefault(pid, end)
            return None

        view = memoryview(text)
        with self._db().stream(match_event_handler=seen) as stream:
            for at in range(0, len(text), SLICE):
                stream.scan(view[at : at + SLICE])
        return ends
