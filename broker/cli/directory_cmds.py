"""`broker directory`: reach Active Directory the way the broker will."""

from __future__ import annotations

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.core.errors import EXIT_UNAVAILABLE, ConfigError
from broker.core.timeutil import to_text
from broker.directory.connection import ping as ping_dcs
from broker.directory.snapshot import counts

app = typer.Typer(help="Active Directory over LDAPS and Kerberos.", no_args_is_help=True)


@app.command()
def ping(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Bind to every configured DC (TLS verified, broker keytab) and report who it says we are.

    Exit 0 when at least one DC works, 3 when none does.
    """
    settings = state(ctx).app().settings
    if settings.directory is None:
        raise ConfigError(
            "no [directory] section in the configuration", fix="see deploy/examples/broker.toml"
        )
    results = ping_dcs(settings.directory)
    if json_out:
        output.print_json(
            [
                {"uri": r.uri, "ok": r.ok, "detail": r.detail, "elapsed_ms": round(r.elapsed_ms, 1)}
                for r in results
            ]
        )
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
    cli_app = state(ctx).app()
    snapshot = cli_app.snapshot()
    sync_state = snapshot.state
    if sync_state is None:
        output.fail("no directory snapshot yet; run `broker sync`")
        raise typer.Exit(EXIT_UNAVAILABLE)
    users, groups = counts(cli_app.ready_store().conn)
    data = {
        "dc_uri": sync_state.dc_uri,
        "dc_name": sync_state.dc_name,
        "highest_usn": sync_state.highest_usn,
        "domain_sid": sync_state.domain_sid,
        "users": users,
        "groups": groups,
        "last_full_sync": to_text(sync_state.full_at),
        "last_change": to_text(sync_state.changed_at),
        "last_checked": to_text(sync_state.checked_at),
    }
    if json_out:
        output.print_json(data)
    else:
        output.table(None, ["", "directory snapshot"], [[k, v] for k, v in data.items()])
