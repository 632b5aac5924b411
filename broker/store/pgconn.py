"""PostgreSQL behind the interface the services use of sqlite3 (psycopg 3, Debian's libpq5).

The services call `conn.execute(sql, params)` with `?` placeholders and read plain tuples;
they catch `sqlite3.IntegrityError` and `sqlite3.Error`. This adapter keeps all of that true
on PostgreSQL, so no service knows which engine it runs on:

- SQL is translated once per text (pgsql.to_pyformat); `bool` parameters go as integers
  (SQLite has no boolean type, the columns are INTEGER), numeric results come back as int or
  float as SQLite's would (SUM of integers is an int, not a Decimal);
- a failing statement inside a write transaction rolls back only itself (a savepoint around
  each write), as in SQLite, so a caught IntegrityError does not poison the transaction;
- errors that are no fault of the request (connection lost, disk full, read-only standby,
  lock timeout, serialization failure) become StoreUnavailableError with one line, exit 3;
  constraint violations become sqlite3.IntegrityError, anything else sqlite3.OperationalError;
- a connection found broken is opened again before the next statement outside a
  transaction, or the next transaction (never in the middle of one).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql as pgsql_literal
from psycopg.adapt import Loader
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus

from broker.core.storeurl import StoreUrl
from broker.store.pgsql import to_pyformat
from broker.store.unavailable import NOTHING_DONE, StoreUnavailableError

# pg_advisory_xact_lock's key: every write transaction of every broker takes it first, so
# writers run one at a time (SQLite's BEGIN IMMEDIATE) and the audit chain never forks.
WRITE_LOCK_KEY = 0x62726F6B6572  # "broker"
_READS = ("SELECT", "WITH", "VALUES", "SHOW", "EXPLAIN")
_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}
_LOST = "lost its connection to PostgreSQL, or PostgreSQL refused one"
_LOST_FIX = "check that PostgreSQL runs and answers at store.url (pg_isready), then retry"
_LOCKED = "stayed locked by another writer past store.busy_timeout"
_LOCKED_FIX = "retry; if it persists, look for a long transaction in pg_stat_activity"
# SQLSTATE (or its two-character class) -> what to say, what to do.
_UNAVAILABLE = {
    "08": (_LOST, _LOST_FIX),
    "57P01": (_LOST, _LOST_FIX),
    "57P02": (_LOST, _LOST_FIX),
    "57P03": (_LOST, _LOST_FIX),
    "53100": (
        "is full: no space left on the database server",
        "free space on the PostgreSQL server's data file system, then retry",
    ),
    "53200": ("ran out of memory on the server", "check the PostgreSQL server's log"),
    "53300": ("has no connection slot free", "raise max_connections or close idle clients"),
    "58030": ("had an I/O error", "check the database server's disk and kernel log"),
    "25006": (
        "is read-only (a standby, or default_transaction_read_only)",
        "point store.url at the writable primary (target_session_attrs=read-write), then retry",
    ),
    "40001": ("could not serialize this transaction with another", "retry"),
    "40P01": ("found a deadlock with another transaction", "retry"),
    "55P03": (_LOCKED, _LOCKED_FIX),
    "57014": (_LOCKED, _LOCKED_FIX),
}


def pg_unavailable(exc: psycopg.Error, display: str) -> StoreUnavailableError | None:
    """The one-line refusal for a PostgreSQL failure that is no fault of the request (None
    for any other error, which stays a bug to investigate)."""
    code = exc.sqlstate or ""
    found = _UNAVAILABLE.get(code) or _UNAVAILABLE.get(code[:2])
    if found is None and not code and isinstance(exc, psycopg.OperationalError):
        found = _UNAVAILABLE["08"]  # no SQLSTATE: libpq lost or never had the connection
    if found is None:
        return None
    what, fix = found
    name = f"SQLSTATE {code} {type(exc).__name__}" if code else type(exc).__name__
    return StoreUnavailableError(
        f"the broker's audit store is unavailable: {display} {what} ({name}); {NOTHING_DONE}",
        fix=fix,
    )


Buffer = bytes | bytearray | memoryview


class _NumericLoader(Loader):
    """numeric as SQLite returns it: an int when whole (SUM, COUNT of integers), else float."""

    def load(self, data: Buffer) -> int | float:
        value = Decimal(bytes(data).decode("ascii"))
        return int(value) if value == value.to_integral_value() else float(value)


class PgCursor:
    """What a service reads from `execute`: fetchone/fetchall/iteration/rowcount, like sqlite3."""

    def __init__(self, cur: psycopg.Cursor[Any], conn: PgConnection, inserted: bool) -> None:
        self._cur = cur
        self._conn = conn
        self._inserted = inserted

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description else []

    def fetchmany(self, size: int = 1) -> list[Any]:
        return self._cur.fetchmany(size) if self._cur.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def lastrowid(self) -> int | None:
        """The id an INSERT took from its table's identity column (lastval()), as sqlite3's
        lastrowid; None for any other statement."""
        if not self._inserted:
            return None
        raw = self._conn.raw
        try:
            with raw.transaction():  # a savepoint: no identity used yet must not abort
                row = raw.execute("SELECT lastval()").fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row else None


class PgConnection:
    """One psycopg connection (autocommit; transactions are explicit, as Store runs them)."""

    dialect = "postgresql"

    def __init__(self, url: StoreUrl, busy_timeout: timedelta) -> None:
        self.url = url
        self.display = url.display()
        self._busy_ms = int(busy_timeout.total_seconds() * 1000)
        self._conn: psycopg.Connection[Any] | None = None
        self._writing = False  # between begin_write and end_write
        self._connect()

    def _connect(self) -> None:
        check_passfile(self.url.keywords().get("passfile") or os.environ.get("PGPASSFILE"))
        try:
            # A server that does not answer is refused after 10 s (libpq would wait for
            # TCP's own timeout); store.url's connect_timeout overrides it.
            keywords = {"connect_timeout": "10", "application_name": "broker"}
            conninfo = make_conninfo("", **{**keywords, **self.url.keywords()})
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._mapped(exc) from exc
        try:
            conn.adapters.register_loader("numeric", _NumericLoader)
            # Every commit waits for the WAL flush (and the synchronous standby, if any):
            # an acknowledged request is in the chain even if the server crashes next.
            conn.execute("SET synchronous_commit = on")
            conn.execute(pgsql_literal.SQL("SET lock_timeout = {}").format(self._busy_ms))
            conn.execute("SET client_min_messages = warning")
        except psycopg.Error as exc:
            conn.close()
            raise self._mapped(exc) from exc
        self._conn = conn

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection, opened again first if the last one broke, but never
        inside a write transaction: its earlier statements went with the old connection,
        so each statement until its end (end_write) is refused, not run outside it."""
        if self._conn is None or self._conn.broken or self._conn.closed:
            if self._writing:
                raise self._mapped(psycopg.OperationalError("connection lost"))
            if self._conn is not None:
                self._conn.close()  # the broken one: its socket, not a transaction
            self._connect()
        assert self._conn is not None
        return self._conn

    @property
    def in_transaction(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        status = self._conn.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def begin_write(self) -> None:
        """BEGIN, then the writers' advisory lock (held to COMMIT/ROLLBACK); READ COMMITTED,
        so each statement after the lock sees every transaction committed before it."""
        self._writing = False
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        self._writing = True
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
        except BaseException:
            self.end_write(commit=False)
            raise

    def end_write(self, *, commit: bool) -> None:
        """COMMIT (errors mapped and raised) or ROLLBACK (quietly: the error that caused it
        is the one to report; a broken connection has rolled back on the server already)."""
        try:
            if commit:
                self.execute("COMMIT")
            elif self._conn is not None and not self._conn.broken and self.in_transaction:
                with suppress(psycopg.Error):
                    self._conn.execute("ROLLBACK")
        finally:
            self._writing = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        query = to_pyformat(sql)
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        values = [int(v) if isinstance(v, bool) else v for v in params]
        conn = self.raw
        guarded = self.in_transaction and verb not in _READS and verb not in _CONTROL
        try:
            if guarded:
                with conn.transaction():  # a savepoint: a failed write undoes only itself
                    cur = conn.execute(query, values)
            else:
                cur = conn.execute(query, values)
        except psycopg.Error as exc:
            raise self._mapped(exc) from exc
        return PgCursor(cur, self, inserted=verb == "INSERT")

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        query = to_pyformat(sql)
        rows = [[int(v) if isinstance(v, bool) else v for v in params] for params in seq]
        conn = self.raw
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(query, rows)
        except psycopg.Error as exc:
            raise self._mapped(exc) from exc
        return PgCursor(cur, self, inserted=False)

    def _mapped(self, exc: psycopg.Error) -> Exception:
        unavailable = pg_unavailable(exc, self.display)
        if unavailable is not None:
            return unavailable
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.IntegrityError) or (exc.sqlstate or "").startswith("23"):
            return sqlite3.IntegrityError(text)
        if (exc.sqlstate or "") == "P0001":  # RAISE EXCEPTION in a trigger (append-only)
            return sqlite3.IntegrityError(text)
        return sqlite3.OperationalError(text)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def check_passfile(path: str | None) -> None:
    """A passfile the broker names must be a regular file only its owner can read (libpq
    only warns about a loose one, and only for ~/.pgpass)."""
    if not path:
        return
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise StoreUnavailableError(
            f"the store's passfile {path} cannot be read: {exc.strerror}",
            fix="create it (hostname:port:database:username:password), mode 0600",
        ) from exc
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
        raise StoreUnavailableError(
            f"the store's passfile {path} is not a regular file of mode 0600"
            f" (mode {stat.S_IMODE(info.st_mode):04o})",
            fix=f"chmod 0600 {path} (and make it a file, not a link)",
        )
