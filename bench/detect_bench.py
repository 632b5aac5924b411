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
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.detect_audit import GOAL_AUDIT_EVS, bench_audit
from bench.detect_data import pct
from bench.detect_delay import GOAL_DELAY_S, bench_delay
from bench.detect_sessions import GOAL_SESSION_MBS, RE_SAMPLE, bench_sessions


def arguments() -> argparse.Namespace:
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
    return parser.parse_args()


def print_audit(audit: dict[str, Any]) -> bool:
    """The audit row of the summary; True when a planted burst raised no alert."""
    name = f"audit events -> rules ({audit['events']:,})"
    print(
        f"{name:<40} {audit['rate']:>9,.0f} ev/s   {'plain read + json.loads':<26}"
        f" {audit['floor']:>7,.0f} ev/s {audit['rate'] / audit['floor']:>14.2f}"
    )
    verdict = "met" if audit["rate"] >= GOAL_AUDIT_EVS else "MISSED"
    print(f"{'':<40} goal >= {GOAL_AUDIT_EVS:,.0f} ev/s {verdict}")
    return bool(audit["missing"])


def print_sessions(sessions: dict[str, Any]) -> bool:
    """The session rows of the summary; True when a planted match was missed or extra."""
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
    verdict = "met" if sessions["rate"] >= GOAL_SESSION_MBS else "MISSED"
    print(f"{'':<40} goal >= {GOAL_SESSION_MBS:g} MB/s {verdict}")
    return bool(sessions["missing"])


def print_delay(delay: dict[str, Any]) -> bool:
    """The delay rows of the summary; True when a trigger never raised its alert."""
    names = {
        "audit": "5th wrong MFA code -> alert",
        "running": "scp typed in a running session -> alert",
        "new": "new session's first line -> alert",
    }
    failed = False
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
    return failed


def main() -> None:
    args = arguments()
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
        failed |= print_audit(audit)
    if sessions is not None:
        failed |= print_sessions(sessions)
    if delay is not None:
        failed |= print_delay(delay)
    if failed:
        sys.exit("some planted finding was not raised (see above)")


if __name__ == "__main__":
    main()
