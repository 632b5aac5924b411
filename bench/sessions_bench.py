"""Session recording benchmarks (issue 7).

    .venv/bin/python bench/sessions_bench.py ingest [--sessions 40] [--mb 10] [--runs 3]
    .venv/bin/python bench/sessions_bench.py latency [--rounds 10]     # lab up, as root

1. ingest: index a store of finished recordings as sudo_logsrvd writes them (log.json,
   timing, ttyout/ttyin), each SESSIONS x MB of output, into a fresh store: MB/s of
   recorded data (goal >= 50 MB/s). The time covers parsing, the size checks, the SHA-256
   of every file and the row + audit event per recording. The OS page cache is warm (the
   files were just written), as it is for recordings that just ended.
2. latency: in the lab, a user with a grant runs `sudo -n sh -c 'echo ...'` on gpu01 over
   SSH; the time from the command's end to `broker sessions list` showing it complete
   (goal: median <= 10 s). The lab daemon indexes every second.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.app import App
from broker.config.settings import Settings
from broker.sessions.index import Indexer


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


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--sessions", type=int, default=40)
    i.add_argument("--mb", type=int, default=10)
    i.add_argument("--runs", type=int, default=3)
    la = sub.add_parser("latency")
    la.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.umask(0o077)
    ingest(args) if args.what == "ingest" else latency(args)


if __name__ == "__main__":
    main()
