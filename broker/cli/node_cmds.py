"""`broker node`: the inventory, host-key enrollment, bootstrap, status and ping.

Exit codes: 0 ok, 1 refused or some node failed, 2 usage, 3 a node was
unreachable or the daemon is down.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.cli.grant_cmds import CODE_LABEL
from broker.cli.mfa_cmds import _prompt
from broker.client.client import Client
from broker.core.errors import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    BrokerError,
    RefusedError,
    UsageError,
)
from broker.core.hostlist import expand, fold
from broker.wire.alerts import MarkOut, QuarantinedOut, QuarantineOut
from broker.wire.nodes import BootstrapOut, EnrollOut, NodeOut, ProbeOut, RemovedOut, StatusOut

app = typer.Typer(help="Cluster nodes.", no_args_is_help=True)

MAX_SKEW_S = 60.0
BOOTSTRAP_CHUNK = 16  # nodes per bootstrap request: progress moves as each returns
BOOTSTRAP_REQUESTS = 4  # requests in flight (the daemon's per-user cap is workers / 4)


def _node(api: Client, name: str) -> NodeOut:
    for record in api.get_list("/v1/nodes", NodeOut):
        if record.name == name:
            return record
    raise RefusedError(
        f"node {name} is not in the inventory",
        fix=f"add it with `broker node add {name} --address HOST`",
    )


# ---------------------------------------------------------------- inventory


@app.command()
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name as grants and hostlists use it (gpu01)."),
    address: str = typer.Option(
        ..., "--address", help="HOST, HOST:PORT, an IP address or [IPV6]:PORT."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Add a node to the inventory. Pin its host key next with `broker node enroll`."""
    from broker.fleet.inventory import split_host_port  # lazy: CLI start-up (store, audit)

    host, port = split_host_port(address, None)
    body: dict[str, Any] = {"name": name, "address": host}
    if port is not None:
        body["port"] = port
    record = client(ctx).post("/v1/nodes", body, NodeOut)
    if json_out:
        output.print_json(record)
        return
    output.say(f"added {record.name} ({record.address} port {record.port})")
    output.say(f"next: broker node enroll {record.name}")


@app.command("list")
def list_nodes(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """The inventory: address, pinned key, bootstrap, what the last status saw."""
    records = client(ctx).get_list("/v1/nodes", NodeOut)
    if json_out:
        output.print_json(records)
        return
    output.table(
        None,
        ["node", "address", "port", "host key", "bootstrapped", "sudo", "I/O log", "skew (s)",
         "last seen", "problem"],
        [
            [
                r.name,
                r.address,
                r.port,
                r.fingerprint or "not pinned",
                (r.bootstrapped_at or "no")[:19],
                " ".join(x for x in (r.sudo_flavour, r.sudo_version) if x),
                _yes_no(r.io_logging),
                "" if r.last_skew_s is None else f"{r.last_skew_s:+.2f}",
                (r.last_seen_at or "")[:19],
                r.problem or "",
            ]
            for r in records
        ],
    )  # fmt: skip


@app.command()
def remove(ctx: typer.Context, name: str = typer.Argument(..., help="The node to forget.")) -> None:
    """Remove a node and its pinned host key, and revoke its recording tunnel certificates
    (refused while a grant may be on it)."""
    record = client(ctx).post("/v1/nodes/remove", {"name": name}, RemovedOut)
    output.say(f"removed {record.name} ({record.address} port {record.port})")
    for serial in record.revoked_serials:
        output.say(f"revoked its tunnel certificate, serial {serial} (on the session CA's CRL)")
    if not record.revoked_serials:
        # Review finding: a node last bootstrapped before serials were kept has a valid
        # certificate the broker cannot name; removing it revoked nothing, silently.
        output.warn(
            f"no tunnel certificate of {record.name} is on record, so none was revoked: if it"
            " was bootstrapped before this broker kept serials, its certificate stays valid"
            " until it expires (see docs/sessions.md, 'Revoking a node's certificate')"
        )


@app.command()
def enroll(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The node whose host key to pin."),
    fingerprint: str | None = typer.Option(
        None,
        "--fingerprint",
        help="The key's SHA256 fingerprint as `ssh-keygen -lf` prints it on the node.",
    ),
    known_hosts: Path | None = typer.Option(
        None,
        "--known-hosts",
        help="A known_hosts file you trust that lists the node (by name, address or "
        "\\[address]:port).",
        dir_okay=False,
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Replace a different key pinned before (a reinstalled node)."
    ),
    yes: bool = typer.Option(
        False,
        "--yes",
        "-y",
        help="Pin the key the node presents without asking (trust on "
        "first use; prefer --fingerprint).",
    ),
) -> None:
    """Pin a node's SSH host key.

    The broker fetches the key without trusting it and pins it when it matches
    --fingerprint or --known-hosts, or when you confirm it.
    """
    api = client(ctx)
    expected = _expected_keys(api, name, fingerprint, known_hosts)
    body: dict[str, Any] = {"name": name, "replace": replace}
    if expected:
        body |= {"expected": expected, "confirm": True}
        _say_enrolled(api.post("/v1/nodes/enroll", body, EnrollOut))
        return
    seen = api.post("/v1/nodes/enroll", {**body, "confirm": False}, EnrollOut)
    if seen.pinned:
        _say_enrolled(seen)
        return
    _confirm_presented(seen, yes)
    accepted = [{"fingerprint": seen.fingerprint, "key_type": seen.key_type}]
    body |= {"expected": accepted, "confirm": True}
    _say_enrolled(api.post("/v1/nodes/enroll", body, EnrollOut))


def _expected_keys(
    api: Client, name: str, fingerprint: str | None, known_hosts: Path | None
) -> list[dict[str, str | None]]:
    """The keys the caller vouches for (--fingerprint or --known-hosts); none: ask."""
    from broker.fleet import hostkeys  # lazy: CLI start-up (paramiko)

    if fingerprint is not None and known_hosts is not None:
        raise UsageError("give --fingerprint or --known-hosts, not both")
    if fingerprint is not None:
        return [{"fingerprint": hostkeys.check_fingerprint(fingerprint)}]
    if known_hosts is None:
        return []
    node = _node(api, name)
    keys = hostkeys.read_known_hosts(str(known_hosts), name, node.address, node.port)
    return [{"fingerprint": k.fingerprint, "key_type": k.key_type} for k in keys]


def _confirm_presented(seen: EnrollOut, yes: bool) -> None:
    """Show the key the node presents; pin it only on --yes or a person's confirmation."""
    where = f"{seen.node} ({seen.address} port {seen.port})"
    output.say(f"{where} presents {seen.key_type} {seen.fingerprint}")
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "not pinning a host key nobody checked (no terminal to ask on)",
            fix="give --fingerprint SHA256:... or --known-hosts FILE (or --yes to trust it)",
        )
    output.say("Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the node.")
    if not typer.confirm("Pin this key?", default=False, err=True):
        output.fail("not pinned")
        raise typer.Exit(EXIT_FAILED)


def _say_enrolled(result: EnrollOut) -> None:
    key = f"{result.key_type} {result.fingerprint}"
    if not result.changed:
        output.say(f"{result.node}: already pinned to {key}")
    elif result.previous:
        output.say(f"{result.node}: re-pinned to {key} (was {result.previous})")
    else:
        output.say(f"{result.node}: pinned {key}")


# ---------------------------------------------------------------- on the nodes


@app.command()
def bootstrap(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist of enrolled nodes, e.g. gpu[01-04]."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Install the node program, node.conf, the grant key and the PAM blocks.

    Idempotent: a second run changes nothing. Exit 1 when any node failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # lazy: start-up

    names = expand(nodes)
    chunks = [names[i : i + BOOTSTRAP_CHUNK] for i in range(0, len(names), BOOTSTRAP_CHUNK)]
    api = client(ctx)
    results: list[BootstrapOut] = []
    errors: list[BrokerError] = []
    columns = (TextColumn("bootstrap"), BarColumn(), MofNCompleteColumn())
    with (
        Progress(
            *columns, console=output.err(), transient=True, disable=not output.err().is_terminal
        ) as progress,
        ThreadPoolExecutor(max_workers=BOOTSTRAP_REQUESTS) as pool,
    ):
        task = progress.add_task("bootstrap", total=len(names))
        futures = {
            pool.submit(
                api.post_list, "/v1/nodes/bootstrap", {"nodes": fold(chunk)}, BootstrapOut
            ): chunk
            for chunk in chunks
        }
        for future in as_completed(futures):
            try:
                results.extend(future.result())
            except BrokerError as exc:
                errors.append(exc)
            progress.advance(task, len(futures[future]))
    order = {name: i for i, name in enumerate(names)}
    results.sort(key=lambda r: order.get(r.node, len(order)))
    if json_out:
        output.print_json(results)
    elif results:
        output.table(
            None, ["node", "result", "changes", "problem"], [_boot_row(r) for r in results]
        )
    if errors:
        raise errors[0]
    failed = [r.node for r in results if not r.ok]
    if failed:
        output.fail(f"bootstrap failed on {fold(failed)}")
        raise typer.Exit(EXIT_FAILED)


def _boot_row(r: BootstrapOut) -> list[object]:
    changes = r.changed
    result = "changed" if changes else "unchanged"
    if not r.ok:
        result = "FAILED"
    shown = "; ".join(changes[:6]) + (f"; +{len(changes) - 6} more" if len(changes) > 6 else "")
    problem = r.error or (r.status.problem if r.status is not None else None) or ""
    return [r.node, result, shown, problem]


@app.command()
def status(
    ctx: typer.Context,
    nodes: str | None = typer.Argument(None, help="Hostlist (default: every enrolled node)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Ask each node's program: skew, hook version, sudo, I/O logging, active grants.

    Exit 3 when any node is unreachable, 1 when any has a problem.
    """
    body: dict[str, Any] = {} if nodes is None else {"nodes": nodes}
    count = "every enrolled node" if nodes is None else f"{len(expand(nodes))} nodes"
    with output.err().status(f"asking {count} through the broker daemon"):
        statuses = client(ctx).post_list("/v1/nodes/status", body, StatusOut)
    if json_out:
        output.print_json(statuses)
    else:
        output.table(
            None,
            ["node", "reachable", "skew (s)", "hook", "sudo", "I/O log", "grants", "problem"],
            [_status_row(s) for s in statuses],
        )
    _exit_for(statuses)


def _status_row(s: StatusOut) -> list[object]:
    return [
        s.node,
        "yes" if s.reachable else "NO",
        "" if s.skew_s is None else f"{s.skew_s:+.3f}",
        s.hook_version or "",
        " ".join(x for x in (s.sudo_flavour, s.sudo_version) if x),
        _yes_no(s.io_logging),
        "" if s.active_grants is None else s.active_grants,
        s.problem or "",
    ]


def _exit_for(statuses: Sequence[StatusOut]) -> None:
    down = [s.node for s in statuses if not s.reachable]
    troubled = [s.node for s in statuses if s.reachable and s.problem]
    if down:
        output.fail(f"unreachable: {fold(down)}")
        raise typer.Exit(EXIT_UNAVAILABLE)
    if troubled:
        output.fail(f"problems on {fold(troubled)}")
        raise typer.Exit(EXIT_FAILED)


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


@app.command()
def ping(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist expression, e.g. gpu[01-04],stor01."),
    json_out: bool = JSON_OPTION,
) -> None:
    """SSH to each enrolled node: reachable, reported hostname, clock skew.

    Exit 0 when all answer with a sane clock, 1 when any is skewed by more than 60 s or
    reports another hostname, 3 when any is unreachable.
    """
    names = expand(nodes)
    with output.err().status(f"probing {len(names)} nodes through the broker daemon"):
        probes = client(ctx).post_list("/v1/nodes/ping", {"nodes": nodes}, ProbeOut)
    if json_out:
        output.print_json(probes)
    else:
        output.table(
            None,
            ["node", "reachable", "hostname", "skew (s)", "ms", "problem"],
            [_row(p) for p in probes],
        )
    down = [p.node for p in probes if not p.reachable]
    wrong = [p.node for p in probes if p.reachable and not _sane(p)]
    if down:
        output.fail(f"unreachable: {fold(down)}")
        raise typer.Exit(EXIT_UNAVAILABLE)
    if wrong:
        output.fail(
            f"clock skewed by more than {MAX_SKEW_S:.0f} s or wrong hostname: {fold(wrong)}"
        )
        raise typer.Exit(EXIT_FAILED)


def _sane(probe: ProbeOut) -> bool:
    short = (probe.hostname or "").split(".")[0]
    return (
        probe.skew_s is not None
        and abs(probe.skew_s) <= MAX_SKEW_S
        and short == probe.node.split(".")[0]
    )


def _row(p: ProbeOut) -> list[object]:
    skew = "" if p.skew_s is None else f"{p.skew_s:+.3f}"
    return [
        p.node,
        "yes" if p.reachable else "NO",
        p.hostname or "",
        skew,
        f"{p.elapsed_ms:.0f}",
        p.error or "",
    ]


# ---------------------------------------------------------------- quarantine (docs/detection.md)


@app.command()
def quarantine(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist expression, e.g. gpu[01-04]."),
    reason: str = typer.Option(..., "--reason", help='Why, e.g. "INC-4711 suspected intrusion".'),
    json_out: bool = JSON_OPTION,
) -> None:
    """Quarantine NODES: every grant there revoked, running elevated sessions ended, and the
    nodes refuse elevation and gated logins to all but the incident-response group until
    released. Needs your MFA code (operators and incident response only)."""

    body = {"nodes": nodes, "reason": reason, "code": _prompt(CODE_LABEL)}
    with output.err().status(f"quarantining {nodes}"):
        result = client(ctx).post("/v1/nodes/quarantine", body, QuarantineOut)
    if json_out:
        output.print_json(result)
    else:
        output.say(
            f"quarantined {fold(result.nodes)}: revoked {len(result.revoked)} grant(s),"
            f" ended {result.sessions_ended} session process(es)"
        )
        _marks(result.marks, "marker placed")
    _exit_for_marks(result.marks)


@app.command()
def release(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist expression of quarantined nodes."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Release quarantined NODES: elevation works again as the policy allows. Needs MFA."""

    body = {"nodes": nodes, "code": _prompt(CODE_LABEL)}
    marks = client(ctx).post_list("/v1/nodes/release", body, MarkOut)
    if json_out:
        output.print_json(marks)
    else:
        _marks(marks, "released")
    _exit_for_marks(marks)


@app.command()
def quarantined(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Nodes under quarantine: since when, why, by whom, and whether the node has its marker."""
    found = client(ctx).get_list("/v1/nodes/quarantined", QuarantinedOut)
    if json_out:
        output.print_json(found)
        return
    output.table(
        None,
        ["node", "state", "since", "by", "reason", "marker", "problem"],
        [
            [q.node, q.state, output.when(q.since), q.by, q.reason, q.marker,
             q.error or ""]
            for q in found
        ],
    )  # fmt: skip


def _marks(marks: Sequence[MarkOut], ok_text: str) -> None:
    for m in marks:
        if m.ok:
            output.say(f"{m.node}: {ok_text}")
        else:
            output.warn(f"{m.node}: not reached ({m.error}); the daemon keeps trying")


def _exit_for_marks(marks: Sequence[MarkOut]) -> None:
    if any(not m.ok for m in marks):
        raise typer.Exit(EXIT_UNAVAILABLE)
