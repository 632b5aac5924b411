"""Policy benchmark: load + validate a large policy, and decide one (user, node).

Run:  .venv/bin/python bench/policy_bench.py [--repeat 5] [--decisions 20000]
The generated policy has 10,000 nodes in 20 zones, 500 roles and 2,000
bindings (issue 4). Prints medians with the goals: deciding one
(user, node) <= 1 ms median after load; loading and validating <= 2 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from broker.core.identity import Account
from broker.policy.evaluate import decide
from broker.policy.lint import lint
from broker.policy.load import load_policy
from broker.policy.model import Policy

ZONES, NODES_PER_ZONE, ROLES, BINDINGS, SETS = 20, 500, 500, 2000, 20
KINDS = ("access", "management", "compute", "storage")


def zone_nodes(zone: int) -> str:
    return f"z{zone:02d}n[001-{NODES_PER_ZONE:03d}]"


def generate(seed: int = 4) -> str:
    """A policy of the benchmark's size, with every feature in use."""
    rng = random.Random(seed)
    out = ["version = 1", 'break_glass_group = "break-glass"', 'incident_response_group = "ir"']
    for z in range(1, ZONES + 1):
        out += [f"[zones.z{z:02d}]", f'kind = "{KINDS[z % 4]}"', f'nodes = "{zone_nodes(z)}"']
    for s in range(1, SETS + 1):
        commands = ", ".join(f'"/usr/bin/tool{s}-{c} --check"' for c in range(5))
        out += [f"[command_sets.set{s:02d}]", f"commands = [{commands}]"]
    for r in range(1, ROLES + 1):
        zones = sorted(rng.sample(range(1, ZONES + 1), rng.randint(1, 3)))
        out += [f"[roles.role{r:03d}]", f"zones = {[f'z{z:02d}' for z in zones]!r}"]
        if r % 5 == 0:
            other = rng.randint(1, ZONES)
            first = rng.randint(1, NODES_PER_ZONE - 20)
            out.append(f'nodes = "z{other:02d}n[{first:03d}-{first + 19:03d}]"')
        if r % 3 == 0:
            out.append('commands = "ALL"')
        else:
            out.append(f'commands = ["set{rng.randint(1, SETS):02d}"]')
        out += ['default_duration = "1h"', f'max_duration = "{rng.randint(1, 8)}h"']
        if r % 4 == 0:
            out.append('approvals = { count = 1, groups = ["approvers"], expires_after = "30m" }')
    for b in range(1, BINDINGS + 1):
        roles = [f"role{r:03d}" for r in rng.sample(range(1, ROLES + 1), rng.randint(1, 3))]
        out += ["[[bindings]]", f'group = "grp{b:04d}"', f"roles = {roles!r}"]
    return "\n".join(out).replace("'", '"') + "\n"


def median_s(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def account(rng: random.Random, groups: int) -> Account:
    names = frozenset(f"grp{rng.randint(1, BINDINGS):04d}" for _ in range(groups))
    return Account(
        "alice", None, "S-1-5-21-1", "CN=alice", 10001, 10000, names, names, "enabled", None, None
    )


def decide_times(policy: Policy, count: int, groups: int) -> list[float]:
    rng = random.Random(7)
    people = [account(rng, groups) for _ in range(50)]
    nodes = sorted(policy.zone_of)
    now = datetime.now(UTC)
    times: list[float] = []
    for i in range(count):
        person, node = people[i % len(people)], rng.choice(nodes)
        started = time.perf_counter()
        decide(policy, person, node, duration=timedelta(hours=1), now=now)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of load+validate")
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions to time")
    parser.add_argument("--groups", type=int, default=30, help="groups each user is in")
    args = parser.parse_args()

    text = generate()
    loaded = load_policy(text, "bench.toml")
    policy = loaded.policy
    assert len(policy.zone_of) == ZONES * NODES_PER_ZONE and len(policy.roles) == ROLES
    assert len(policy.bindings) == BINDINGS
    load_s = median_s(lambda: load_policy(text, "bench.toml"), args.repeat)
    lint_s = median_s(lambda: lint(policy), args.repeat)
    times = decide_times(policy, args.decisions, args.groups)
    held = statistics.mean(
        len(
            {
                r
                for g in account(random.Random(i), args.groups).groups
                for r in policy.roles_of_group.get(g, ())
            }
        )
        for i in range(50)
    )
    median_ms = statistics.median(times) * 1000
    p99_ms = sorted(times)[int(len(times) * 0.99)] * 1000

    print(
        f"policy benchmark: {ZONES * NODES_PER_ZONE:,} nodes in {ZONES} zones, {ROLES} roles, "
        f"{BINDINGS:,} bindings, {len(text) / 1024:.0f} KiB of TOML"
    )
    print(f"{'measure':<34}{'value':>12}  goal")
    print(
        f"{'load + validate (median of ' + str(args.repeat) + ')':<34}{load_s:>10.3f} s  <= 2 s {'met' if load_s <= 2 else 'MISSED'}"
    )
    print(f"{'lint':<34}{lint_s * 1000:>9.1f} ms")
    print(
        f"{'decide one (user, node), median':<34}{median_ms:>9.3f} ms  <= 1 ms "
        f"{'met' if median_ms <= 1 else 'MISSED'}"
    )
    print(f"{'decide, 99th percentile':<34}{p99_ms:>9.3f} ms")
    print(
        f"({args.decisions:,} decisions; each user in {args.groups} groups holding "
        f"{held:.0f} roles on average, all judged and explained per decision)"
    )


if __name__ == "__main__":
    main()
