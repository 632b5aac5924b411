"""Rotate 50 service accounts, each on 10 lab nodes: goal <= 60 s.

Needs a lab with at least 10 nodes, e.g. (by whoever owns the lab):
    deploy/lab/lab up --nodes 'gpu[01-10],stor01,login01'
then:
    KRB5_CONFIG=/var/lib/broker-lab/krb5.conf .venv/bin/python bench/keytab_bench.py [--accounts 50 --nodes 10]

Works in its own state directory (tests/lab/keytab_lab.py), creates accounts kt-b01...
in OU=Keytab Services (first run only), then times one `rotate --all` pass and prints the
figures: total, per account, and the node round trips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.lab import keytab_lab  # noqa: E402

LAB_ZONED = {"gpu01", "gpu02", "stor01", "login01", "mgmt01"}  # zones of the lab policy


def policy(base: str, accounts: int, nodes: list[str]) -> str:
    extra = [n for n in nodes if n not in LAB_ZONED]
    text = base + (
        f'\n[zones.bench]\nkind = "compute"\nnodes = "{",".join(extra)}"\n' if extra else ""
    )
    for i in range(1, accounts + 1):
        name = f"kt-b{i:02d}"
        spns = ", ".join(f'"svc{i:02d}/{n}.hpc.test"' for n in nodes)
        text += (
            f'\n[service_accounts.{name}]\nprincipals = [{spns}]\nnodes = "{",".join(nodes)}"\n'
            f'keytab = "/etc/broker/{name}.keytab"\nmode = "0600"\nrotate_every = "1h"\n'
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--root", default="/var/lib/broker-lab")
    args = parser.parse_args()
    lab = json.loads((Path(args.root) / "lab.json").read_text())
    os.environ.setdefault("KRB5_CONFIG", lab["krb5_conf"])
    nodes = lab["nodes"][: args.nodes]
    if len(nodes) < args.nodes:
        sys.exit(f"the lab has {len(lab['nodes'])} nodes; bring one up with {args.nodes} or more")
    names = [n["name"] for n in nodes]
    keytab_lab.prepare_ad(lab)
    state = Path(tempfile.mkdtemp(prefix="keytab-bench-")) / "state"
    base = (REPO / "deploy" / "lab" / "policy.toml").read_text()
    app = keytab_lab.private_app(lab, state, policy(base, args.accounts, names), nodes)
    keytab_lab.install_node_side(app, names)
    service = app.keytabs()
    started = time.monotonic()
    for i in range(1, args.accounts + 1):
        service.create(f"kt-b{i:02d}", actor="bench", create_account=True)
    created = time.monotonic() - started
    started = time.monotonic()
    reports = [service.rotate(f"kt-b{i:02d}", actor="bench") for i in range(1, args.accounts + 1)]
    elapsed = time.monotonic() - started
    failed = [r for r in reports if r.outcome != "rotated"]
    print(f"create (first rotation, accounts made in AD): {created:.1f} s")
    print(
        f"rotate {args.accounts} accounts x {args.nodes} nodes: {elapsed:.1f} s "
        f"({elapsed / args.accounts * 1000:.0f} ms per account; goal 60 s: "
        f"{'met' if elapsed <= 60 and not failed else 'NOT met'})"
    )
    if failed:
        print(f"failed: {[(r.name, r.message) for r in failed][:5]}")
    app.close()


if __name__ == "__main__":
    main()
