"""Reading sudo I/O logs as sudo_logsrvd stores them (sudoers(5) "I/O LOG FILES").

A recording is a directory `XX/XX/XX` (the server's `%{seq}`) holding log.json,
timing and one file per stream. The node controls the contents, so nothing
here trusts them: directory names are matched against the seq pattern, every
open refuses symlinks and non-regular files, sizes are bounded, and the timing
file must account for exactly the bytes of the stream files once the session is
complete. Everything is read relative to directory descriptors, so a name can
never lead out of the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

SEQ_PART = re.compile(r"^[0-9A-Z]{2}$")
RECORDING_PATH = re.compile(r"^[0-9A-Z]{2}/[0-9A-Z]{2}/[0-9A-Z]{2}$")
RECORDING_ID = re.compile(r"^[0-9A-Z]{6}$")
# Timing-file event numbers -> stream file names (sudo's iolog.h).
STREAMS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "ttyin", 4: "ttyout"}
INPUT = ("stdin", "ttyin")
OUTPUT = ("ttyout", "stdout", "stderr")
EVENT_WINSIZE, EVENT_SUSPEND = 5, 6
# What the digest covers, in this order; `log` is the legacy text form sudoreplay also reads.
DIGEST_FILES = ("log", "log.json", "timing", "stdin", "stdout", "stderr", "ttyin", "ttyout")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TTY = re.compile(r"^[A-Za-z0-9/_.-]{1,64}$")
MAX_LOG_JSON = 1 << 20
MAX_TIMING = 1 << 30
_CHUNK = 1 << 20


class IologError(Exception):
    """A recording that cannot be read as sudo wrote it (corrupt, truncated, hostile)."""


@dataclass(frozen=True)
class LogInfo:
    """The parts of log.json the broker uses, checked."""

    node: str
    user: str
    runas: str
    command: str
    argv: tuple[str, ...]
    cwd: str
    tty: str
    started: float  # epoch seconds
    columns: int
    lines: int
    exit_value: int | None
    signal: str | None
    run_time: float | None


@dataclass(frozen=True)
class TimingEvent:
    delay: float
    stream: str | None  # None for window-size and suspend events
    size: int


def seq_id(path: str) -> str:
    """`00/00/1A` -> `00001A`."""
    return path.replace("/", "")


def seq_path(recording_id: str) -> str:
    if not RECORDING_ID.fullmatch(recording_id):
        raise IologError(f"{recording_id[:20]!r} is not a recording id (six of 0-9, A-Z)")
    return f"{recording_id[0:2]}/{recording_id[2:4]}/{recording_id[4:6]}"


def walk(root_fd: int) -> Iterator[str]:
    """Every `XX/XX/XX` directory under the store (real directories only, no links)."""
    for first in _subdirs(root_fd):
        fd1 = _open_dir(root_fd, first)
        try:
            for second in _subdirs(fd1):
                fd2 = _open_dir(fd1, second)
                try:
                    for third in _subdirs(fd2):
                        yield f"{first}/{second}/{third}"
                finally:
                    os.close(fd2)
        finally:
            os.close(fd1)


def _subdirs(dir_fd: int) -> list[str]:
    found = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if SEQ_PART.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                found.append(entry.name)
    return sorted(found)


def _open_dir(dir_fd: int, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def open_store(root: str) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def open_recording(root_fd: int, path: str) -> int:
    """A descriptor of the recording's directory, walked one checked component at a time."""
    if not RECORDING_PATH.fullmatch(path):
        raise IologError(f"{path[:40]!r} is not a recording path")
    fd = root_fd
    opened: list[int] = []
    try:
        for part in path.split("/"):
            fd = _open_dir(fd, part)
            opened.append(fd)
    except OSError as exc:
        for o in opened:
            os.close(o)
        raise IologError(f"{path}: {exc.strerror or exc}") from exc
    for o in opened[:-1]:
        os.close(o)
    return opened[-1]


def open_file(dir_fd: int, name: str) -> int | None:
    """A regular file of the recording, never through a link; None when absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IologError(f"{name}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IologError(f"{name} is not a regular file")
    return fd


def read_small(dir_fd: int, name: str, limit: int) -> bytes | None:
    fd = open_file(dir_fd, name)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size > limit:
            raise IologError(f"{name} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_complete(dir_fd: int) -> bool:
    """sudo_logsrvd clears the timing file's write bits when the session ends."""
    try:
        info = os.stat("timing", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and not info.st_mode & 0o222


def file_sizes(dir_fd: int) -> dict[str, int]:
    sizes = {}
    for name in DIGEST_FILES:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise IologError(f"{name} is not a regular file")
        sizes[name] = info.st_size
    return sizes


def _text(data: dict[str, Any], key: str, pattern: re.Pattern[str], default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise IologError(f"log.json: bad {key}")
    return value


def _printable(value: object, key: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise IologError(f"log.json: bad {key}")
    return value


def _seconds(value: object, key: str) -> float:
    if not isinstance(value, dict):
        raise IologError(f"log.json: bad {key}")
    sec, nsec = value.get("seconds"), value.get("nanoseconds", 0)
    if not (isinstance(sec, int) and isinstance(nsec, int)) or sec < 0 or not 0 <= nsec < 10**9:
        raise IologError(f"log.json: bad {key}")
    return sec + nsec / 1e9


def parse_log_json(raw: bytes) -> LogInfo:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IologError("log.json is not valid JSON") from None
    if not isinstance(data, dict):
        raise IologError("log.json is not an object")
    argv = data.get("runargv", [])
    if not isinstance(argv, list) or len(argv) > 4096:
        raise IologError("log.json: bad runargv")
    columns, lines = data.get("columns", 80), data.get("lines", 24)
    if not (isinstance(columns, int) and isinstance(lines, int)):
        raise IologError("log.json: bad columns/lines")
    exit_value = data.get("exit_value")
    if exit_value is not None and not (isinstance(exit_value, int) and 0 <= exit_value < 256):
        raise IologError("log.json: bad exit_value")
    signal = data.get("signal")
    if signal is not None:
        signal = _text(data, "signal", re.compile(r"[A-Z0-9+-]{1,16}"))
    run_time = data.get("run_time")
    return LogInfo(
        node=_text(data, "submithost", _NAME),
        user=_text(data, "submituser", _NAME),
        runas=_text(data, "runuser", _NAME),
        command=_printable(data.get("command", ""), "command"),
        argv=tuple(_printable(a, "runargv") for a in argv),
        cwd=_printable(data.get("runcwd", data.get("submitcwd", "")), "runcwd"),
        tty=_text(data, "ttyname", _TTY, "unknown"),
        started=_seconds(data.get("timestamp"), "timestamp"),
        columns=max(1, min(columns, 10000)),
        lines=max(1, min(lines, 10000)),
        exit_value=exit_value,
        signal=signal,
        run_time=None if run_time is None else _seconds(run_time, "run_time"),
    )


def parse_timing(raw: bytes, *, partial: bool = False) -> list[TimingEvent]:
    """Each line `EVENT DELAY SIZE` (or `5 DELAY ROWS COLS`, `6 DELAY SIGNAL`).

    A running session's last line may still be half written (`partial`)."""
    events = []
    lines = raw.split(b"\n")
    if (lines and lines[-1] == b"") or (partial and lines):
        lines.pop()
    for number, line in enumerate(lines, 1):
        parts = line.split(b" ")
        try:
            kind, delay = int(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise IologError(f"timing line {number} is malformed") from None
        if not 0 <= delay < 1e7:
            raise IologError(f"timing line {number}: bad delay")
        if kind in STREAMS and len(parts) == 3 and parts[2].isdigit():
            events.append(TimingEvent(delay, STREAMS[kind], int(parts[2])))
        elif (kind == EVENT_WINSIZE and len(parts) == 4) or (
            kind == EVENT_SUSPEND and len(parts) == 3
        ):
            events.append(TimingEvent(delay, None, 0))
        else:
            raise IologError(f"timing line {number} is malformed")
    return events


def check_sizes(events: list[TimingEvent], sizes: dict[str, int], *, complete: bool) -> None:
    """The timing file must account for every stream byte (all of them once complete)."""
    want: dict[str, int] = {}
    for e in events:
        if e.stream is not None:
            want[e.stream] = want.get(e.stream, 0) + e.size
    for stream in STREAMS.values():
        have, need = sizes.get(stream, 0), want.get(stream, 0)
        if have < need:
            raise IologError(f"{stream} is truncated: {have} of {need} bytes")
        if complete and have != need:
            raise IologError(f"{stream} holds {have - need} bytes the timing file does not know")


def digest(dir_fd: int) -> tuple[str, dict[str, str]]:
    """SHA-256 over every file of the recording (name, length, bytes; fixed order), and
    each file's own SHA-256, so `verify` can name what changed."""
    whole = hashlib.sha256(b"broker-recording-v1\n")
    files: dict[str, str] = {}
    for name in DIGEST_FILES:
        fd = open_file(dir_fd, name)
        if fd is None:
            continue
        one = hashlib.sha256()
        try:
            size = os.fstat(fd).st_size
            whole.update(f"{name}\0{size}\0".encode())
            while chunk := os.read(fd, _CHUNK):
                one.update(chunk)
                whole.update(chunk)
        finally:
            os.close(fd)
        files[name] = one.hexdigest()
    return whole.hexdigest(), files


def chunks(
    dir_fd: int, streams: tuple[str, ...], limit: int
) -> Generator[tuple[float, str, bytes], None, None]:
    """(delay, stream, bytes) in timing order for the chosen streams; other events keep
    their delay (added to the next chunk), so replays keep the original pacing."""
    timing = read_small(dir_fd, "timing", MAX_TIMING) or b""
    return chunks_of(dir_fd, parse_timing(timing, partial=True), streams, limit)


def chunks_of(
    dir_fd: int, events: list[TimingEvent], streams: tuple[str, ...], limit: int
) -> Generator[tuple[float, str, bytes], None, None]:
    """`chunks` over timing events already parsed (the indexer has them). Streams not
    asked for are not read: only their sizes are checked, once, at the end (indexing the
    typed lines of a session that printed gigabytes reads only its input)."""
    handles: dict[str, int] = {}
    skipped: dict[str, int] = {}
    pending = 0.0
    sent = 0
    try:
        for e in events:
            pending += e.delay
            if e.stream is None:
                continue
            if e.stream not in streams:
                skipped[e.stream] = skipped.get(e.stream, 0) + e.size
                continue
            fd = handles.get(e.stream)
            if fd is None:
                fd = handles[e.stream] = _stream(dir_fd, e.stream)
            data = os.read(fd, e.size) if e.size else b""
            if len(data) != e.size:
                raise IologError(f"{e.stream} is truncated")
            sent += len(data)
            if sent > limit:
                raise IologError(f"the recording's output is larger than {limit} bytes")
            yield pending, e.stream, data
            pending = 0.0
        for name, size in skipped.items():
            fd = handles[name] = _stream(dir_fd, name)
            if os.fstat(fd).st_size < size:
                raise IologError(f"{name} is truncated")
    finally:
        for fd in handles.values():
            os.close(fd)


def _stream(dir_fd: int, name: str) -> int:
    fd = open_file(dir_fd, name)
    if fd is None:
        raise IologError(f"{name} is missing")
    return fd


def read_prefix(dir_fd: int, name: str, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes from the start of a stream file (b"" when absent), and whether
    the file holds more: the search index keeps a bounded share of each recording."""
    fd = open_file(dir_fd, name)
    if fd is None:
        return b"", False
    try:
        size = os.fstat(fd).st_size
        chunks, got = [], 0
        while got < min(size, limit) and (chunk := os.read(fd, min(_CHUNK, limit - got))):
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks), size > limit
    finally:
        os.close(fd)
