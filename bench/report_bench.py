"""Controls report benchmark: `broker report controls` over a store of N audit events.

Run:  .venv/bin/python bench/report_bench.py [--events 1000000] [--repeat 3]
Goal (issue 22): the report for 1,000,000 audit events in under 10 s.

The store is built the fast way, with a valid chain: events are hashed with the chain's own
`make_event` and inserted in one transaction with executemany (the writer's per-commit
path would take minutes for a million events and measure nothing of the report), then the
head is sealed so the report's chain verification checks a real checkpoint. The activity
is one month of a busy site: each elevation is a TOTP check, the grant, its push, a
session open and close, its recording (and digest event), its expiry, plus a directory
sync; every 50th is a refused elevation, every 100th a node refusal of a job launch. The
grants, grant nodes, hook events and recordings tables get the matching rows.
Prints the median time of the report (verification included) and of the verification
alone, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from benchapp import make_app

from broker.app import App
from broker.audit.chain import GENESIS_HASH, make_event
from broker.audit.query import verify_store
from broker.core.timeutil import to_text, utcnow

PER_ELEVATION = 8  # audit events each elevation makes here (see the module doc)


def _elevation(
    i: int, at: datetime
) -> tuple[list[tuple[str, str, str, str, dict[str, object]]], dict[str, object]]:
    user, node, gid = f"user{i % 300:03d}", f"cn{i % 512:03d}", f"g{i:07d}"
    sha = f"{i:064x}"
    events = [
        (f"unix:{user}", "mfa.verify", user, "ok", {"purpose": "elevate"}),
        (f"unix:{user}", "grant.issue", gid, "ok", {"user": user, "nodes": node, "request": None}),
        ("broker", "grant.push", gid, "ok", {"node": node}),
        (f"node:{node}", "session.open", gid, "ok", {"user": user}),
        (f"node:{node}", "session.close", gid, "ok", {"user": user}),
        (f"node:{node}", "session.recorded", f"r{i:07d}", "ok", {"sha256": sha, "grant": gid}),
        ("broker", "grant.expire", gid, "ok", {"user": user}),
        ("broker", "directory.sync", "dc:ldaps://dc1", "ok", {"changes": 0}),
    ]
    if i % 50 == 0:
        events[7] = (f"unix:{user}", "grant.refused", node, "refused", {"reason": "no role"})
    if i % 100 == 0:
        events[7] = (f"node:{node}", "session.deny", "-", "refused", {"reason": "workloads"})
    row = {"user": user, "node": node, "gid": gid, "sha": sha, "at": at}
    return events, row


def build(app: App, count: int, start: datetime) -> None:
    """`count` events over the 30 days after `start`, and the rows they describe."""
    elevations = count // PER_ELEVATION
    step = timedelta(days=30) / max(elevations, 1)
    store = app.ready_store()
    seq, prev = store.conn.execute(
        "SELECT coalesce(max(seq), 0), coalesce((SELECT hash FROM audit_events ORDER BY seq"
        " DESC LIMIT 1), ?) FROM audit_events",
        (GENESIS_HASH,),
    ).fetchone()
    with store.transaction() as conn:
        chain, grants, nodes, hooks, recs = [], [], [], [], []
        for i in range(elevations):
            at = start + i * step
            ts = to_text(at)
            events, r = _elevation(i, at)
            for actor, action, target, outcome, details in events:
                seq += 1
                e = make_event(seq=seq, ts=ts, actor=actor, action=action, target=target,
                               outcome=outcome, details=details, prev_hash=prev)  # fmt: skip
                prev = e.hash
                chain.append((e.seq, e.ts, e.actor, e.action, e.target, e.outcome, e.details,
                              e.prev_hash, e.hash))  # fmt: skip
            end = to_text(at + timedelta(hours=1))
            grants.append((r["gid"], r["user"], f"S-{r['user']}", r["node"], ts, end, ts,
                           f"unix:{r['user']}", end))  # fmt: skip
            nodes.append((r["gid"], r["node"]))
            hooks += [(r["node"], f"o{i}", "open", r["gid"], r["user"], i, ts, ts),
                      (r["node"], f"c{i}", "close", r["gid"], r["user"], i, end, end)]  # fmt: skip
            argv = json.dumps(["apt-get", "install", "-y", "x"] if i % 20 == 0 else ["ls"])
            recs.append((f"r{i:07d}", f"/x/{i}", r["node"], r["user"], argv, ts, r["gid"],
                         r["sha"], ts, ts))  # fmt: skip
        conn.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", chain)
        conn.executemany(
            "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
            " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
            " max_sessions, created_at, created_by, state, ended_at) VALUES (?, ?, ?, 'r',"
            " 'root', 'ALL', '[]', ?, ?, ?, 'bench', '[]', 'x', 0, 0, 1, ?, ?, 'expired', ?)",
            grants,
        )
        conn.executemany(
            "INSERT INTO grant_nodes (grant_id, node, state) VALUES (?, ?, 'removed')", nodes
        )
        conn.executemany(
            "INSERT INTO session_events (node, event_id, kind, grant_id, user, runas, service,"
            " tty, pid, at, received_at) VALUES (?, ?, ?, ?, ?, 'root', 'sudo', '-', ?, ?, ?)",
            hooks,
        )
        conn.executemany(
            "INSERT INTO recordings (id, path, state, node, user, runas, command, argv,"
            " started_at, grant_id, sha256, first_seen, indexed_at) VALUES (?, ?, 'complete',"
            " ?, ?, 'root', '/usr/bin/x', ?, ?, ?, ?, ?, ?)",
            recs,
        )
    app.audit().seal()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp))
        # The month after the broker's init (ts follows seq, as on a real broker); the
        # report is computed as of the month's end.
        start = utcnow()
        now = start + timedelta(days=30, minutes=1)
        t = time.perf_counter()
        build(app, args.events, start)
        total = app.ready_store().conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
        print(f"built {total:,} events in {time.perf_counter() - t:.1f} s")
        report, verify = [], []
        s = app.settings
        for _ in range(args.repeat):
            t = time.perf_counter()
            doc = app.report().controls(
                since=start - timedelta(days=1), until=now, zone=None, actor="unix:bench", now=now
            )
            report.append(time.perf_counter() - t)
            t = time.perf_counter()
            verify_store(app.ready_store().conn, s.signing_key, s.checkpoint_paths)
            verify.append(time.perf_counter() - t)
        assert doc["controls"][0]["status"] in ("ok", "attention")
        r, v = statistics.median(report), statistics.median(verify)
        print(f"controls report over {total:,} events (median of {args.repeat}): {r:.2f} s")
        print(f"  of which the chain verification alone: {v:.2f} s ({v / r:.0%})")
        print(f"  goal < 10 s: {'met' if r < 10 else 'NOT met'}")
        app.close()


if __name__ == "__main__":
    main()
