"""CLI start-up benchmark: `broker --version`, Tab completion and `broker whoami`.

Run:  .venv/bin/python bench/cli_bench.py [--runs 21]
It initialises a throwaway broker under /tmp, starts its daemon (`broker serve`, its
own process, so `whoami` is a real round trip over the Unix socket) and times each command as a new
process, as a shell runs it, against `python3 -c pass` (the first python3 on PATH)
and `<the broker's interpreter> -c pass`, measured in the same run. Goals (issue 21
part 7): median `--version` and completion <= 0.15 s, `whoami` <= 0.3 s. Exit 1
when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import BROKER, run_broker, serving, write_config

GOALS = {"--version": 0.15, "complete `broker <TAB>`": 0.15, "whoami": 0.3}


def median_s(argv: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of `argv` as a new process; every run must succeed."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr!r}")
    return statistics.median(times)


def cases(config: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """What to time: each command line and the environment it runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "_BROKER"))}
    env["BROKER_CONFIG"] = str(config)
    complete = {**env, "_BROKER_COMPLETE": "complete_bash", "COMP_CWORD": "1"}
    python3 = shutil.which("python3") or "python3"
    return {
        f"python3 -c pass ({python3})": ([python3, "-c", "pass"], env),
        "interpreter -c pass": ([sys.executable, "-c", "pass"], env),
        "--version": ([BROKER, "--version"], env),
        "complete `broker <TAB>`": ([BROKER], {**complete, "COMP_WORDS": "broker "}),
        "complete `broker grants <TAB>`": (
            [BROKER],
            {**complete, "COMP_WORDS": "broker grants ", "COMP_CWORD": "2"},
        ),
        "whoami": ([BROKER, "whoami"], env),
    }


def report(results: dict[str, float]) -> bool:
    """Print medians and ratios to both baselines; True when every goal is met."""
    names = list(results)
    python3, interpreter = results[names[0]], results[names[1]]
    print(f"{'command':<44} {'median s':>9} {'x python3':>10} {'x interp':>9}  goal")
    ok = True
    for name, value in results.items():
        goal = GOALS.get(name)
        verdict = "" if goal is None else ("ok" if value <= goal else "MISSED") + f" <= {goal}"
        ok = ok and (goal is None or value <= goal)
        print(
            f"{name:<44} {value:>9.3f} {value / python3:>10.2f} "
            f"{value / interpreter:>9.2f}  {verdict}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="broker-cli-bench-"))
    try:
        config = write_config(directory)
        if run_broker("init", config=config).returncode != 0:
            raise SystemExit("broker init failed")
        with serving(config):
            results = {
                name: median_s(argv, env, args.runs) for name, (argv, env) in cases(config).items()
            }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"runs per command: {args.runs}; host load: {os.getloadavg()[0]:.2f}")
    sys.exit(0 if report(results) else 1)


if __name__ == "__main__":
    main()
