"""A throwaway PostgreSQL 15 cluster for the store's tests: Debian's initdb and pg_ctl, run
as the `postgres` user, its data and its Unix socket under a fresh /tmp directory, no TCP
at all (listen_addresses = ''). The host's own clusters are never touched or started."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


class Cluster:
    """A running cluster; `database()` makes a fresh, empty database and returns its URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self._names = itertools.count(1)

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user=postgres"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = _as_postgres(
            [str(BIN / "psql"), "-X", "-qAt", "-h", str(self.socket_dir), "-d", dbname, "-c", sql]
        )
        return out.strip()

    def database(self) -> str:
        name = f"broker_test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def terminate(self, dbname: str) -> None:
        """Kill every backend serving `dbname` (what a server restart does to a client)."""
        self.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        )


def _as_postgres(argv: list[str]) -> str:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _start(made: Cluster) -> None:
    """initdb (trust: only this process's root user reaches the socket directory) and start;
    fsync off: a test cluster's durability is not under test, the broker's
    synchronous_commit setting is."""
    initdb = [str(BIN / "initdb"), "-D", str(made.data), "-A", "trust", "-U", "postgres"]
    _as_postgres([*initdb, "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
    _as_postgres(["mkdir", "-m", "0700", str(made.socket_dir)])
    options = f"-c listen_addresses='' -c unix_socket_directories={made.socket_dir} -c fsync=off"
    pg_ctl = [str(BIN / "pg_ctl"), "-D", str(made.data), "-w", "-s"]
    _as_postgres([*pg_ctl, "-o", options, "-l", str(made.root / "log"), "start"])


def _stop(made: Cluster) -> None:
    pg_ctl = [str(BIN / "pg_ctl"), "-D", str(made.data), "-w", "-s"]
    argv = ["runuser", "-u", "postgres", "--", *pg_ctl, "-m", "immediate", "stop"]
    subprocess.run(argv, capture_output=True, check=False, timeout=60)
    shutil.rmtree(made.root, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[Cluster]:
    """Start a cluster for the length of the block; stop it and remove its files after."""
    if not (BIN / "initdb").exists():
        raise RuntimeError(f"{BIN}/initdb is missing: run deploy/install-deps.sh (postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    entry = pwd.getpwnam("postgres")
    os.chown(root, entry.pw_uid, entry.pw_gid)
    made = Cluster(root)
    try:
        _start(made)
        yield made
    finally:
        _stop(made)
