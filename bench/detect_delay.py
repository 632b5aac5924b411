"""The detection benchmark's delay part: the daemon's pacing (detector, indexer, background
writer, optionally a busy session), and the time from a trigger to its alert row
(bench/detect_bench.py)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.detect_data import Population, fresh_app, make_settings, node
from bench.detect_sessions import EXFIL_LINE, log_json, output_blocks
from broker.app import App
from broker.audit import writer
from broker.core.timeutil import to_text, utcnow
from broker.daemon.scheduler import DETECT_EVERY_S
from broker.detect.runner import BATCH
from broker.sessions import iolog

GOAL_DELAY_S = 2.0


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
        self.writer: multiprocessing.process.BaseProcess | None = None
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


def trigger(
    kind: str, i: int, store: Any, sessions: list[Path], live: Path, staging: Path, new_n: int
) -> tuple[float, str, tuple[Any, ...]]:
    """Cause one finding of `kind`: 5 wrong MFA codes for a fresh user (5 transactions), an
    `scp` line appended to a running recording, or a new recording whose first input is
    one. Returns when it was written and the query that sees its alert."""
    if kind == "audit":
        user = f"d-mfa-{i}"
        for _ in range(5):
            with store.transaction() as conn:
                now = utcnow()
                writer.record(conn, writer.EventInput(
                    f"unix:{user}", "mfa.verify", user, "refused",
                    {"sid": "S-1-5-21-7", "purpose": "elevate", "reason": "wrong code"},
                ), now)  # fmt: skip
        return (
            time.monotonic(),
            "SELECT 1 FROM alerts WHERE rule = 'mfa-failures' AND user = ?",
            (user,),
        )
    sql = "SELECT 1 FROM alerts WHERE rule = 'exfiltration' AND recording_id = ?"
    if kind == "running":
        path = sessions.pop()
        line = EXFIL_LINE % i
        with open(path / "ttyin", "ab") as f:
            f.write(line)
        with open(path / "timing", "a") as f:
            f.write(f"3 0.800000 {len(line)}\n")
        return time.monotonic(), sql, (path.relative_to(live).as_posix().replace("/", ""),)
    running_recording(live, new_n, staging, EXFIL_LINE % i)
    return time.monotonic(), sql, (f"{new_n:06d}",)


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
            if kind == "new":
                new_n += 1
            written, sql, params = trigger(kind, i, store, sessions, live, staging, new_n)
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
