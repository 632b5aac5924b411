"""The detection benchmark's audit history: who works when and where, the events they
cause, the bursts planted in them that must raise alerts, and the chain they are written to.

Shared by the audit part (bench/detect_audit.py) and the delay part (bench/detect_delay.py,
whose background writer draws from the same population)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.app import App
from broker.audit import writer
from broker.audit.chain import make_event
from broker.config.loader import settings_from_dict
from broker.core.timeutil import to_text

USERS = 2000
NODES = 1024
SPAN = timedelta(days=14)
INSERT_BATCH = 50_000
QUARANTINED = "gpu9999"  # a node under quarantine that only planted sessions touch
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
