"""A store that cannot take a write refuses in one line, exit 3, and leaves nothing half-written.

Issue 20, item 7: with the store's file system full an elevation was refused but the person
saw "internal error in the broker daemon (incident ...)". Real SQLite behaviour stands in for
the full disk: `max_page_count` (SQLITE_FULL, what `store.max_size_mib` sets), a read-only
connection (SQLITE_READONLY; the tests run as root, whom file modes do not stop) and a
second connection holding the write lock (SQLITE_BUSY past `store.busy_timeout`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.audit import writer
from broker.audit.query import count_events
from broker.config.loader import load_settings
from broker.core.errors import EXIT_UNAVAILABLE, UnavailableError
from broker.store.db import Store, StoreUnavailableError, store_unavailable
from tests.helpers import run_broker, serving, write_config
from tests.unit.policy_samples import LAB_POLICY
from tests.unit.test_policy_cli import seed_directory
from tests.unit.test_user_resolution import ALICE_SID, _grant, _grant_ids, seed_grants

PAD = "x" * 3000  # an audit detail big enough that each event needs a new page


def _event(conn: sqlite3.Connection, n: int = 0) -> None:
    writer.record(conn, writer.EventInput("unix:root", "test.fill", f"t{n}", details={"pad": PAD}))


def _verify(app: App) -> None:
    report = app.audit().verify()
    assert report.ok, report


@pytest.fixture
def app(broker_config: Path) -> Iterator[App]:
    app = App(load_settings(broker_config))
    yield app
    app.close()


# ---------------------------------------------------------------- the store itself


def test_a_full_store_refuses_in_one_line_and_rolls_back(app: App) -> None:
    store = app.ready_store()
    before = count_events(store.conn)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(UnavailableError) as caught, store.transaction() as conn:
        for n in range(5):
            _event(conn, n)
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    line = caught.value.one_line()
    assert line.startswith(f"the broker's audit store is unavailable: {store.path} is full: ")
    assert "(SQLITE_FULL); nothing was done; free space" in line
    assert count_events(store.conn) == before
    assert not store.conn.in_transaction
    _verify(app)


def test_a_read_only_store_refuses_in_one_line(app: App) -> None:
    path = app.settings.db_path
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    store = Store(conn, path)
    refused = pytest.raises(UnavailableError, match=r"is read-only \(SQLITE_READONLY\); nothing")
    with refused, store.transaction() as tx:
        _event(tx)
    store.close()
    _verify(app)


def test_a_store_locked_past_the_busy_timeout_refuses_in_one_line(app: App) -> None:
    path = app.settings.db_path
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    store = Store.open(path, owner=None, busy_timeout=timedelta(seconds=1))
    started = time.monotonic()
    try:
        refused = pytest.raises(UnavailableError, match=r"stayed locked .* \(SQLITE_BUSY\)")
        with refused, store.transaction() as tx:
            _event(tx)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.9 < time.monotonic() - started < 10
    with store.transaction() as tx:  # the lock is gone: the store works again
        _event(tx)
    store.close()


def test_other_sqlite_errors_stay_bugs_not_unavailable(app: App) -> None:
    store = app.ready_store()
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.execute("INSERT INTO audit_events (seq) VALUES (NULL)")
    assert not store.conn.in_transaction
    failed = sqlite3.OperationalError("disk I/O error")
    failed.sqlite_errorcode = 778  # SQLITE_IOERR_WRITE, an extended code
    failed.sqlite_errorname = "SQLITE_IOERR_WRITE"
    found = store_unavailable(failed, "/x/broker.db")
    assert found is not None
    assert found.one_line() == (
        "the broker's audit store is unavailable: /x/broker.db had an I/O error"
        " (SQLITE_IOERR_WRITE);"
        " nothing was done; check the disk and the kernel log (journalctl -k), then retry"
    )
    assert store_unavailable(sqlite3.OperationalError("no such table: x"), "/x") is None


# ---------------------------------------------------------------- through the daemon


def _fill_past(config: Path, mib: int) -> int:
    """Real audit events (sealed) until the database is larger than `mib`; the event count."""
    app = App(load_settings(config))
    store = app.ready_store()
    n = 0
    page = store.conn.execute("PRAGMA page_size").fetchone()[0]
    while store.conn.execute("PRAGMA page_count").fetchone()[0] * page <= mib * 1024 * 1024:
        with store.transaction() as tx:
            for _ in range(50):
                n += 1
                _event(tx, n)
    count = count_events(store.conn)
    app.close()
    return count


def _events(config: Path) -> int:
    result = run_broker("audit", "verify", "--json", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(json.loads(result.stdout)["count"])


def _one_line_exit_3(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "internal error" not in line and "incident" not in line
    for phrase in phrases:
        assert phrase in line, line


def test_a_full_store_refuses_writes_through_the_daemon_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run_broker("init", config=config).returncode == 0
    events = _fill_past(config, 1)
    config = write_config(tmp_path, "[store]\nmax_size_mib = 1\n")  # now past its cap
    policy = tmp_path / "policy.toml"
    policy.write_text(LAB_POLICY)
    with serving(config):
        result = run_broker("policy", "apply", str(policy), config=config)
        _one_line_exit_3(
            result, "audit store is unavailable", "is full", "nothing was done", "max_size_mib"
        )
        assert _events(config) == events  # nothing written, the chain still verifies
        shown = run_broker("policy", "show", config=config)
        assert shown.stdout.startswith("no policy is active"), shown.stdout


def test_a_locked_store_refuses_writes_through_the_daemon_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[store]\nbusy_timeout = "1s"\n')
    assert run_broker("init", config=config).returncode == 0
    seed_directory(config)
    seed_grants(config, _grant("g" + "a" * 16, "alice", ALICE_SID))
    policy = tmp_path / "policy.toml"
    policy.write_text(LAB_POLICY)
    with serving(config):
        events = _events(config)
        holder = sqlite3.connect(load_settings(config).db_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            refused = [
                run_broker("policy", "apply", str(policy), config=config),
                run_broker("revoke", "--user", "alice", config=config),
            ]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        for result in refused:
            _one_line_exit_3(
                result, "audit store is unavailable", "stayed locked", "nothing was done", "fuser"
            )
        assert _events(config) == events
        assert _grant_ids(config, "--active") == ["g" + "a" * 16]  # not half-revoked
        applied = run_broker("policy", "apply", str(policy), config=config)
        assert applied.returncode == 0, applied.stderr  # once the lock is gone, it works


def test_a_request_that_already_committed_does_not_claim_nothing_was_done(app: App) -> None:
    """Review finding: a store failure after an earlier step of the same request had been
    committed (a grant stored, then its push record refused) said "nothing was done"."""
    store = app.ready_store()
    before = app.commits()
    with store.transaction() as tx:
        _event(tx, 1)
    assert app.commits() == before + 1
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreUnavailableError) as caught, store.transaction() as tx:
        for n in range(2, 2000):
            _event(tx, n)
    assert app.commits() == before + 1  # the refused one is not counted
    assert "nothing was done" in caught.value.one_line()
    partly = caught.value.partly_done().one_line()
    assert "nothing was done" not in partly
    assert "its earlier steps were recorded (see `broker audit list`), this one was not" in partly
    assert partly.endswith(caught.value.fix or "")
