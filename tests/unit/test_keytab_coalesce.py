"""Calls for one node and command made while one is running share the next node program
run (broker/keytabs/coalesce.py); each caller still gets its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.fleet.ssh import NodeTarget
from broker.keytabs import coalesce

GPU01, GPU02 = NodeTarget("gpu01", "127.0.1.1", 22), NodeTarget("gpu02", "127.0.1.2", 22)


class Node:
    """A node program that takes a while: records every run's items, answers each."""

    def __init__(self, delay: float = 0.2) -> None:
        self.runs: list[tuple[str, list[int]]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def send(self, target: NodeTarget, items: Sequence[dict[str, Any]]) -> list[str]:
        with self.lock:
            self.runs.append((target.name, [i["n"] for i in items]))
        time.sleep(self.delay)
        return [f"{target.name}:{i['n']}" for i in items]


def test_an_uncontended_call_runs_at_once_and_alone() -> None:
    node, grouped = Node(delay=0.0), coalesce.Coalescer()
    assert grouped.call(GPU01, "keytab-install", {"n": 1}, node.send) == "gpu01:1"
    assert grouped.call(GPU01, "keytab-install", {"n": 2}, node.send) == "gpu01:2"
    assert node.runs == [("gpu01", [1]), ("gpu01", [2])]


def test_calls_made_during_a_run_share_the_next_and_get_their_own_answers() -> None:
    node, grouped = Node(), coalesce.Coalescer()
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(grouped.call, GPU01, "keytab-install", {"n": 0}, node.send)
        time.sleep(0.05)  # the first run is going: these queue behind it
        rest = [
            pool.submit(grouped.call, GPU01, "keytab-install", {"n": n}, node.send)
            for n in range(1, 6)
        ]
        other = pool.submit(grouped.call, GPU02, "keytab-install", {"n": 9}, node.send)
        verify = pool.submit(grouped.call, GPU01, "keytab-verify", {"n": 7}, node.send)
        answers = [first.result(), *(f.result() for f in rest)]
    assert answers == [f"gpu01:{n}" for n in range(6)]
    assert other.result() == "gpu02:9" and verify.result() == "gpu01:7"
    gpu01_installs = [items for name, items in node.runs if name == "gpu01" and 7 not in items]
    assert gpu01_installs == [[0], [1, 2, 3, 4, 5]]  # two runs for six keytabs
    assert ("gpu02", [9]) in node.runs and ("gpu01", [7]) in node.runs  # never mixed


def test_a_run_that_fails_fails_every_caller_in_it_and_the_next_runs_anyway() -> None:
    grouped, started = coalesce.Coalescer(), threading.Event()
    calls: list[list[int]] = []

    def send(target: NodeTarget, items: Sequence[dict[str, Any]]) -> list[str]:
        calls.append([i["n"] for i in items])
        started.set()
        time.sleep(0.2)
        if 1 in [i["n"] for i in items]:
            raise TimeoutError("gpu01 did not answer")
        return ["ok"] * len(items)

    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(grouped.call, GPU01, "keytab-install", {"n": 0}, send)
        started.wait()
        failing = [
            pool.submit(grouped.call, GPU01, "keytab-install", {"n": n}, send) for n in (1, 2)
        ]
        assert first.result() == "ok"
        for future in failing:
            with pytest.raises(TimeoutError):
                future.result()
    assert calls == [[0], [1, 2]]
    assert grouped.call(GPU01, "keytab-install", {"n": 3}, send) == "ok"  # the lane is free


def test_a_run_carries_at_most_max_batch_keytabs() -> None:
    node, grouped = Node(delay=0.1), coalesce.Coalescer()
    count = coalesce.MAX_BATCH + 5
    with ThreadPoolExecutor(max_workers=count + 1) as pool:
        first = pool.submit(grouped.call, GPU01, "keytab-install", {"n": -1}, node.send)
        time.sleep(0.03)
        futures = [
            pool.submit(grouped.call, GPU01, "keytab-install", {"n": n}, node.send)
            for n in range(count)
        ]
        assert [f.result() for f in futures] == [f"gpu01:{n}" for n in range(count)]
        assert first.result() == "gpu01:-1"
    assert max(len(items) for _name, items in node.runs) == coalesce.MAX_BATCH
    assert sum(len(items) for _name, items in node.runs) == count + 1


def test_a_run_stays_under_the_node_programs_input_limit() -> None:
    node, grouped = Node(delay=0.1), coalesce.Coalescer()
    big = "k" * (400 * 1024)  # three of these would pass 1 MiB in one run
    huge = "k" * (1024 * 1024)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(grouped.call, GPU01, "keytab-install", {"n": -1}, node.send)
        time.sleep(0.03)
        futures = []
        for n, pad in enumerate((big, big, big, huge, "")):
            futures.append(
                pool.submit(grouped.call, GPU01, "keytab-install", {"n": n, "pad": pad}, node.send)
            )
            time.sleep(0.01)  # queued in this order
        assert [f.result() for f in futures] == [f"gpu01:{n}" for n in range(5)]
        assert first.result() == "gpu01:-1"
    assert [items for _name, items in node.runs] == [[-1], [0, 1], [2], [3], [4]]


def test_a_calls_keys_never_appear_in_its_repr() -> None:
    key = "c2VjcmV0IGtleSBieXRlcyBoZXJlIQ=="
    call = coalesce._Call({"add": [{"key": key}]})
    call.answer = {"add": [{"key": key}]}
    assert key not in repr(call) and key not in str(call)
