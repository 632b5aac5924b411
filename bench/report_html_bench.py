"""The HTML report's charts over a year of a busy cluster: goal < 10 s for 1,000,000 events.

    .venv/bin/python bench/report_html_bench.py --events 1000000 --repeat 3 [--html report.html]

Builds a throwaway store (rows inserted directly, hashes not chained: only the report's reads
are measured), then times `chart_series` for the whole year, for one zone, and `render_html`
(matplotlib drawing the five SVGs and the page), printing medians. With --html it also writes
the page drawn from this data (docs/report-screenshot.png was taken from it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.core.timeutil import to_text  # noqa: E402
from broker.report.charts import chart_series  # noqa: E402
from broker.report.html import render_html  # noqa: E402
from tests.unit import report_samples  # noqa: E402

UNTIL = datetime(2026, 12, 1, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=365)
ZONES = {"compute": 160, "storage": 24, "management": 8, "access": 8}
ZONE_OF = {f"{z[:2]}{i:03d}": z for z, count in ZONES.items() for i in range(count)}
NODES = [*sorted(ZONE_OF), "xx001", "xx002"]  # two nodes no zone names
ACTIONS = ("grant.issue", "grant.expire", "session.open", "session.close", "grant.push")
REASONS = ("wrong code", "wrong code", "malformed code", "replayed code", "locked")


def moment(rng: random.Random) -> datetime:
    return SINCE + timedelta(seconds=rng.uniform(0, 365 * 86400))


def audit_rows(rng: random.Random, count: int) -> Iterator[tuple[str, ...]]:
    """Mostly grant and session events; one in fifty a refused MFA code, some lockouts."""
    for _ in range(count):
        ts = to_text(moment(rng))
        if rng.random() < 0.02:
            reason = rng.choice(REASONS)
            yield ts, "mfa.verify", "refused", json.dumps({"sid": "S-1", "reason": reason})
        elif rng.random() < 0.001:
            yield ts, "mfa.lock", "ok", "{}"
        else:
            yield ts, rng.choice(ACTIONS), "ok", "{}"


def fill(conn: Any, events: int, grants: int, rng: random.Random) -> None:
    conn.executemany(
        "INSERT INTO audit_events (ts, actor, action, target, outcome, details, prev_hash, hash)"
        " VALUES (?, 'u', ?, 't', ?, ?, '', '')",
        audit_rows(rng, events),
    )
    grant_rows, node_rows, request_rows, session_rows = [], [], [], []
    for i in range(grants):
        created = moment(rng)
        nodes = rng.sample(NODES, rng.choice((1, 1, 2, 4)))
        gid, rid = f"g{i:07d}", f"r{i:07d}"
        grant_rows.append((gid, to_text(created), to_text(created + timedelta(hours=1)), rid))
        node_rows += [(gid, node) for node in nodes]
        asked = created - timedelta(seconds=rng.lognormvariate(6.5, 1.2))
        request_rows.append(
            (rid, to_text(asked), to_text(asked + timedelta(days=1)), to_text(created), gid)
        )
        start = created + timedelta(minutes=rng.uniform(0, 30))
        end = start + timedelta(seconds=rng.lognormvariate(6.0, 1.5))
        session_rows.append((f"s{i:07d}", f"/r/{i}", nodes[0], to_text(start), to_text(end)))
    conn.executemany(
        "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
        " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
        " max_sessions, request_id, created_at, created_by, state) VALUES (?1, 'u', 'S', 'r',"
        " 'root', 'ALL', '[]', '-', ?2, ?3, 'x', '[]', 'h', 1, 0, 1, ?4, ?2, 'u', 'expired')",
        grant_rows,
    )
    conn.executemany(
        "INSERT INTO grant_nodes (grant_id, node, state) VALUES (?, ?, 'removed')", node_rows
    )
    conn.executemany(
        "INSERT INTO elevation_requests (id, user, sid, nodes, role, runas, commands,"
        " duration_s, reason, policy_sha256, approvals_needed, approver_groups, state,"
        " created_at, expires_at, decided_at, grant_id) VALUES (?, 'u', 'S', '-', 'r', 'root',"
        " 'ALL', 3600, 'x', 'h', 1, '[]', 'granted', ?, ?, ?, ?)",
        request_rows,
    )
    conn.executemany(
        "INSERT INTO recordings (id, path, state, node, user, started_at, ended_at,"
        " first_seen, indexed_at) VALUES (?1, ?2, 'complete', ?3, 'u', ?4, ?5, ?4, ?5)",
        session_rows,
    )
    for k in range(30):
        name = f"svc-{k:02d}"
        conn.execute("INSERT INTO keytab_accounts (name, account) VALUES (?, ?)", (name, name))
        conn.execute(
            "INSERT INTO keytab_nodes (name, node) VALUES (?, ?)", (name, rng.choice(NODES))
        )
        if k % 7:
            done = to_text(UNTIL - timedelta(days=rng.uniform(0, 60)))
            conn.execute(
                "INSERT INTO keytab_rotations (name, state, from_kvno, target_kvno, nodes, actor,"
                " started_at, updated_at) VALUES (?, 'done', 1, 2, '', 'b', ?, ?)",
                (name, done, done),
            )


def median_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--grants", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--html", type=Path)
    args = parser.parse_args()
    store = report_samples.open_store(Path(tempfile.mkdtemp(prefix="report-bench-")) / "b.db")
    start = time.perf_counter()
    with store.transaction() as conn:
        fill(conn, args.events, args.grants, random.Random(22))
    print(f"store: {args.events} audit events, {args.grants} grants, requests and sessions"
          f" ({time.perf_counter() - start:.1f} s to build)")  # fmt: skip
    year, charts = median_of(
        args.repeat, lambda: chart_series(store.conn, SINCE, UNTIL, None, zone_of=ZONE_OF)
    )
    zone, _ = median_of(
        args.repeat, lambda: chart_series(store.conn, SINCE, UNTIL, "storage", zone_of=ZONE_OF)
    )
    document = report_samples.document(charts)
    document["period"] = {"since": to_text(SINCE), "until": to_text(UNTIL)}
    page_s, page = median_of(args.repeat, lambda: render_html(document))
    print(f"chart_series, a year, all zones: {year:.2f} s (median of {args.repeat})")
    print(f"chart_series, a year, one zone:  {zone:.2f} s")
    print(f"render_html (five SVG charts):   {page_s:.2f} s, {len(page) // 1024} KiB")
    print(f"goal < 10 s: {'met' if year + page_s < 10 else 'MISSED'} ({year + page_s:.2f} s)")
    if args.html:
        args.html.write_text(page, encoding="utf-8")
    store.close()


if __name__ == "__main__":
    main()
