"""Audit chain benchmark: appends/s (single, batched) and verify speed, against plain SQLite.

Run:  .venv/bin/python bench/audit_bench.py [--events 1000000] [--repeat 3]
Prints each figure (median of --repeat runs) and our/plain ratios. Goals
(issue 2): batched append >= 20,000 events/s, verify >= 200,000 events/s.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchapp import make_app

from broker.app import App
from broker.audit import writer

BATCH = 1000


def event(i: int) -> writer.EventInput:
    return writer.EventInput(
        "user:alice", "grant.issue", f"gpu{i % 512:03d}", details={"grant": f"g-{i}", "minutes": 30}
    )


def plain_db(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, ts TEXT, actor TEXT, action TEXT,"
        " target TEXT, outcome TEXT, details TEXT, prev_hash TEXT, hash TEXT)"
    )
    return conn


def plain_row(i: int) -> tuple[str, ...]:
    return (
        "2026-11-22T10:00:00.000000Z",
        "user:alice",
        "grant.issue",
        f"gpu{i % 512:03d}",
        "ok",
        f'{{"grant":"g-{i}","minutes":30}}',
        "0" * 64,
        f"{i:064x}",
    )


def rate(n: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def bench_single(app: App, plain: sqlite3.Connection, n: int) -> tuple[float, float]:
    store = app.ready_store()

    def ours() -> None:
        for i in range(n):
            with store.transaction() as conn:
                writer.record(conn, event(i))

    def theirs() -> None:
        for i in range(n):
            plain.execute("BEGIN IMMEDIATE")
            plain.execute(
                "INSERT INTO rows (ts, actor, action, target, outcome, details, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                plain_row(i),
            )
            plain.execute("COMMIT")

    return rate(n, ours), rate(n, theirs)


def bench_batched(app: App, plain: sqlite3.Connection, n: int) -> tuple[float, float]:
    store = app.ready_store()

    def ours() -> None:
        for start in range(0, n, BATCH):
            with store.transaction() as conn:
                writer.record_many(conn, [event(i) for i in range(start, min(n, start + BATCH))])

    def theirs() -> None:
        for start in range(0, n, BATCH):
            plain.execute("BEGIN IMMEDIATE")
            plain.executemany(
                "INSERT INTO rows (ts, actor, action, target, outcome, details, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [plain_row(i) for i in range(start, min(n, start + BATCH))],
            )
            plain.execute("COMMIT")

    return rate(n, ours), rate(n, theirs)


def fill(app: App, total: int) -> None:
    store = app.ready_store()
    have = app.audit().verify().count
    for start in range(have, total, 10_000):
        with store.transaction() as conn:
            writer.record_many(conn, [event(i) for i in range(start, min(total, start + 10_000))])


def bench_verify(app: App, plain: sqlite3.Connection, total: int) -> tuple[float, float]:
    report_holder: list[int] = []

    def ours() -> None:
        report = app.audit().verify()
        assert report.ok, report.problem
        report_holder.append(report.count)

    def theirs() -> None:
        count = 0
        for _row in plain.execute("SELECT * FROM rows ORDER BY seq"):
            count += 1
        report_holder.append(count)

    ours_rate = rate(total, ours)
    theirs_rate = rate(total, theirs)
    return ours_rate, theirs_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="chain length for verify")
    parser.add_argument(
        "--single", type=int, default=2000, help="single-event transactions per run"
    )
    parser.add_argument(
        "--batched", type=int, default=100_000, help="events appended in batches per run"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"single": [], "batched": [], "verify": []}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        root = Path(tmp)
        app = make_app(root)
        plain = plain_db(root)
        for _ in range(args.repeat):
            results["single"].append(bench_single(app, plain, args.single))
            results["batched"].append(bench_batched(app, plain, args.batched))
        fill(app, args.events)
        plain.execute("DELETE FROM rows")
        plain.execute("BEGIN")
        plain.executemany(
            "INSERT INTO rows (ts, actor, action, target, outcome, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (plain_row(i) for i in range(args.events)),
        )
        plain.execute("COMMIT")
        total = app.audit().verify().count
        for _ in range(args.repeat):
            results["verify"].append(bench_verify(app, plain, total))
        app.close()
        plain.close()
    goals = {"single": None, "batched": 20_000, "verify": 200_000}
    print(f"audit chain benchmark (median of {args.repeat}; verify over {total:,} events)")
    print(
        f"{'measure':<10} {'broker ev/s':>14} {'plain SQLite ev/s':>18} {'broker/plain':>13} {'goal':>10}"
    )
    for name, pairs in results.items():
        ours = statistics.median(p[0] for p in pairs)
        theirs = statistics.median(p[1] for p in pairs)
        goal = goals[name]
        verdict = "" if goal is None else ("met" if ours >= goal else "MISSED")
        print(
            f"{name:<10} {ours:>14,.0f} {theirs:>18,.0f} {ours / theirs:>13.2f} "
            f"{'' if goal is None else f'>={goal:,}':>10} {verdict}"
        )


if __name__ == "__main__":
    main()
