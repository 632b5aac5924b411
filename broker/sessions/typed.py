"""What was typed in a recording: command lines as `sessions show` lists them, and the raw
input text the search index keeps. Both are bounded, because the index lives in broker.db
and an elevated user chooses what goes in (`head -c1M /dev/urandom | sudo tee /dev/null`
in a loop must not grow the store by a mebibyte a time): the raw input (stdin, then
ttyin) keeps its first MAX_RAW bytes, the typed lines are made from the first MAX_TEXT
bytes of input. A recording with more is marked partial and search reads its files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from broker.sessions import iolog

MAX_RAW = 64 * 1024  # raw input bytes (stdin and ttyin together) the index keeps
MAX_TEXT = 256 * 1024  # input bytes the typed lines the index keeps are made from
MAX_LINES = 5000
_ESCAPE = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|[@-Z\\-_])")


@dataclass(frozen=True)
class InputText:
    typed: str  # the command lines, one per line
    raw: str  # stdin, then ttyin, as UTF-8 text (invalid bytes as U+FFFD)
    partial: bool  # the input was longer than MAX_RAW: only its start is here


def command_lines(chunks: Iterator[tuple[float, str, bytes]]) -> list[tuple[float, str]]:
    """What was typed, line by line, with when each line was entered (seconds from the
    start): backspaces applied, terminal escape sequences (arrow keys) dropped."""
    lines: list[tuple[float, str]] = []
    current = bytearray()
    at = 0.0
    for delay, _stream, data in chunks:
        at += delay
        for piece in _ESCAPE.split(data):
            for byte in piece:
                if byte in (0x0D, 0x0A):
                    if current:
                        lines.append((at, current.decode("utf-8", "replace")))
                    current.clear()
                elif byte in (0x7F, 0x08):
                    if current:
                        current.pop()
                elif byte == 0x15:  # ^U
                    current.clear()
                elif byte >= 0x20 or byte == 0x09:
                    current.append(byte)
    if current:
        lines.append((at, current.decode("utf-8", "replace")))
    return lines[:MAX_LINES]


def _bounded(chunks: Iterator[tuple[float, str, bytes]]) -> Iterator[tuple[float, str, bytes]]:
    taken = 0
    for delay, stream, data in chunks:
        if taken >= MAX_TEXT:
            return
        data = data[: MAX_TEXT - taken]
        taken += len(data)
        yield delay, stream, data


def input_text(dir_fd: int, events: list[iolog.TimingEvent] | None = None) -> InputText:
    """The recording's typed lines and raw input, read from its directory (each stream file
    from its start, MAX_RAW bytes for all of them: a literal of a regex over a file the
    index holds whole is then a substring of `raw`). `events`: its timing file, when the
    caller has parsed it already."""
    parts, partial, budget = [], False, MAX_RAW
    for name in iolog.INPUT:
        data, more = iolog.read_prefix(dir_fd, name, budget)
        budget -= len(data)
        parts.append(data.decode("utf-8", "replace"))
        partial = partial or more
    if events is None:
        chunks = iolog.chunks(dir_fd, iolog.INPUT, 1 << 62)
    else:
        chunks = iolog.chunks_of(dir_fd, events, iolog.INPUT, 1 << 62)
    try:
        lines = command_lines(_bounded(chunks))
    finally:
        chunks.close()  # stopped early: its files are closed now, not at collection
    return InputText("\n".join(text for _, text in lines), "\n".join(parts), partial)
