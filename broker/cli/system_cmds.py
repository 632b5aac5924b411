"""Commands about the broker itself: init, whoami, health, api-schema, serve.

Their own module so that `broker --version` and Tab completion do not import them
(broker/cli/lazy.py loads a command's module only when it runs).
"""

from __future__ import annotations

import logging
import sys

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, state


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


def whoami(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Who the daemon says you are: Unix user or Kerberos principal, directory account,
    operator or not."""
    from broker.wire.system import WhoAmI  # lazy: pydantic models only when asked

    data = state(ctx).client().get("/v1/whoami", WhoAmI)
    if json_out:
        output.print_json(data)
        return
    output.table(None, ["", "caller"], output.fields(data))


def health(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """The daemon's health: the store, each background thread, the directory snapshot's
    age and the log server. Exit 0 when every check passes, 3 when any failed (named)."""
    from broker.core.errors import UnavailableError
    from broker.wire.system import Health  # lazy: pydantic models only when asked

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


def api_schema() -> None:
    """Print the daemon API's OpenAPI 3.1 description (docs/openapi.json is this output)."""
    from broker.daemon.openapi import render  # lazy: CLI start-up (every route's models)

    sys.stdout.write(render())


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
