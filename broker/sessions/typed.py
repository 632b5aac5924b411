"""What was typed in a recording: command lines as `sessions show` lists them, and the raw
input text the search index keeps (both bounded: a session fed gigabytes on stdin keeps
its first MAX_TEXT bytes in the index, and search reads the rest from its files)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from broker.sessions import iolog

MAX_TEXT = 1 << 20  # input bytes per recording the index keeps
MAX_LINES = 5000
_ESCAPE = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|[@-Z\\-_])")


@dataclass(frozen=True)
class InputText:
    typed: str  # the command lines, one per line
    raw: str  # stdin, then ttyin, as UTF-8 text (invalid bytes as U+FFFD)
    partial: bool  # the input was longer than MAX_TEXT: only its start is here


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
    whole, up to MAX_TEXT: a literal of a regex over the file is then a substring of `raw`).
    `events`: its timing file, when the caller has parsed it already."""
    parts, partial = [], False
    for name in iolog.INPUT:
        data, more = iolog.read_prefix(dir_fd, name, MAX_TEXT)
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
