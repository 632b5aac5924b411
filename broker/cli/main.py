"""The `broker` command. Only this module turns errors into exit codes.

Exit codes: 0 ok, 1 refused or failed, 2 usage (bad arguments, bad
configuration), 3 unavailable (directory, node, store or daemon unreachable).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from broker import __version__
from broker.cli import (
    accounts_cmds,
    alert_cmds,
    audit_cmds,
    config_cmds,
    db_cmds,
    directory_cmds,
    grant_cmds,
    keytab_cmds,
    mfa_cmds,
    node_cmds,
    output,
    policy_cmds,
    session_cmds,
    sync_cmds,
)
from broker.cli.context import JSON_OPTION, CliState, state
from broker.core.errors import BrokerError, UnavailableError
from broker.wire.system import Health, WhoAmI

app = typer.Typer(
    name="broker",
    help="Privileged access broker for HPC and AI-factory clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(audit_cmds.app, name="audit")
app.add_typer(db_cmds.app, name="db")
app.add_typer(config_cmds.app, name="config")
app.add_typer(directory_cmds.app, name="directory")
app.add_typer(node_cmds.app, name="node")
app.add_typer(accounts_cmds.app, name="accounts")
app.add_typer(policy_cmds.app, name="policy")
app.add_typer(mfa_cmds.app, name="mfa")
app.command("sync")(sync_cmds.sync)
app.command("elevate")(grant_cmds.elevate)
app.command("approve")(grant_cmds.approve)
app.command("deny")(grant_cmds.deny)
app.command("revoke")(grant_cmds.revoke)
app.add_typer(grant_cmds.grants_app, name="grants")
app.add_typer(grant_cmds.requests_app, name="requests")
app.add_typer(keytab_cmds.app, name="keytab")
app.add_typer(session_cmds.app, name="sessions")
app.add_typer(alert_cmds.app, name="alerts")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"broker {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Configuration file (default: $BROKER_CONFIG, then /etc/broker/broker.toml).",
        dir_okay=False,
    ),
    broker_url: str | None = typer.Option(
        None,
        "--broker",
        help="Reach the daemon at https://HOST:PORT with your Kerberos ticket "
        "(default: $BROKER_URL, then the local socket daemon.socket).",
    ),
    ca_file: Path | None = typer.Option(
        None,
        "--ca-file",
        help="CA bundle that signed the daemon's TLS certificate.",
        dir_okay=False,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Privileged access broker for HPC and AI-factory clusters."""
    ctx.obj = CliState(config=config, broker_url=broker_url, ca_file=ca_file)
    ctx.call_on_close(ctx.obj.close)


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the state directory, the audit signing, SSH and MFA keys and the schema (idempotent)."""
    from broker.app import local_actor  # lazy: CLI start-up (the whole App)

    result = state(ctx).app().setup().init(local_actor())
    for path in result.created:
        output.say(f"created {path}")
    for name in result.migrations:
        output.say(f"applied migration {name}")
    if not result.created and not result.migrations:
        output.say(f"{result.state_dir}: already initialised")


@app.command()
def whoami(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Who the daemon says you are: Unix user or Kerberos principal, directory account,
    operator or not."""
    data = state(ctx).client().get("/v1/whoami", WhoAmI)
    if json_out:
        output.print_json(data)
        return
    output.table(None, ["", "caller"], output.fields(data))


@app.command()
def health(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """The daemon's health: the store, each background thread, the directory snapshot's
    age and the log server. Exit 0 when every check passes, 3 when any failed (named)."""
    ok, data = state(ctx).client().get_health("/v1/health", Health)
    if json_out:
        output.print_json(data)
    else:
        rows = [
            [c.name, "skipped" if c.skipped else ("ok" if c.ok else "FAILED"), c.detail]
            for c in data.checks
        ]
        output.table(None, ["check", "state", "detail"], rows)
    if not ok:
        raise UnavailableError(
            f"the broker is degraded: {', '.join(data.failed)} failed",
            fix="see each failed check's detail in `broker health`",
        )


@app.command("api-schema", hidden=False)
def api_schema() -> None:
    """Print the daemon API's OpenAPI 3.1 description (docs/openapi.json is this output)."""
    from broker.daemon.openapi import render  # lazy: CLI start-up (every route's models)

    sys.stdout.write(render())


@app.command()
def serve(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request."),
) -> None:
    """Run the broker daemon in the foreground (systemd: deploy/systemd/broker.service).

    It migrates the store, listens on daemon.socket (and daemon.listen with TLS when set)
    and serves until SIGTERM. Needs `broker init` first.
    """
    from broker.daemon.server import serve as serve_forever  # lazy: CLI start-up (the daemon)

    logging.getLogger("broker").setLevel(logging.DEBUG if verbose else logging.INFO)
    serve_forever(state(ctx).settings())


def run() -> None:
    """Console-script entry point: typer owns usage errors (exit 2); ours map to 1 or 3."""
    logging.basicConfig(level=logging.WARNING, format="broker: %(levelname)s: %(message)s")
    os.umask(0o077)
    try:
        app()
    except BrokerError as exc:
        output.fail(exc.message if "\n" in exc.message else exc.one_line())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
