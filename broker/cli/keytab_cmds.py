"""`broker keytab create|rotate|status|verify`: service-account keytabs (docs/keytabs.md).

The daemon does the work; these commands ask it and show the outcome per account and
node. Exit 0 when everything asked for succeeded, 1 when anything was refused or
failed, 2 on bad usage, 3 when the daemon (or AD) cannot be reached.
"""

from __future__ import annotations

from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.errors import EXIT_FAILED, EXIT_USAGE
from broker.wire.keytabs import AccountStatusOut, RotationOut

app = typer.Typer(
    help="Service-account keytabs: create, rotate without outage, status, verify.",
    no_args_is_help=True,
)

_OK = {"rotated", "verified", "abandoned", "superseded", "waiting"}


def _show_rotations(reports: list[RotationOut], json_out: bool) -> None:
    if json_out:
        output.print_json(reports)
    else:
        output.table(
            None,
            ["account", "outcome", "kvno", "nodes", "message"],
            [
                [
                    r.name,
                    r.outcome,
                    f"{r.from_kvno} -> {r.kvno}" if r.from_kvno is not None else r.kvno,
                    ", ".join(f"{n.node}:{'ok' if n.ok else 'FAILED'}" for n in r.nodes),
                    r.message or "; ".join(n.error or "" for n in r.nodes if not n.ok),
                ]
                for r in reports
            ],
        )
    if any(r.outcome not in _OK and r.outcome != "skipped" for r in reports):
        raise typer.Exit(EXIT_FAILED)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The service account's name in the policy."),
    create_account: bool = typer.Option(
        False, "--create-account", help="Create the AD account with its SPNs if it is missing."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Make NAME's keytab on its nodes (a first rotation: new password, keys staged, verified)."""
    report = client(ctx).post(
        f"/v1/keytabs/{name}/create", {"create_account": create_account}, RotationOut
    )
    _show_rotations([report], json_out)


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One service account (or --due / --all)."),
    due: bool = typer.Option(False, "--due", help="Every account whose rotate_every has passed."),
    every: bool = typer.Option(False, "--all", help="Every service account in the policy."),
    force: bool = typer.Option(
        False, "--force", help="Rotate NAME again even when an earlier rotation is still open."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Rotate without outage: pre-stage the next keys on every node, change the password in
    AD, verify on every node. A rotation a crash left open is resumed first."""
    if sum((name is not None, due, every)) != 1:
        output.say("give exactly one of NAME, --due or --all")
        raise typer.Exit(EXIT_USAGE)
    body: dict[str, Any] = {"due": due, "all": every, "force": force}
    if name is not None:
        body["name"] = name
    reports = client(ctx).post_list("/v1/keytabs/rotate", body, RotationOut)
    _show_rotations(reports, json_out)


@app.command("verify")
def verify(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The service account's name in the policy."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Get a fresh service ticket for every principal and check each node's keytab accepts it."""
    report = client(ctx).post(f"/v1/keytabs/{name}/verify", {}, RotationOut)
    _show_rotations([report], json_out)


@app.command("status")
def status(
    ctx: typer.Context,
    live: bool = typer.Option(False, "--live", help="Ask every node now (else: last seen)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """For each service account: kvno in AD and on each node, age, next due, last verification."""
    found = client(ctx).post_list("/v1/keytabs/status", {"live": live}, AccountStatusOut)
    if json_out:
        output.print_json(found)
        return
    rows = []
    for a in found:
        stale = [n.node for n in a.nodes if n.stale]
        rows.append(
            [
                a.name,
                a.ad_kvno if a.ad_kvno is not None else "?",
                ", ".join(f"{n.node}:{max(n.kvnos) if n.kvnos else '-'}" for n in a.nodes),
                a.last_rotated_at or "never",
                a.next_due_at or "not created",
                a.last_verified_at or "never",
                a.rotation_state or "",
                ("stale: " + ", ".join(stale) + "; " if stale else "") + (a.last_error or ""),
            ]
        )
    output.table(
        None,
        ["account", "AD kvno", "node kvnos", "rotated", "next due", "verified", "open", "problems"],
        rows,
    )
    if found and found[0].ad_error:
        output.say(f"AD: {found[0].ad_error}")
