"""The root of the `broker` command tree, and the one place errors become exit codes.

Exit codes: 0 ok, 1 refused or failed, 2 usage (bad arguments, bad
configuration), 3 unavailable (directory, node, store or daemon unreachable).

This module imports typer and the command table only; each command's module is
imported when that command is used (broker/cli/lazy.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer import _click as click  # typer >= 0.29 vendors click

from broker import __version__
from broker.cli import lazy
from broker.cli.context import CliState
from broker.core.errors import EXIT_FAILED, EXIT_USAGE, BrokerError

app = typer.Typer(
    name="broker",
    cls=lazy.LazyGroup,
    help="Privileged access broker for HPC and AI-factory clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
        help="Reach the daemon at https://HOST:PORT with your Kerberos ticket, or the first "
        "that answers of a comma-separated list of brokers (https://... or unix:/PATH) "
        "(default: $BROKER_URL, then daemon.endpoints, then the local socket daemon.socket).",
    ),
    ca_file: Path | None = typer.Option(
        None,
        "--ca-file",
        envvar="BROKER_CA_FILE",
        help="CA bundle that signed the daemon's TLS certificate (default: $BROKER_CA_FILE, "
        "then the system's trust store).",
        dir_okay=False,
    ),
    no_headers: bool = typer.Option(
        False, "--no-headers", help="Tables: leave out the header line (and any title)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Privileged access broker for HPC and AI-factory clusters.

    Every option here is also accepted after the subcommand (`broker grants list
    --config FILE`). Tables are tab-separated when stdout is not a terminal;
    BROKER_FORMAT=json answers JSON as --json does.
    """
    ctx.obj = CliState(config=config, broker_url=broker_url, ca_file=ca_file, no_headers=no_headers)
    ctx.call_on_close(ctx.obj.close)


def _usage_line(exc: click.ClickException) -> str:
    """A click/typer usage error as one line: what is wrong, then where help is."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "broker"
    return f"broker: usage: {message}; see {where} --help"


def invoke(argv: list[str] | None) -> int:
    """Run one command line; usage errors become one line on stderr and exit 2."""
    from broker.cli import output  # lazy: only when there is something to print

    try:
        output.configure(os.environ)
        result: Any = typer.main.get_command(app).main(
            args=argv, prog_name="broker", standalone_mode=False
        )
    except click.exceptions.NoArgsIsHelpError:
        return EXIT_USAGE  # a group without its command: typer has printed its help
    except click.ClickException as exc:
        sys.stderr.write(_usage_line(exc) + "\n")
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except typer.Abort:
        output.fail("aborted")
        return EXIT_FAILED
    except BrokerError as exc:
        output.fail(exc.message if "\n" in exc.message else exc.one_line())
        return exc.exit_code
    return result if isinstance(result, int) else 0
