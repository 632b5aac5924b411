"""The detection benchmark's audit part: a store of EVENTS audit events judged pass after
pass by `App.detect`, against a plain read of the same rows (bench/detect_bench.py)."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.detect_data import (
    INSERT_BATCH,
    QUARANTINED,
    SPAN,
    Plan,
    append_chain,
    fresh_app,
    make_settings,
    plan_bursts,
    timeline,
)
from broker.app import App
from broker.core.timeutil import from_text, to_text
from broker.detect.alerts import load_state
from broker.detect.runner import BATCH

GOAL_AUDIT_EVS = 250_000.0


def build_audit_state(base: Path, n: int) -> tuple[Path, Plan, int]:
    state = base / "audit-state"
    end = (time.time() // 86400) * 86400  # the last midnight: the 14 days end before now
    start = end - SPAN.total_seconds()
    step = SPAN.total_seconds() / n
    app = fresh_app(state, base / "no-iolog")
    # Detection watches from its first pass on: begin before the history is written.
    app.detection().run(datetime.fromtimestamp(start, UTC))
    with app.ready_store().transaction() as conn:
        stamp = to_text(datetime.fromtimestamp(start, UTC))
        conn.execute(
            "INSERT INTO quarantines (node, state, reason, since, by, marker, error, updated_at)"
            " VALUES (?, 'quarantined', 'bench', ?, 'unix:ir', 'placed', NULL, ?)",
            (QUARANTINED, stamp, stamp),
        )
    plan = plan_bursts(n, start, step)
    began = time.perf_counter()
    total = append_chain(app, timeline(n, start, step, plan, seed=9))
    took = time.perf_counter() - began
    size = (state / "broker.db").stat().st_size
    app.close()
    print(
        f"built: {total:,} audit events ({n:,} background + {total - n} planted) over "
        f"{SPAN.days} days in {took:.1f} s (chained with real hashes, executemany in "
        f"transactions of {INSERT_BATCH:,}); store {size / 1e6:.0f} MB"
    )
    return state, plan, total


@dataclass
class AuditRun:
    events: int
    seconds: float
    passes: list[float]
    alerts: list[tuple[str, str | None]]
    jobs: int
    memory_bytes: int
    memory_io_s: float


def audit_run(state: Path) -> AuditRun:
    app = App(make_settings(state, state.parent / "no-iolog"))
    conn = app.ready_store().conn
    passes: list[float] = []
    judged = jobs = 0
    while True:
        cursor = int((load_state(conn) or {"cursor": 0})["cursor"])
        row = conn.execute(
            "SELECT ts FROM audit_events WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
            (cursor + BATCH,),
        ).fetchone()
        now = from_text(row[0])  # the time of the last event this pass reads
        began = time.perf_counter()
        report = app.detection().run(now)
        passes.append(time.perf_counter() - began)
        judged += report.events
        jobs += report.jobs
        if report.events == 0:
            break
    alerts = conn.execute("SELECT rule, user FROM alerts ORDER BY id").fetchall()
    raw = conn.execute("SELECT value FROM detect_state WHERE key = 'detector'").fetchone()[0]
    began = time.perf_counter()
    json.dumps(json.loads(raw), separators=(",", ":"))
    memory_io = time.perf_counter() - began
    app.close()
    return AuditRun(judged, sum(passes), passes, alerts, jobs, len(raw), memory_io)


def plain_read(state: Path) -> float:
    """Read every event as the runner does (same query, same batches) and parse its
    details: the floor under the detector."""
    conn = sqlite3.connect(state / "broker.db")
    began = time.perf_counter()
    cursor, count = 0, 0
    while True:
        rows = conn.execute(
            "SELECT seq, ts, actor, action, target, outcome, details FROM audit_events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, BATCH),
        ).fetchall()
        if not rows:
            break
        for row in rows:
            json.loads(row[6])
        cursor = rows[-1][0]
        count += len(rows)
    took = time.perf_counter() - began
    conn.close()
    return count / took


def bench_audit(args: argparse.Namespace, base: Path) -> tuple[dict[str, Any], Path]:
    state, plan, total = build_audit_state(base, args.events)
    runs: list[AuditRun] = []
    keep = base / "audit-last"
    for run in range(args.runs):
        work = base / f"audit-run{run}"
        shutil.copytree(state, work)
        result = audit_run(work)
        runs.append(result)
        rate = total / result.seconds
        print(
            f"run {run + 1}: {result.events:,} events judged in {len(result.passes)} passes,"
            f" {result.seconds:.2f} s = {rate:,.0f} events/s; {len(result.alerts)} alerts,"
            f" {result.jobs:,} drift jobs"
        )
        if run == args.runs - 1:
            work.rename(keep)
        else:
            shutil.rmtree(work)
    floors = [plain_read(state) for _ in range(args.runs)]
    shutil.rmtree(state)
    first = runs[0]
    raised = set(first.alerts)
    missing = sorted(plan.expected - raised)
    noise = Counter(rule for rule, user in first.alerts if not (user or "").startswith("x-"))
    planted = Counter(rule for rule, user in first.alerts if (user or "").startswith("x-"))
    print(f"planted bursts: {len(plan.expected) - len(missing)} of {len(plan.expected)} raised")
    print("  planted alerts by rule: " + ", ".join(f"{r} {c}" for r, c in sorted(planted.items())))
    print("  background alerts by rule: " + (
        ", ".join(f"{r} {c}" for r, c in sorted(noise.items())) or "none"))  # fmt: skip
    if missing:
        print(f"MISSING planted alerts: {missing}")
    ordered = sorted(first.passes[:-1]) or [0.0]
    print(
        f"  pass of {BATCH:,} events: median {statistics.median(ordered):.3f} s,"
        f" max {ordered[-1]:.3f} s; detector memory {first.memory_bytes / 1e3:.0f} kB of JSON"
        f" ({first.memory_io_s * 1e3:.1f} ms to load and save once)"
    )
    results = {
        "events": total,
        "rate": statistics.median(total / r.seconds for r in runs),
        "floor": statistics.median(floors),
        "missing": missing,
    }
    return results, keep
