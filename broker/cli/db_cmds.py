"""`broker db`: schema migrations and store status."""

from __future__ import annotations

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client, state
from broker.store import migrations
from broker.wire.system import DbStatus

app = typer.Typer(help="The broker's store (SQLite, or PostgreSQL).", no_args_is_help=True)


@app.command()
def migrate(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Apply pending schema migrations here, without the daemon (it also migrates at start).

    Run as root or the service user on the broker host; idempotent.
    """
    from broker.app import local_actor  # lazy: CLI start-up (the whole App)

    applied = state(ctx).app().setup().migrate(local_actor())
    if json_out:
        output.print_json({"applied": applied, "version": migrations.latest()})
    elif applied:
        for name in applied:
            output.say(f"applied migration {name}")
    else:
        output.say(f"store is up to date (schema {migrations.latest()})")


@app.command()
def status(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Where the store is, its schema version, pending migrations and event count."""
    info = client(ctx).get("/v1/db/status", DbStatus)
    if json_out:
        output.print_json(info)
    else:
        output.table(None, ["key", "value"], output.fields(info))


@app.command()
def copy(
    ctx: typer.Context,
    to: str = typer.Option(
        ...,
        "--to",
        metavar="URL",
        help="The empty PostgreSQL database to copy into, written as store.url would be.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Copy this broker's SQLite store into an empty PostgreSQL database (the move to the HA
    pair), and keep the copy only if every table, the audit head and the chain check out.

    Stop the daemon first (the copy holds the store's write lock); then set store.url to
    the same URL and start it. The copy is recorded as a store.copy audit event, the last
    event copied. Exit 0 copied and verified, 1 refused (the target is not empty, or the
    copy did not verify: nothing of it is kept), 2 a bad URL, 3 a store unreachable.
    """
    from broker.app import local_actor  # lazy: CLI start-up (the whole App)
    from broker.audit.storecopy import copy_to, target_url

    url = target_url(to)
    cli = state(ctx)
    settings = cli.settings()
    report = copy_to(settings, cli.app().ready_store(), url, local_actor())
    if json_out:
        output.print_json(
            {
                "target": url.display(),
                "tables": report.tables,
                "rows": report.rows,
                "audit_head": {"seq": report.head_seq, "hash": report.head_hash},
            }
        )
        return
    output.say(
        f"copied {report.rows} rows of {len(report.tables)} tables to {url.display()};"
        f" the audit chain verifies there up to seq {report.head_seq}"
    )
    output.say("next: set store.url to that database in broker.toml and start the broker")
