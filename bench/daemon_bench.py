"""Daemon benchmark: read requests over the Unix socket, alone and from 200 clients at once.

Run:  .venv/bin/python bench/daemon_bench.py [--requests 2000] [--clients 200]
          [--config /var/lib/broker-lab/broker/broker.toml --account alice]
Without --config it initialises a throwaway broker under /tmp and starts its
daemon in this process; with --config it uses the daemon already serving that
configuration (the lab's, with a 1,600-user snapshot) and also times
GET /v1/accounts/ACCOUNT. Goals (issue 5): median read <= 2 ms; 200
concurrent clients without an error. For scale it also times `curl
--unix-socket` (a new process per request, as a shell script would call it).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.client.transport import UnixConnection
from broker.config.loader import load_settings
from broker.daemon.server import running
from tests.helpers import run_broker, write_config


def one(sock: Path, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = UnixConnection(sock, timeout=60)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return response.status, (time.perf_counter() - started) * 1000


def sequential(sock: Path, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        status, ms = one(sock, path)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}")
        times.append(ms)
    return times


def concurrent(sock: Path, path: str, clients: int, per_client: int) -> tuple[int, int, float]:
    ok = failed = 0
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker() -> None:
        nonlocal ok, failed
        start.wait()
        for _ in range(per_client):
            try:
                status, _ = one(sock, path)
            except OSError:
                status = 0
            with lock:
                if status == 200:
                    ok += 1
                else:
                    failed += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, failed, time.perf_counter() - began


def curl_times(sock: Path, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(
            ["curl", "-sf", "--unix-socket", str(sock), f"http://localhost{path}"],
            check=True,
            capture_output=True,
        )
        times.append((time.perf_counter() - started) * 1000)
    return times


@contextlib.contextmanager
def throwaway_daemon() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="broker-bench-", dir="/tmp"))
    try:
        config = write_config(directory)
        if run_broker("init", config=config).returncode != 0:
            raise SystemExit("broker init failed")
        settings = load_settings(config)
        with running(settings):
            yield settings.daemon.socket
    finally:
        shutil.rmtree(directory)


def report(label: str, times: list[float]) -> float:
    median = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[-1]
    print(f"{label:42s} median {median:6.3f} ms   p95 {p95:6.3f} ms   ({len(times)} requests)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--per-client", type=int, default=5)
    parser.add_argument("--config", type=Path, help="use the daemon of this configuration")
    parser.add_argument("--account", default="alice", help="account to read (with --config)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.config is None:
            sock = stack.enter_context(throwaway_daemon())
            paths = ["/v1/whoami", "/v1/db/status"]
        else:
            sock = load_settings(args.config).daemon.socket
            paths = ["/v1/whoami", "/v1/db/status", f"/v1/accounts/{args.account}"]
        sequential(sock, paths[0], 50)  # warm up the workers' store connections
        medians = {p: report(f"GET {p}", sequential(sock, p, args.requests)) for p in paths}
        curl = report("GET /v1/whoami with curl (process each)", curl_times(sock, paths[0], 200))
        ok, failed, elapsed = concurrent(sock, paths[0], args.clients, args.per_client)
        print(
            f"{args.clients} concurrent clients x {args.per_client}: {ok} ok, {failed} failed "
            f"in {elapsed:.2f} s ({ok / elapsed:.0f} requests/s)"
        )
        worst = max(medians.values())
        print(
            f"goal: median read <= 2 ms -> {'met' if worst <= 2.0 else 'MISSED'} "
            f"(worst median {worst:.3f} ms; curl per process {curl:.1f} ms for scale); "
            f"goal: {args.clients} concurrent clients without an error -> "
            f"{'met' if failed == 0 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
