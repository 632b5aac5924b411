"""`broker db`: schema migrations and store status."""

from __future__ import annotations

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client, state
from broker.store import migrations
from broker.wire.system import DbStatus

app = typer.Typer(help="The broker's SQLite store.", no_args_is_help=True)


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
