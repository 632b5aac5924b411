"""Rotate 50 service accounts, each on 10 lab nodes, as `broker keytab rotate --all` does:
goal <= 20 s median with zero authentication failures meanwhile.

Needs a lab with at least 10 nodes, e.g. (by whoever owns the lab):
    deploy/lab/lab up --nodes 'gpu[01-10],stor01,login01'
then:
    KRB5_CONFIG=/var/lib/broker-lab/krb5.conf .venv/bin/python bench/keytab_bench.py \
        [--accounts 50 --nodes 10 --workers 4 --runs 3]

Works in its own state directory (tests/lab/keytab_lab.py), creates accounts kt-b01...
in OU=Keytab Services (first run only; then their first keytab), then times `--runs`
passes of `rotate_due(every=True)` (what `rotate --all` calls) with `keytabs.rotate_workers
= --workers`, and prints each pass, the median, where the time went (summed over workers:
KDC, AD, node round trips), and the authentication checks made during the passes.

Authentication during the passes: a prober asks the KDC, about five times a second, for a
service ticket of one of the accounts' SPNs (from a ticket cache it keeps for 20 rounds, so
tickets issued under the previous key version are presented too) and has the node accept
it with its keytab (the node program's keytab-verify: GSS-API acceptance as the service
would do it). Every failure is counted and printed; the goal needs none.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gssapi  # noqa: E402
import gssapi.raw  # noqa: E402

from broker.fleet import inventory, nodeprog  # noqa: E402
from broker.fleet.pool import shared_pool  # noqa: E402
from broker.keytabs import nodes as keytab_nodes  # noqa: E402
from broker.keytabs.ad import LdapDirectory  # noqa: E402
from tests.lab import keytab_lab  # noqa: E402

LAB_ZONED = {"gpu01", "gpu02", "stor01", "login01", "mgmt01"}  # zones of the lab policy
GOAL_S = 20.0


def policy(base: str, accounts: int, nodes: list[str]) -> str:
    """The lab policy without its own service accounts (rotate --all would take them too),
    a zone for the extra nodes, and the bench accounts kt-b01... on `nodes`."""
    extra = [n for n in nodes if n not in LAB_ZONED]
    base = re.sub(r"\n\[service_accounts\.[^\]]+\]\n(?:[^\n\[#][^\n]*\n)*", "\n", base)
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


class Phases:
    """Seconds spent in each kind of call, summed over every worker thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.runs: dict[str, int] = {}  # node program runs per command
        self.keytabs: dict[str, int] = {}  # keytabs those runs carried
        self._lock = threading.Lock()

    def wrap(self, name: str, work: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return work(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
                    self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()
            self.runs.clear()
            self.keytabs.clear()


def instrument(service: Any, phases: Phases) -> None:
    """Time the calls a rotation waits on (the service's own references, and the classes)."""
    service._salts = phases.wrap("KDC salt (AS-REQ)", service._salts)
    service._tokens = phases.wrap("KDC tickets for verify", service._tokens)
    service._derive = phases.wrap("key derivation", service._derive)
    LdapDirectory.set_password = phases.wrap("AD password set", LdapDirectory.set_password)  # type: ignore[method-assign]
    LdapDirectory.lookup = phases.wrap("AD lookup (kvno)", LdapDirectory.lookup)  # type: ignore[method-assign]
    nodes_cls = keytab_nodes.KeytabNodes
    nodes_cls.install = phases.wrap("nodes: stage/prune (SFTP)", nodes_cls.install)  # type: ignore[method-assign]
    nodes_cls.call = phases.wrap("nodes: verify", nodes_cls.call)  # type: ignore[method-assign]
    nodes_cls.refresh = phases.wrap("nodes: list", nodes_cls.refresh)  # type: ignore[method-assign]
    counted = nodeprog.call

    def call(pool: Any, target: Any, command: str, payload: Any = None, **kwargs: Any) -> Any:
        """Count node program runs (the prober's excepted) and the keytabs they carried."""
        if threading.current_thread().name != "bench-prober":
            many = len(payload.get("keytabs", [None])) if isinstance(payload, dict) else 1
            with phases._lock:
                phases.runs[command] = phases.runs.get(command, 0) + 1
                phases.keytabs[command] = phases.keytabs.get(command, 0) + many
        return counted(pool, target, command, payload, **kwargs)

    nodeprog.call = call


class Prober:
    """Service tickets for the accounts' SPNs, accepted (or not) by the nodes' keytabs."""

    def __init__(self, app: Any, principal: str, keytab: str, accounts: int, nodes: list[str]):
        self._pool = shared_pool(app.settings)  # the rotation's own pool
        self._targets = inventory.targets(app.ready_store(), nodes)
        self._principal, self._keytab = principal, keytab
        self._accounts, self._realm = accounts, principal.partition("@")[2]
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()

    def _creds(self) -> gssapi.Credentials:
        return gssapi.Credentials(
            name=gssapi.Name(self._principal, gssapi.NameType.kerberos_principal),
            usage="initiate",
            store={"client_keytab": self._keytab, "ccache": f"MEMORY:b-{secrets.token_hex(4)}"},
        )

    def _one(self, creds: gssapi.Credentials, account: int, target: Any) -> None:
        spn = f"svc{account:02d}/{target.name}.hpc.test@{self._realm}"
        try:
            ctx = gssapi.SecurityContext(
                name=gssapi.Name(spn, gssapi.NameType.kerberos_principal),
                creds=creds,
                usage="initiate",
                mech=gssapi.MechType.kerberos,
            )
            token = base64.b64encode(ctx.step() or b"").decode()
        except gssapi.raw.GSSError as exc:
            self.failures.append(f"{spn}: no ticket: {exc}")
            return
        payload = {
            "path": f"/etc/broker/kt-b{account:02d}.keytab",
            "tokens": [{"principal": spn, "token": token}],
        }
        reply = nodeprog.call(self._pool, target, "keytab-verify", payload, timeout=30)
        results = (reply.data or {}).get("results") or [{}]
        if reply.ok and results[0].get("ok"):
            self.ok += 1
        else:
            self.failures.append(f"{spn}: {reply.error or results[0].get('error')}")

    def _loop(self) -> None:
        round_ = 0
        creds = self._creds()
        while not self._stop.is_set():
            round_ += 1
            if round_ % 20 == 0:  # now and then a client without cached tickets
                creds = self._creds()
            account = 1 + round_ % self._accounts
            self._one(creds, account, self._targets[round_ % len(self._targets)])
            self._stop.wait(0.2)  # paced: the probes must not be what loads the machine

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._loop, name="bench-prober", daemon=True)
        self._stop.clear()
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=60)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot (/proc/stat), to tell how loaded the
    machine was during a run: the lab (DC, KDC, sshd, node programs) runs on it too."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def setup(args: argparse.Namespace) -> tuple[Any, list[str], dict[str, Any]]:
    lab = json.loads((Path(args.root) / "lab.json").read_text())
    os.environ.setdefault("KRB5_CONFIG", lab["krb5_conf"])
    nodes = lab["nodes"][: args.nodes]
    if len(nodes) < args.nodes:
        sys.exit(f"the lab has {len(lab['nodes'])} nodes; bring one up with {args.nodes} or more")
    names = [n["name"] for n in nodes]
    keytab_lab.prepare_ad(lab)
    state = Path(tempfile.mkdtemp(prefix="keytab-bench-")) / "state"
    base = (REPO / "deploy" / "lab" / "policy.toml").read_text()
    app = keytab_lab.private_app(
        lab,
        state,
        policy(base, args.accounts, names),
        nodes,
        keytabs=f"rotate_workers = {args.workers}\n",
    )
    keytab_lab.install_node_side(app, names)
    return app, names, lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4, help="keytabs.rotate_workers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", default="/var/lib/broker-lab")
    args = parser.parse_args()
    app, names, lab = setup(args)
    service = app.keytabs()
    started = time.monotonic()
    # The first keytab of every account (in parallel, as rotate --all); an account AD does
    # not have yet (the first bench on this lab) is created there, one by one.
    first = service.rotate_due(actor="bench", every=True)
    missing = [r.name for r in first if "AD has no account" in r.message]
    created = [service.create(name, actor="bench", create_account=True) for name in missing]
    made = sum(r.outcome == "rotated" for r in first) + len(created)
    print(f"first keytabs ({len(missing)} accounts made in AD): "
          f"{time.monotonic() - started:.1f} s, {made} of {args.accounts}")  # fmt: skip
    phases = Phases()
    instrument(service, phases)
    prober = Prober(app, lab["broker"]["principal"], lab["broker"]["keytab"], args.accounts, names)
    times: list[float] = []
    for run in range(1, args.runs + 1):
        phases.reset()
        with prober.running():
            began, cpu, busy = time.monotonic(), time.process_time(), machine_busy()
            reports = service.rotate_due(actor="bench", every=True)
            times.append(time.monotonic() - began)
            cpu, after = time.process_time() - cpu, machine_busy()
        bad = [(r.name, r.outcome, r.message) for r in reports if r.outcome != "rotated"]
        print(f"run {run}: {args.accounts} accounts x {args.nodes} nodes, "
              f"{args.workers} workers: {times[-1]:.1f} s, {len(reports) - len(bad)} rotated"
              + (f", not rotated: {bad[:3]}" if bad else ""))  # fmt: skip
        share = (after[0] - busy[0]) / max(1.0, after[1] - busy[1]) * 100
        print(f"    broker process CPU {cpu:.1f} s ({cpu / times[-1] * 100:.0f}% of one core); "
              f"machine CPUs {share:.0f}% busy; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")  # fmt: skip
        for name, seconds in sorted(phases.seconds.items(), key=lambda kv: -kv[1]):
            print(f"    {name:28s} {seconds:6.1f} s in {phases.calls[name]} calls")
        runs = ", ".join(
            f"{c} {n} ({phases.keytabs[c]} keytabs)" for c, n in sorted(phases.runs.items())
        )
        print(f"    node program runs: {runs}")  # fmt: skip
    median = statistics.median(times)
    met = median <= GOAL_S and not prober.failures
    print(f"median {median:.1f} s over {len(times)} runs ({', '.join(f'{t:.1f}' for t in times)});"
          f" {median / args.accounts * 1000:.0f} ms per account; goal {GOAL_S:.0f} s: "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    print(f"authentication during the runs: {prober.ok} tickets accepted, "
          f"{len(prober.failures)} failures" + (f": {prober.failures[:3]}" if prober.failures else ""))  # fmt: skip
    app.close()


if __name__ == "__main__":
    main()
