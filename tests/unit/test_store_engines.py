"""The store on both engines: the same migrations, the same SQL, one chain, one-line refusals.

Every test that takes `engine_url` runs twice: on the default SQLite file and on a fresh
database of a throwaway PostgreSQL 15 cluster (tests/pgcluster.py, no TCP).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.app import App, local_actor
from broker.audit import writer
from broker.audit.query import count_events
from broker.config.loader import load_settings
from broker.core.errors import EXIT_UNAVAILABLE
from broker.core.storeurl import StoreUrlError, parse_store_url
from broker.store import migrations
from broker.store.db import Store, StoreUnavailableError
from broker.store.pgsql import PlaceholderError, to_pyformat
from tests.helpers import INIT_EVENTS, REPO, run_broker, write_config
from tests.pgcluster import Cluster

APPEND = """
import sys
from pathlib import Path
from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
app = App(load_settings(Path(sys.argv[1])))
store = app.ready_store()
for i in range(int(sys.argv[2])):
    with store.transaction() as conn:
        event = writer.record(conn, writer.EventInput("unix:test", "test.append", f"{sys.argv[3]}{i}"))
    print(event.seq, flush=True)
"""


def _config(tmp_path: Path, url: str | None, extra: str = "") -> Path:
    """An initialised broker on `url` (None: the SQLite default); `extra`: [store] lines."""
    lines = (f'url = "{url}"\n' if url else "") + extra
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path, f"\n[store]\n{lines}" if lines else "")
    done = run_broker("init", config=config)
    assert done.returncode == 0, done.stderr
    return config


@pytest.fixture
def app(tmp_path: Path, engine_url: str | None) -> Iterator[App]:
    app = App(load_settings(_config(tmp_path, engine_url)))
    yield app
    app.close()


def _append(store: Store, target: str) -> None:
    with store.transaction() as conn:
        writer.record(conn, writer.EventInput("unix:test", "test.append", target))


# ---------------------------------------------------------------- migrations


def test_migrations_apply_from_empty_and_a_second_run_changes_nothing(app: App) -> None:
    store = app.ready_store()
    assert migrations.pending(store.conn) == []
    applied = store.conn.execute("SELECT number FROM schema_migrations ORDER BY number")
    assert [row[0] for row in applied.fetchall()] == [m.number for m in migrations.MIGRATIONS]
    before = count_events(store.conn)
    app.setup().migrate(local_actor())
    assert count_events(store.conn) == before
    assert app.audit().verify().ok


def _sqlite_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name NOT LIKE 'session_text_%'"
    ).fetchall()
    out = {}
    for (name,) in tables:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
        out[name] = ["rowid", *columns] if name == "session_text" else columns
    return out


def test_postgresql_has_the_same_tables_and_columns_as_sqlite(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    lite = App(load_settings(_config(tmp_path / "lite", None)))
    pg = App(load_settings(_config(tmp_path / "pg", pg_cluster.database())))
    rows = pg.ready_store().conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    )
    pg_columns: dict[str, list[str]] = {}
    for table, column in rows.fetchall():
        pg_columns.setdefault(table, []).append(column)
    assert pg_columns == _sqlite_columns(lite.ready_store().conn)
    lite.close()
    pg.close()


# ---------------------------------------------------------------- the SQL the services write


def test_placeholders_outside_quotes_are_bound_and_percent_is_literal(app: App) -> None:
    row = app.ready_store().conn.execute(
        "SELECT '?', 'a%b', ?, 7 % 4, \"x?\" FROM (SELECT 1 AS \"x?\") AS t -- ? %", ("v",)
    )
    assert row.fetchone() == ("?", "a%b", "v", 3, 1)


def test_translation_leaves_quotes_and_comments_alone_and_refuses_numbered() -> None:
    assert to_pyformat("SELECT '?''?', ? /* ? % */ , '%'") == "SELECT '?''?', %s /* ? %% */ , '%%'"
    with pytest.raises(PlaceholderError):
        to_pyformat("SELECT ?1")


def test_a_caught_constraint_error_leaves_the_transaction_usable(app: App) -> None:
    store = app.ready_store()
    with store.transaction() as conn:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (1, "again", "now"),
            )
        writer.record(conn, writer.EventInput("unix:test", "test.after", "t"))
    assert app.audit().verify().ok


def test_audit_events_are_append_only_on_either_engine(app: App) -> None:
    conn = app.ready_store().conn
    statements = ["UPDATE audit_events SET target = 'x'", "DELETE FROM audit_events"]
    if app.ready_store().engine == "postgresql":  # SQLite has no TRUNCATE
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    assert app.audit().verify().ok


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO tunnel_certs (serial, node, path) VALUES ('0A', 'n1', '/p')",  # GLOB/regex
        "INSERT INTO tunnel_certs (serial, node, path) VALUES ('', 'n1', '/p')",
        "INSERT INTO nodes (name, address, port, added_at, added_by) VALUES ('n', 'a', 0, 't', 'u')",
        "INSERT INTO dir_sync VALUES (2, 'u', 'n', 1, 's', NULL, 't', 't', 't')",
        "INSERT INTO keytab_claims (name, owner, claimed_at) VALUES ('k', NULL, 't')",
    ],
)
def test_the_schema_constraints_refuse_the_same_rows(app: App, statement: str) -> None:
    store = app.ready_store()
    with store.transaction() as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(statement)
    ok = "INSERT INTO tunnel_certs (serial, node, path) VALUES ('0a9f', 'n1', '/p')"
    with store.transaction() as conn:
        assert conn.execute(ok).rowcount == 1


def test_integers_booleans_and_sums_come_back_as_sqlite_gives_them(app: App) -> None:
    store = app.ready_store()
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO mfa_locks (sid, until, failures) VALUES (?, ?, ?)", ("S-1", "t", True)
        )
        conn.execute(
            "INSERT INTO mfa_locks (sid, until, failures) VALUES (?, ?, ?)", ("S-2", "t", 2**40)
        )
        ids = [
            conn.execute(
                "INSERT INTO alerts (created_at, rule, severity, message, source)"
                " VALUES (?, ?, ?, ?, ?)",
                ("t", f"r{n}", "low", "m", "test"),
            ).lastrowid
            for n in range(2)
        ]
    assert ids == [1, 2]  # sqlite3's lastrowid: the id the INSERT was given
    total = store.conn.execute("SELECT sum(failures), count(*) FROM mfa_locks").fetchone()
    assert total == (2**40 + 1, 2)
    assert all(type(v) is int for v in total)


def test_a_failed_transaction_leaves_neither_change_nor_event(app: App) -> None:
    store = app.ready_store()
    before = count_events(store.conn)
    with pytest.raises(ZeroDivisionError), store.transaction() as conn:
        conn.execute("INSERT INTO mfa_locks (sid, until, failures) VALUES ('S-9', 't', 1)")
        writer.record(conn, writer.EventInput("unix:test", "test.fail", "t"))
        _ = 1 / 0
    assert store.conn.execute("SELECT count(*) FROM mfa_locks").fetchone()[0] == 0
    assert count_events(store.conn) == before
    assert not store.conn.in_transaction


# ---------------------------------------------------------------- one chain, several writers


def test_processes_appending_at_once_make_one_contiguous_chain(
    tmp_path: Path, engine_url: str | None
) -> None:
    config = _config(tmp_path, engine_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPEND, str(config), "60", f"w{i}-"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for i in range(3)
    ]
    seqs: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        seqs += [int(x) for x in out.split()]
    assert sorted(seqs) == list(range(INIT_EVENTS + 1, INIT_EVENTS + 181))
    app = App(load_settings(config))
    report = app.audit().verify()  # what `broker audit verify` runs
    app.close()
    assert report.ok, report.problem
    assert report.count == INIT_EVENTS + 180


def test_a_second_writer_waits_then_is_refused_in_one_line(
    tmp_path: Path, engine_url: str | None
) -> None:
    config = _config(tmp_path, engine_url, 'busy_timeout = "1s"\n')
    first, second = App(load_settings(config)), App(load_settings(config))
    with first.ready_store().transaction() as conn:
        writer.record(conn, writer.EventInput("unix:test", "test.hold", "t"))
        with pytest.raises(StoreUnavailableError) as caught:
            _append(second.ready_store(), "blocked")
    line = caught.value.one_line()
    assert "stayed locked by another" in line and "nothing was done" in line
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    _append(second.ready_store(), "after")  # the lock went with the first commit
    assert second.audit().verify().ok
    first.close()
    second.close()


# ---------------------------------------------------------------- PostgreSQL going away


def test_a_lost_connection_is_refused_in_one_line_then_reconnected(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = pg_cluster.database()
    app = App(load_settings(_config(tmp_path, url)))
    store = app.ready_store()
    before = count_events(store.conn)
    pg_cluster.terminate(url.split("///")[1].split("?")[0])
    with pytest.raises(StoreUnavailableError) as caught:
        _append(store, "lost")
    line = caught.value.one_line()
    assert line.startswith("the broker's audit store is unavailable: postgresql:")
    assert "lost its connection to PostgreSQL" in line and "nothing was done" in line
    assert "\n" not in line and "password" not in line
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    _append(store, "back")  # the next transaction opens a new connection
    assert count_events(store.conn) == before + 1
    assert app.audit().verify().ok
    app.close()


def test_a_connection_lost_inside_a_transaction_never_continues_outside_it(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = pg_cluster.database()
    app = App(load_settings(_config(tmp_path, url)))
    store = app.ready_store()
    before = count_events(store.conn)
    lost = pytest.raises(StoreUnavailableError, match="lost its connection")
    with lost, store.transaction() as conn:
        writer.record(conn, writer.EventInput("unix:test", "test.first", "t"))
        pg_cluster.terminate(url.split("///")[1].split("?")[0])
        conn.execute("INSERT INTO mfa_locks (sid, until, failures) VALUES ('S-1', 't', 1)")
    # Neither the event before the loss nor the row after it: no autocommit on a new connection.
    assert count_events(store.conn) == before
    assert store.conn.execute("SELECT count(*) FROM mfa_locks").fetchone()[0] == 0
    _append(store, "after")
    assert count_events(store.conn) == before + 1
    app.close()


def test_a_read_only_database_is_refused_in_one_line(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.database()
    config = _config(tmp_path, url)
    dbname = url.split("///")[1].split("?")[0]
    pg_cluster.psql(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    app = App(load_settings(config))  # what a broker pointed at a standby sees
    store = app.ready_store()
    before = count_events(store.conn)
    with pytest.raises(StoreUnavailableError) as caught:
        _append(store, "refused")
    line = caught.value.one_line()
    assert "is read-only (a standby, or default_transaction_read_only)" in line
    assert "SQLSTATE 25006" in line and "target_session_attrs=read-write" in line
    assert count_events(store.conn) == before and not store.conn.in_transaction
    app.close()


def test_an_unreachable_server_is_exit_3_in_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, f'\n[store]\nurl = "postgresql:///nodb?host={tmp_path}&connect_timeout=2"\n'
    )
    done = run_broker("init", config=config)
    assert done.returncode == EXIT_UNAVAILABLE
    assert "lost its connection to PostgreSQL, or PostgreSQL refused one" in done.stderr


def test_a_loose_passfile_is_refused(tmp_path: Path, pg_cluster: Cluster) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:postgres:secret\n")
    passfile.chmod(0o644)
    url = pg_cluster.database() + f"&passfile={passfile}"
    done = run_broker("init", config=write_config(tmp_path, f'\n[store]\nurl = "{url}"\n'))
    assert done.returncode == EXIT_UNAVAILABLE
    assert f"passfile {passfile} is not a regular file of mode 0600" in done.stderr
    assert "secret" not in done.stderr + done.stdout


# ---------------------------------------------------------------- store.url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://broker:hunter2@db/broker", "a password is not accepted"),
        ("host=db dbname=broker password=hunter2", "a password is not accepted"),
        ("postgresql:///broker?options=-c%20x", "'options' is not accepted"),
        ("postgresql://db.example/broker", "set sslmode=verify-full"),
        ("postgresql://db.example/broker?sslmode=require", "set sslmode=verify-full"),
        ("postgresql://localhost", "no database named"),
        ("postgresql:///b?host=/run/../etc", "the value of host is not an accepted host"),
        ("postgresql://db.example/broker?sslmode=verify-ca&sslrootcert=/a", "verify-full"),
        ("postgresql://db.example/broker?sslmode=verify-full", "sslrootcert"),
        ("sqlite://host/x.db", "three slashes"),
        ("mysql://db/broker", "expected sqlite:///"),
    ],
)
def test_store_urls_outside_the_allow_list_are_refused(url: str, why: str) -> None:
    with pytest.raises(StoreUrlError, match=why):
        parse_store_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "host=/run/postgresql dbname=broker password='Hunter2'",
        "postgresql://alice%3AHunter2@db/broker",
        "host=/run/postgresql dbname=broker user=al'Hunter2",
    ],
)
def test_a_refused_store_url_never_echoes_a_value(url: str) -> None:
    with pytest.raises(StoreUrlError) as refused:
        parse_store_url(url)
    assert "Hunter2" not in str(refused.value)


def test_accepted_store_urls() -> None:
    lite = parse_store_url("sqlite:///var/lib/broker/broker.db")
    assert (lite.engine, str(lite.path)) == ("sqlite", "/var/lib/broker/broker.db")
    pg = parse_store_url(
        "postgresql://broker@db.example:5433/broker?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    )
    assert pg.keywords() == {
        "user": "broker",
        "host": "db.example",
        "port": "5433",
        "dbname": "broker",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
    }
    words = parse_store_url("host=/run/postgresql dbname=broker passfile=/etc/broker/pgpass")
    assert (
        words.display()
        == "postgresql:host=/run/postgresql dbname=broker passfile=/etc/broker/pgpass"
    )


def test_a_refused_store_url_is_a_usage_error_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, '\n[store]\nurl = "postgresql://u:hunter2@db/b"\n')
    done = run_broker("config", "check", config=config)
    assert done.returncode == 2
    assert "store.url" in done.stderr and "a password is not accepted" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_max_size_is_refused_with_postgresql(tmp_path: Path) -> None:
    extra = '\n[store]\nurl = "postgresql:///b?host=/run/postgresql"\nmax_size_mib = 10\n'
    done = run_broker("config", "check", config=write_config(tmp_path, extra))
    assert done.returncode == 2
    assert "caps a SQLite file only" in done.stderr


def test_the_sqlite_default_is_unchanged(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    assert settings.store_url.engine == "sqlite"
    assert settings.db_path == tmp_path / "state" / "broker.db"
