"""Reading sudo I/O logs as sudo_logsrvd stores them: real directories and files in tmp_path.

`write_recording` builds a recording the way sudo_logsrvd 1.9 does (`iolog_file = %{seq}`):
log.json, a timing file and one file per stream, the timing file losing its write bits
when the session ends. test_sessions_index.py builds its stores with it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.sessions import iolog
from broker.sessions.iolog import IologError

START = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
NUMBERS = {name: number for number, name in iolog.STREAMS.items()}

# What sudo_logsrvd 1.9.13 wrote for `sudo sh -c 'echo hi'` (runenv shortened).
SAMPLE_LOG: dict[str, Any] = {
    "timestamp": {"seconds": 1732356000, "nanoseconds": 431271904},
    "submituser": "root",
    "command": "/usr/bin/sh",
    "runuser": "root",
    "runcwd": "/",
    "ttyname": "unknown",
    "submithost": "gpu01",
    "submitcwd": "/",
    "runuid": 0,
    "columns": 80,
    "lines": 24,
    "runargv": ["sh", "-c", "echo hi"],
    "runenv": ["PATH=/usr/bin:/bin", "TERM=xterm"],
    "run_time": {"seconds": 0, "nanoseconds": 34492262},
    "exit_value": 0,
}

# (stream or "winsize"/"suspend", delay, bytes)
Event = tuple[str, float, bytes]


def log_json(
    *,
    user: str = "alice",
    node: str = "gpu01",
    started: datetime = START,
    run_time: float | None = None,
    exit_value: int | None = None,
    signal: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A log.json as sudo_logsrvd writes it; exit fields only when given (a finished session)."""
    data: dict[str, Any] = {
        "timestamp": {"seconds": int(started.timestamp()), "nanoseconds": 0},
        "submituser": user,
        "command": "/usr/bin/bash",
        "runuser": "root",
        "runcwd": "/root",
        "ttyname": "/dev/pts/3",
        "submithost": node,
        "submitcwd": f"/home/{user}",
        "runuid": 0,
        "columns": 120,
        "lines": 40,
        "runargv": ["bash"],
        "runenv": ["PATH=/usr/bin:/bin", "TERM=xterm-256color"],
    }
    if run_time is not None:
        seconds = int(run_time)
        data["run_time"] = {"seconds": seconds, "nanoseconds": int((run_time - seconds) * 1e9)}
    if exit_value is not None:
        data["exit_value"] = exit_value
    if signal is not None:
        data["signal"] = signal
        data["dumped_core"] = False
    data.update(extra)
    return data


def timing_and_streams(events: Sequence[Event]) -> tuple[bytes, dict[str, bytes]]:
    lines = []
    streams: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    streams["ttyout"] = bytearray()
    for kind, delay, data in events:
        if kind == "winsize":
            lines.append(f"5 {delay:.9f} 40 120\n")
        elif kind == "suspend":
            lines.append(f"6 {delay:.9f} TSTP\n")
        else:
            streams.setdefault(kind, bytearray()).extend(data)
            lines.append(f"{NUMBERS[kind]} {delay:.9f} {len(data)}\n")
    return "".join(lines).encode(), {k: bytes(v) for k, v in streams.items()}


def write_recording(
    root: Path,
    rid: str,
    events: Sequence[Event] = (),
    *,
    log: dict[str, Any] | None = None,
    complete: bool = True,
    mtime: float | None = None,
) -> Path:
    """A recording directory under `root` (its `%{seq}` path from `rid`); its files' and
    directory's times are `mtime` (default: when the session ended)."""
    directory = root / iolog.seq_path(rid)
    directory.mkdir(parents=True)
    if log is None:
        run_time = sum(delay for _, delay, _ in events) + 0.25
        log = log_json(run_time=run_time, exit_value=0) if complete else log_json()
    (directory / "log.json").write_text(json.dumps(log))
    timing, streams = timing_and_streams(events)
    for name, data in streams.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    (directory / "timing").write_bytes(timing)
    (directory / "timing").chmod(0o400 if complete else 0o600)
    if mtime is None:
        started = log["timestamp"]["seconds"]
        mtime = started + log.get("run_time", {}).get("seconds", 0) + 1
    touch(directory, mtime)
    return directory


def touch(directory: Path, mtime: float) -> None:
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "iolog"
    root.mkdir()
    (root / "seq").write_text("000004\n")  # sudo_logsrvd's own counter, not a recording
    return root


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    """A directory descriptor, as the indexer holds one."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def root_fd(store: Path) -> Iterator[int]:
    with opened(store) as fd:
        yield fd


# --- log.json ---------------------------------------------------------------------------------


def test_the_sample_log_json_of_sudo_logsrvd_reads_as_what_happened() -> None:
    info = iolog.parse_log_json(json.dumps(SAMPLE_LOG).encode())
    assert info.node == "gpu01"
    assert info.user == info.runas == "root"
    assert info.command == "/usr/bin/sh"
    assert info.argv == ("sh", "-c", "echo hi")
    assert info.cwd == "/"
    assert info.tty == "unknown"
    assert info.started == pytest.approx(1732356000.431271904)
    assert (info.columns, info.lines) == (80, 24)
    assert info.exit_value == 0 and info.signal is None
    assert info.run_time == pytest.approx(0.034492262)


def test_a_running_session_has_no_exit_and_a_killed_one_names_its_signal() -> None:
    running = {k: v for k, v in SAMPLE_LOG.items() if k not in ("run_time", "exit_value")}
    info = iolog.parse_log_json(json.dumps(running).encode())
    assert info.exit_value is None and info.run_time is None and info.signal is None
    killed = {**running, "run_time": {"seconds": 5}, "signal": "TERM", "dumped_core": False}
    info = iolog.parse_log_json(json.dumps(killed).encode())
    assert info.signal == "TERM" and info.exit_value is None and info.run_time == 5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "log.json is not valid JSON"),
        (b'{"submituser": "alice"', "log.json is not valid JSON"),
        (b"\xff\xfe{}", "log.json is not valid JSON"),
        (b"[]", "log.json is not an object"),
        (json.dumps({**SAMPLE_LOG, "submituser": "../root"}).encode(), "bad submituser"),
        (json.dumps({**SAMPLE_LOG, "submithost": "gpu01\nevil"}).encode(), "bad submithost"),
        (json.dumps({**SAMPLE_LOG, "submithost": 7}).encode(), "bad submithost"),
        (json.dumps({**SAMPLE_LOG, "runuser": ""}).encode(), "bad runuser"),
        (json.dumps({**SAMPLE_LOG, "command": "/bin/sh\x1b[2J"}).encode(), "bad command"),
        (json.dumps({**SAMPLE_LOG, "runargv": ["sh", 1]}).encode(), "bad runargv"),
        (json.dumps({**SAMPLE_LOG, "runargv": "sh"}).encode(), "bad runargv"),
        (json.dumps({**SAMPLE_LOG, "ttyname": "pts 1"}).encode(), "bad ttyname"),
        (json.dumps({**SAMPLE_LOG, "exit_value": 256}).encode(), "bad exit_value"),
        (json.dumps({**SAMPLE_LOG, "exit_value": "0"}).encode(), "bad exit_value"),
        (json.dumps({**SAMPLE_LOG, "signal": "TERM; rm"}).encode(), "bad signal"),
        (json.dumps({**SAMPLE_LOG, "timestamp": {"seconds": -1}}).encode(), "bad timestamp"),
        (
            json.dumps({**SAMPLE_LOG, "timestamp": {"seconds": 1, "nanoseconds": 10**9}}).encode(),
            "bad timestamp",
        ),
        (
            json.dumps({k: v for k, v in SAMPLE_LOG.items() if k != "timestamp"}).encode(),
            "bad timestamp",
        ),
        (json.dumps({**SAMPLE_LOG, "run_time": 3}).encode(), "bad run_time"),
        (json.dumps({**SAMPLE_LOG, "columns": "80"}).encode(), "bad columns/lines"),
    ],
)
def test_a_log_json_sudo_would_not_write_is_refused_with_what_is_wrong(
    raw: bytes, message: str
) -> None:
    with pytest.raises(IologError, match=message):
        iolog.parse_log_json(raw)


def test_absurd_terminal_sizes_are_clamped() -> None:
    info = iolog.parse_log_json(json.dumps({**SAMPLE_LOG, "columns": 0, "lines": 10**9}).encode())
    assert (info.columns, info.lines) == (1, 10000)


# --- timing ---------------------------------------------------------------------------------------


def test_timing_lines_of_every_kind_are_read_in_order() -> None:
    raw = b"4 0.031936037 10\n5 0.5 40 120\n3 1.25 4\n6 0.1 TSTP\n1 0.000001 3\n2 0 0\n0 2 7\n"
    events = iolog.parse_timing(raw)
    assert [(e.stream, e.size) for e in events] == [
        ("ttyout", 10), (None, 0), ("ttyin", 4), (None, 0), ("stdout", 3), ("stderr", 0),
        ("stdin", 7),
    ]  # fmt: skip
    assert [e.delay for e in events] == pytest.approx([0.031936037, 0.5, 1.25, 0.1, 1e-6, 0, 2])


def test_a_running_sessions_half_written_last_line_is_left_for_later() -> None:
    raw = b"4 0.5 10\n3 0.25 1\n4 0.0"
    assert len(iolog.parse_timing(raw, partial=True)) == 2
    # ... but a complete line at the end of a running session's file counts.
    assert len(iolog.parse_timing(b"4 0.5 10\n3 0.25 1\n", partial=True)) == 2
    with pytest.raises(IologError, match="timing line 3 is malformed"):
        iolog.parse_timing(raw)


@pytest.mark.parametrize(
    "line",
    [b"4 x 10", b"4 0.5", b"4 0.5 -1", b"4 0.5 1 2", b"7 0.5 1", b"-1 0.5 1", b"4 -0.5 1",
     b"4 nan 1", b"4 1e9 1", b"5 0.5 40", b"6 0.5", b"", b"4  0.5 1"],
)  # fmt: skip
def test_a_malformed_timing_line_is_refused_by_number(line: bytes) -> None:
    with pytest.raises(IologError, match=r"timing line 2"):
        iolog.parse_timing(b"4 0.5 10\n" + line + b"\n")


# --- sizes: the timing file accounts for every byte -----------------------------------------


def test_a_stream_shorter_than_its_timing_is_truncated_and_says_by_how_much() -> None:
    events = iolog.parse_timing(b"4 0.1 10\n4 0.1 5\n3 0.2 2\n")
    with pytest.raises(IologError, match="ttyout is truncated: 12 of 15 bytes"):
        iolog.check_sizes(events, {"ttyout": 12, "ttyin": 2}, complete=False)
    with pytest.raises(IologError, match="ttyin is truncated: 0 of 2 bytes"):
        iolog.check_sizes(events, {"ttyout": 15}, complete=True)


def test_bytes_the_timing_does_not_know_are_fine_while_running_and_wrong_once_complete() -> None:
    events = iolog.parse_timing(b"4 0.1 10\n")
    iolog.check_sizes(events, {"ttyout": 14}, complete=False)  # the timing line comes after
    iolog.check_sizes(events, {"ttyout": 10, "stdout": 0}, complete=True)
    with pytest.raises(IologError, match="ttyout holds 4 bytes the timing file does not know"):
        iolog.check_sizes(events, {"ttyout": 14}, complete=True)
    with pytest.raises(IologError, match="stderr holds 1 bytes"):
        iolog.check_sizes(events, {"ttyout": 10, "stderr": 1}, complete=True)


# --- paths and directories --------------------------------------------------------------------


def test_seq_ids_and_paths_round_trip_and_nothing_else_is_an_id() -> None:
    assert iolog.seq_id("00/00/1A") == "00001A"
    assert iolog.seq_path("00001A") == "00/00/1A"
    for bad in ("00001a", "0001A", "00/00/1A", "../../..", "00001A\n", ""):
        with pytest.raises(IologError, match="is not a recording id"):
            iolog.seq_path(bad)


def test_walk_finds_real_seq_directories_only_in_order(store: Path, root_fd: int) -> None:
    for rid in ("00000B", "000001", "0A0000"):
        write_recording(store, rid)
    (store / "00" / "00" / "ab").mkdir()  # lower case: not sudo's
    (store / "00" / "00" / "001").mkdir()
    (store / "00" / "00" / "ZZ").write_text("a file, not a directory")
    (store / "lost+found").mkdir()
    assert list(iolog.walk(root_fd)) == ["00/00/01", "00/00/0B", "0A/00/00"]


def test_walk_never_follows_a_linked_directory_out_of_the_store(
    store: Path, root_fd: int, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_recording(outside, "000001")
    write_recording(store, "010101")
    (store / "00").symlink_to(outside / "00")  # first level
    (store / "01" / "02").symlink_to(outside / "00" / "00")  # second level
    (store / "01" / "01" / "02").symlink_to(outside / "00" / "00" / "01")  # the recording
    assert list(iolog.walk(root_fd)) == ["01/01/01"]
    with pytest.raises(IologError, match="00/00/01"):
        iolog.open_recording(root_fd, "00/00/01")
    with pytest.raises(IologError, match="01/01/02"):
        iolog.open_recording(root_fd, "01/01/02")


@pytest.mark.parametrize("path", ["../outside/00/00", "00/00/01/..", "00/00", "/etc/00/00"])
def test_open_recording_takes_seq_paths_only(root_fd: int, path: str) -> None:
    with pytest.raises(IologError, match="is not a recording path"):
        iolog.open_recording(root_fd, path)


def test_a_stream_file_is_opened_only_when_it_is_a_regular_file(
    store: Path, tmp_path: Path
) -> None:
    directory = write_recording(store, "000001", [("ttyout", 0.1, b"hello")])
    secret = tmp_path / "secret"
    secret.write_text("root:$6$...")
    (directory / "ttyin").symlink_to(secret)
    os.mkfifo(directory / "stdin")
    (directory / "stderr").unlink()
    (directory / "stderr").mkdir()
    with opened(directory) as fd:
        out = iolog.open_file(fd, "ttyout")
        assert out is not None
        assert os.read(out, 100) == b"hello"
        os.close(out)
        assert iolog.open_file(fd, "log") is None  # absent is not an error
        with pytest.raises(IologError, match="ttyin"):
            iolog.open_file(fd, "ttyin")
        with pytest.raises(IologError, match="stdin is not a regular file"):
            iolog.open_file(fd, "stdin")  # a FIFO: refused at once, never blocks
        with pytest.raises(IologError, match="stderr is not a regular file"):
            iolog.open_file(fd, "stderr")
        with pytest.raises(IologError, match="stdin is not a regular file"):
            iolog.file_sizes(fd)
        os.unlink("stdin", dir_fd=fd)
        (directory / "stderr").rmdir()
        with pytest.raises(IologError, match="ttyin is not a regular file"):
            iolog.file_sizes(fd)


def test_read_small_refuses_a_file_over_its_limit(store: Path) -> None:
    directory = write_recording(store, "000001")
    with opened(directory) as fd:
        assert iolog.read_small(fd, "log.json", 1 << 20) == (directory / "log.json").read_bytes()
        with pytest.raises(IologError, match=r"log\.json is larger than 10 bytes"):
            iolog.read_small(fd, "log.json", 10)


def test_a_session_is_complete_once_its_timing_file_is_read_only(store: Path) -> None:
    directory = write_recording(store, "000001", complete=False)
    with opened(directory) as fd:
        assert not iolog.is_complete(fd)
        (directory / "timing").chmod(0o400)
        assert iolog.is_complete(fd)
        (directory / "timing").chmod(0o440)
        assert iolog.is_complete(fd)
        (directory / "timing").chmod(0o420)
        assert not iolog.is_complete(fd)
        (directory / "timing").unlink()
        assert not iolog.is_complete(fd)


# --- digest -------------------------------------------------------------------------------------


def test_the_digest_covers_every_file_by_name_length_and_bytes(store: Path) -> None:
    directory = write_recording(store, "000001", [("ttyout", 0.1, b"hi\r\n"), ("ttyin", 1, b"x")])
    expected = hashlib.sha256(b"broker-recording-v1\n")
    files = {}
    for name in iolog.DIGEST_FILES:
        path = directory / name
        if path.exists():
            data = path.read_bytes()
            expected.update(f"{name}\0{len(data)}\0".encode() + data)
            files[name] = hashlib.sha256(data).hexdigest()
    with opened(directory) as fd:
        assert iolog.digest(fd) == (expected.hexdigest(), files)
        assert set(files) == {"log.json", "timing", "stdout", "stderr", "ttyin", "ttyout"}


def test_moving_bytes_between_files_changes_the_digest(store: Path) -> None:
    first = write_recording(store, "000001", [("ttyout", 0.1, b"ab")])
    second = write_recording(store, "000002", [("ttyout", 0.1, b"ab")])
    (second / "ttyout").write_bytes(b"a")
    (second / "stdout").write_bytes(b"b")
    with opened(first) as fd1, opened(second) as fd2:
        assert iolog.digest(fd1)[0] != iolog.digest(fd2)[0]


# --- chunks: the timeline -----------------------------------------------------------------------


def test_chunks_keep_the_pacing_of_skipped_streams_and_events(store: Path) -> None:
    directory = write_recording(
        store,
        "000001",
        [("ttyout", 0.5, b"$ "), ("ttyin", 1.0, b"l"), ("winsize", 0.25, b""),
         ("ttyin", 0.5, b"s\r"), ("ttyout", 0.125, b"ls\r\nfile\r\n")],
    )  # fmt: skip
    with opened(directory) as fd:
        assert list(iolog.chunks(fd, iolog.INPUT, 1000)) == [
            (1.5, "ttyin", b"l"),
            (0.75, "ttyin", b"s\r"),
        ]
        assert list(iolog.chunks(fd, iolog.OUTPUT, 1000)) == [
            (0.5, "ttyout", b"$ "),
            (1.875, "ttyout", b"ls\r\nfile\r\n"),
        ]
        with pytest.raises(IologError, match="larger than 10 bytes"):
            list(iolog.chunks(fd, iolog.OUTPUT, 10))


def test_chunks_of_a_truncated_stream_stop_with_an_error(store: Path) -> None:
    directory = write_recording(store, "000001", [("ttyout", 0.5, b"$ "), ("ttyout", 1, b"0123")])
    (directory / "ttyout").write_bytes(b"$ 01")
    with opened(directory) as fd, pytest.raises(IologError, match="ttyout is truncated"):
        list(iolog.chunks(fd, iolog.OUTPUT, 1000))
