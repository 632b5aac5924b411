"""broker-relay-flush (pam/): which stranded journals a relay offers again, and that the
flush stops once sudo_logsrvd lets go of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_node_script


@pytest.fixture(scope="module")
def flush() -> ModuleType:
    return load_node_script("broker-relay-flush", "broker_relay_flush")


def journal(spool: Path, name: str, age: float) -> Path:
    path = spool / name
    path.write_bytes(b"\x00\x00\x00\x10wire-format")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_only_old_journals_nobody_holds_are_stranded(flush: ModuleType, tmp_path: Path) -> None:
    spool = tmp_path / "outgoing"
    spool.mkdir()
    journal(spool, "relay.AAAAAAAA", 120)
    held = journal(spool, "relay.BBBBBBBB", 120)
    journal(spool, "relay.CCCCCCCC", 1)  # just written: the running sudo_logsrvd may be on it
    journal(spool, "notes.txt", 120)
    (spool / "relay.DDDDDDDD").symlink_to(spool / "relay.AAAAAAAA")
    (spool / "relay.EEEEEEEE").mkdir()
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        assert flush.stranded(str(spool), 60, time.time()) == ["relay.AAAAAAAA"]
    finally:
        locker.communicate("")
    assert flush.stranded(str(spool), 60, time.time()) == ["relay.AAAAAAAA", "relay.BBBBBBBB"]
    assert flush.stranded(str(tmp_path / "missing"), 60, time.time()) == []


def test_a_flush_stops_when_nobody_works_on_what_is_left(
    flush: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker host still away: sudo_logsrvd drops the journal; the flush ends soon,
    reports it left, and does not wait for its whole deadline."""
    spool = tmp_path / "outgoing"
    spool.mkdir()
    journal(spool, "relay.AAAAAAAA", 120)
    fake = tmp_path / "logsrvd"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")  # runs, holds nothing
    fake.chmod(0o755)
    monkeypatch.setattr(flush, "LOGSRVD", str(fake))
    started = time.monotonic()
    assert flush.flush(str(spool), "-", ["relay.AAAAAAAA"], 120) == ["relay.AAAAAAAA"]
    assert 3 <= time.monotonic() - started < 10


def test_a_delivered_journal_ends_the_flush(
    flush: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "outgoing"
    spool.mkdir()
    path = journal(spool, "relay.AAAAAAAA", 120)
    fake = tmp_path / "logsrvd"
    # Stands in for sudo_logsrvd: holds the journal a moment, delivers it (removes it).
    fake.write_text(
        f"#!{sys.executable}\n"
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "time.sleep(4)\n"
        f"os.unlink({str(path)!r})\n"
        "time.sleep(60)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(flush, "LOGSRVD", str(fake))
    started = time.monotonic()
    assert flush.flush(str(spool), "-", ["relay.AAAAAAAA"], 120) == []
    assert 4 <= time.monotonic() - started < 15
