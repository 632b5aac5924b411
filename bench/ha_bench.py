"""Issue 24 "throughput does not fall": the audit chain's append rate through the service
API (`store.transaction()` + `writer.record`, what every acknowledged request commits) on
SQLite and on PostgreSQL, side by side, with the ratio.

Run (as root: the PostgreSQL cluster is the HA lab's own kind, `deploy/lab/lab.py`'s
start_postgres, under a fresh temporary directory, fsync on, no TCP):
    .venv/bin/python bench/ha_bench.py [--single 1000] [--batched 20000] [--repeat 3]

Rounds alternate the engines (SQLite, PostgreSQL, SQLite, ...) so both see the same load;
each figure is the median of --repeat rounds. Both stores run with their durable settings:
SQLite WAL with synchronous FULL, PostgreSQL synchronous_commit on with fsync on.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.app import App
from broker.audit import writer
from broker.config.loader import settings_from_dict

REPO = Path(__file__).resolve().parent.parent
BATCH = 1000


def lab_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_lab", REPO / "deploy/lab/lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_app(state: Path, url: str | None) -> App:
    """A broker initialised like `broker init`, its store SQLite (url None) or PostgreSQL."""
    raw: dict[str, object] = {
        "broker": {"state_dir": str(state), "service_user": "root"},
        "audit": {"syslog": False},
    }
    if url:
        raw["store"] = {"url": url}
    app = App(settings_from_dict(raw, source="bench"))
    app.setup().init("unix:bench")
    return app


def event(i: int) -> writer.EventInput:
    return writer.EventInput(
        "user:alice", "grant.issue", f"gpu{i % 512:03d}", details={"grant": f"g-{i}", "minutes": 30}
    )


def rate(n: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def single(app: App, n: int) -> float:
    """One event per write transaction, committed durably: a request's own audit append."""
    store = app.ready_store()

    def run() -> None:
        for i in range(n):
            with store.transaction() as conn:
                writer.record(conn, event(i))

    return rate(n, run)


def batched(app: App, n: int) -> float:
    store = app.ready_store()

    def run() -> None:
        for start in range(0, n, BATCH):
            with store.transaction() as conn:
                writer.record_many(conn, [event(i) for i in range(start, min(n, start + BATCH))])

    return rate(n, run)


def verify(app: App) -> float:
    holder: list[int] = []

    def run() -> None:
        report = app.audit().verify()
        assert report.ok, report.problem
        holder.append(report.count)

    started = time.perf_counter()
    run()
    return holder[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", type=int, default=1000, help="single-event transactions")
    parser.add_argument("--batched", type=int, default=20_000, help="events in batches of 1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lab = lab_module()
    tmp = Path(tempfile.mkdtemp(prefix="broker-ha-bench-"))
    tmp.chmod(0o755)
    results: dict[str, dict[str, list[float]]] = {"sqlite": {}, "postgresql": {}}
    try:
        url = lab.start_postgres(tmp)["url"]
        apps = {
            "sqlite": make_app(tmp / "sqlite", None),
            "postgresql": make_app(tmp / "pg-state", url),
        }
        for _ in range(args.repeat):
            for engine, app in apps.items():
                got = results[engine]
                got.setdefault("single", []).append(single(app, args.single))
                got.setdefault("batched", []).append(batched(app, args.batched))
                got.setdefault("verify", []).append(verify(app))
        for app in apps.values():
            app.close()
    finally:
        lab.stop_postgres(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"audit appends through the service API, events/s, median of {args.repeat}")
    print(f"{'measure':<9} {'SQLite':>12} {'PostgreSQL':>12} {'PG/SQLite':>10}")
    for name in ("single", "batched", "verify"):
        lite = statistics.median(results["sqlite"][name])
        pg = statistics.median(results["postgresql"][name])
        print(f"{name:<9} {lite:>12,.0f} {pg:>12,.0f} {pg / lite:>10.2f}")


if __name__ == "__main__":
    main()
