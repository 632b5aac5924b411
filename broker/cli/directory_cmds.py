"""`broker directory`: reach Active Directory the way the broker will."""

from __future__ import annotations

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.errors import EXIT_UNAVAILABLE
from broker.wire.directory import DcOut, SnapshotStatus

app = typer.Typer(help="Active Directory over LDAPS and Kerberos.", no_args_is_help=True)


@app.command()
def ping(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Bind to every configured DC (TLS verified, broker keytab) and report who it says we are.

    Exit 0 when at least one DC works, 3 when none does.
    """
    results = client(ctx).post_list("/v1/directory/ping", None, DcOut)
    if json_out:
        output.print_json(results)
    else:
        output.table(
            None,
            ["DC", "ok", "detail", "ms"],
            [[r.uri, "yes" if r.ok else "NO", r.detail, f"{r.elapsed_ms:.0f}"] for r in results],
        )
    if not any(r.ok for r in results):
        raise typer.Exit(EXIT_UNAVAILABLE)


@app.command()
def status(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """What the snapshot holds and when it was last synced (no DC is contacted).

    Exit 0 when there is a snapshot, 3 when no sync has run yet.
    """
    data = client(ctx).get("/v1/directory/status", SnapshotStatus)
    if json_out:
        output.print_json(data)
    else:
        output.table(None, ["", "directory snapshot"], output.fields(data))
