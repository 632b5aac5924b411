"""The store and the chain on both engines: atomicity, concurrency, crashes, modes, seals.

Every test runs on a real SQLite file and on a fresh database of a throwaway PostgreSQL
cluster (`engine_url`, tests/conftest.py), except those about the SQLite file itself.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
from broker.core.errors import IntegrityError, RefusedError
from tests.helpers import INIT_EVENTS, REPO, run_broker, write_config

APPEND_SCRIPT = """
import sys
from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
from pathlib import Path
app = App(load_settings(Path(sys.argv[1])))
store = app.ready_store()
for i in range(int(sys.argv[2])):
    with store.transaction() as conn:
        event = writer.record(conn, writer.EventInput("unix:test", "test.append", f"{sys.argv[3]}-{i}"))
    print(event.seq, flush=True)
"""


def engine_config(tmp_path: Path, engine_url: str | None, audit_extra: str = "") -> Path:
    """write_config for this engine: `audit_extra` goes in [audit], then [store] url."""
    store = f'\n[store]\nurl = "{engine_url}"\n' if engine_url else ""
    return write_config(tmp_path, audit_extra + store)


@pytest.fixture
def broker_config(tmp_path: Path, engine_url: str | None) -> Path:
    """An initialised broker on each engine (the suite-wide fixture is SQLite only)."""
    config = engine_config(tmp_path, engine_url)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    return config


def append(app: App, n: int, target: str = "t") -> None:
    store = app.ready_store()
    for i in range(n):
        with store.transaction() as conn:
            writer.record(conn, writer.EventInput("unix:test", "test.append", f"{target}{i}"))


def test_state_change_and_its_event_commit_or_roll_back_together(broker_app: App) -> None:
    store = broker_app.ready_store()
    store.conn.execute("CREATE TABLE IF NOT EXISTS things (name TEXT)")
    before = broker_app.audit().verify().count
    with pytest.raises(ZeroDivisionError), store.transaction() as conn:
        conn.execute("INSERT INTO things VALUES ('x')")
        writer.record(conn, writer.EventInput("unix:test", "thing.add", "x"))
        _ = 1 / 0
    assert store.conn.execute("SELECT count(*) FROM things").fetchone()[0] == 0
    assert broker_app.audit().verify().count == before


def test_events_outside_a_transaction_are_refused(broker_app: App) -> None:
    with pytest.raises(RuntimeError, match=r"inside Store\.transaction"):
        writer.record(broker_app.ready_store().conn, writer.EventInput("a", "b.c", "t"))


def test_the_table_refuses_updates_and_deletes(broker_app: App) -> None:
    conn = broker_app.ready_store().conn
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_events SET target = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_events")


def test_concurrent_writers_never_fork_the_chain(broker_config: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPEND_SCRIPT, str(broker_config), "150", f"w{i}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    seqs = []
    for proc in procs:
        with proc:
            out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        seqs += [int(x) for x in out.split()]
    assert len(set(seqs)) == 600  # every committed append got its own seq
    app = App(load_settings(broker_config))
    report = app.audit().verify()
    app.close()
    assert report.ok, report.problem
    assert report.count == 600 + INIT_EVENTS


def test_kill_9_during_writes_loses_no_committed_event(broker_config: Path) -> None:
    for round_ in range(3):
        with subprocess.Popen(
            [sys.executable, "-c", APPEND_SCRIPT, str(broker_config), "100000", "k"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            committed = [int(proc.stdout.readline()) for _ in range(40 + 20 * round_)]
            os.kill(proc.pid, signal.SIGKILL)
            rest = proc.stdout.read().split()
        committed += [int(x) for x in rest]
        app = App(load_settings(broker_config))
        report = app.audit().verify()
        app.close()
        assert report.ok, report.problem
        assert report.head_seq >= max(committed)


def test_store_and_wal_files_are_private(broker_app: App) -> None:
    if broker_app.ready_store().engine != "sqlite":
        pytest.skip("the SQLite file's and WAL's modes (PostgreSQL keeps its own files)")
    append(broker_app, 3)
    db = broker_app.settings.db_path
    for path in (db, Path(f"{db}-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_a_world_readable_store_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    app = App(load_settings(config))
    app.setup().init("unix:test")
    app.close()
    db = tmp_path / "state" / "broker.db"
    db.chmod(0o644)
    with pytest.raises(RefusedError, match=r"mode 0644, wider than 0600; chmod 600"):
        App(load_settings(config)).store()


def test_a_symlinked_store_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "elsewhere.db").touch(mode=0o600)
    (tmp_path / "state" / "broker.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(RefusedError, match="not a regular file"):
        App(load_settings(config)).store()


def test_every_commit_is_sealed_to_the_log_the_copy_and_syslog(
    tmp_path: Path, engine_url: str | None
) -> None:
    sock_path = tmp_path / "log.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(5)
    config = engine_config(tmp_path, engine_url)
    config.write_text(
        config.read_text().replace(
            "syslog = false",
            f'syslog = true\nsyslog_socket = "{sock_path}"\ncheckpoint_copy = "{tmp_path / "copy" / "cp.jsonl"}"',
        )
    )
    n = INIT_EVENTS + 2  # migrations, init, 2 appends: each commit sealed
    # read while the broker writes, as syslog does: the host's datagram queue may be
    # shorter than the number of commits (net.unix.max_dgram_qlen is 10 by default)
    messages: list[str] = []
    reader = threading.Thread(
        target=lambda: messages.extend(listener.recv(4096).decode() for _ in range(n))
    )
    reader.start()
    app = App(load_settings(config))
    app.setup().init("unix:test")
    append(app, 2)
    reader.join(timeout=10)
    primary = app.settings.checkpoint_log.read_text().splitlines()
    copy = (tmp_path / "copy" / "cp.jsonl").read_text().splitlines()
    assert primary == copy and len(primary) == n
    assert len(messages) == n
    assert messages[-1].startswith("<85>broker-audit[") and f'"seq":{n}' in messages[-1]
    listener.close()


def test_deleting_newest_rows_is_caught_even_without_the_primary_log(
    tmp_path: Path, engine_url: str | None
) -> None:
    config = engine_config(tmp_path, engine_url, f'checkpoint_copy = "{tmp_path / "copy.jsonl"}"')
    app = App(load_settings(config))
    app.setup().init("unix:test")
    append(app, 5)
    conn = app.ready_store().conn
    on = " ON audit_events" if engine_url else ""  # PostgreSQL's triggers belong to a table
    conn.execute(f"DROP TRIGGER audit_events_no_delete{on}")
    conn.execute("DELETE FROM audit_events WHERE seq > 4")
    app.settings.checkpoint_log.unlink()
    report = app.audit().verify()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("truncated", 5)


def test_an_edited_checkpoint_log_is_refused(broker_app: App) -> None:
    append(broker_app, 2)
    log = broker_app.settings.checkpoint_log
    text = log.read_text()
    log.write_text(text.replace('"seq":3', '"seq":2', 1))
    with pytest.raises(IntegrityError, match="bad signature"):
        broker_app.audit().verify()


def test_interval_sealing_defers_then_seal_catches_up(
    tmp_path: Path, engine_url: str | None
) -> None:
    config = engine_config(tmp_path, engine_url, 'checkpoint_interval = "1h"')
    app = App(load_settings(config))
    app.setup().init("unix:test")
    append(app, 3)
    report = app.audit().verify()
    assert report.ok and report.sealed_seq < report.head_seq and report.warnings
    assert app.audit().seal() == report.head_seq
    assert not app.audit().verify().warnings


def test_checkpoint_key_is_private_and_public_half_is_readable(broker_app: App) -> None:
    key = broker_app.settings.signing_key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.with_suffix(".pub").stat().st_mode) == 0o644
    assert "PRIVATE" not in repr(broker_app._sealer)
    time.sleep(0)
