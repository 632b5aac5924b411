"""Many accounts in one run (`rotate --due`, `--all`, the scheduler): which ones, and on how
many workers (docs/keytabs.md, "Many accounts at once").

A rotation spends its time waiting: on the KDC (salt, tickets), on AD (the password
change, the key version read back) and on every node (one node program run each to stage,
verify and prune; runs of several accounts on one node are shared, coalesce.py). None of
that holds the store, so accounts are rotated side by side, at most
`keytabs.rotate_workers` at once. Each worker has its own store connection (a SQLite
connection is not shared between threads that write: each transaction takes the write
lock with BEGIN IMMEDIATE, so audit events stay one per step and the chain stays
contiguous), and the store's claim (claims.py) keeps any account on one
worker at a time. One account's failure never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from broker.core.errors import BrokerError
from broker.keytabs import plan, rows
from broker.keytabs.report import RotationReport
from broker.policy.model import ServiceAccount
from broker.store.db import Store

log = logging.getLogger("broker.keytabs")

Rotate = Callable[[str], RotationReport]
# Called once in each worker thread: that worker's rotate, and what closes its connection.
StartWorker = Callable[[], tuple[Rotate, Callable[[], None]]]


def select(
    store: Store, accounts: Mapping[str, ServiceAccount], now: datetime, every: bool
) -> tuple[list[str], dict[str, RotationReport]]:
    """The accounts to rotate now (due, or every one, and any with an open rotation), and a
    `skipped` report for each one still waiting out a backoff."""
    names: list[str] = []
    skipped: dict[str, RotationReport] = {}
    with store.transaction() as conn:
        for name, service in sorted(accounts.items()):
            row = rows.account(conn, name)
            open_one = rows.open_rotation(conn, name)
            if row is not None and row.retry_after is not None and row.retry_after > now:
                message = f"retry after {row.retry_after:%H:%M:%SZ}"
                skipped[name] = RotationReport(name, "skipped", message=message)
                continue
            last = row.last_rotated_at if row is not None else None
            if every or open_one is not None or plan.is_due(last, service.rotate_every, now):
                names.append(name)
    return names, skipped


def _one(rotate: Rotate, name: str) -> RotationReport:
    """One account: a refusal or failure becomes its report, logged like a success."""
    try:
        report = rotate(name)
    except BrokerError as exc:
        report = RotationReport(name, "failed", message=exc.one_line())
    log.info("keytab %s: %s (kvno %s) %s", name, report.outcome, report.kvno, report.message)
    return report


def one_by_one(names: Sequence[str], rotate: Rotate) -> dict[str, RotationReport]:
    return {name: _one(rotate, name) for name in names}


def in_parallel(
    names: Sequence[str], workers: int, start: StartWorker
) -> dict[str, RotationReport]:
    """`names` over `workers` threads, each taking the next account when it is free. An
    error that is not a BrokerError (a bug) stops that worker; the others finish their
    accounts, then it is raised."""
    pending: Iterator[str] = iter(list(names))
    guard = threading.Lock()
    done: dict[str, RotationReport] = {}

    def worker() -> None:
        rotate, close = start()
        try:
            while True:
                with guard:
                    name = next(pending, None)
                if name is None:
                    return
                report = _one(rotate, name)
                with guard:
                    done[name] = report
        finally:
            close()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keytab-rotate") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
    for future in futures:
        future.result()
    return done
