"""`broker audit`: verify the chain, follow it, export it for a SIEM, seal its head."""

from __future__ import annotations

import time
from dataclasses import replace
from enum import StrEnum
from pathlib import Path

import typer

from broker.app import App
from broker.audit.chain import AuditEvent
from broker.audit.export import to_cef, to_jsonl
from broker.audit.query import EventFilter, iter_events
from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.core.errors import EXIT_FAILED, UsageError
from broker.core.timeutil import parse_moment, to_text, utcnow
from broker.store.files import write_private_file

app = typer.Typer(help="The tamper-evident audit chain.", no_args_is_help=True)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    cef = "cef"


def _filter(
    since: str | None, until: str | None, action: str | None, actor: str | None
) -> EventFilter:
    now = utcnow()
    return EventFilter(
        since=to_text(parse_moment(since, now)) if since else None,
        until=to_text(parse_moment(until, now)) if until else None,
        action=action,
        actor=actor,
    )


@app.command()
def verify(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Check every event's hash and link, and the chain against the signed checkpoints.

    Exit 0 when the chain is intact, 1 with the first bad seq and why.
    """
    report = state(ctx).app().verify_audit()
    if json_out:
        output.print_json(
            {
                "ok": report.ok,
                "count": report.count,
                "head_seq": report.head_seq,
                "head_hash": report.head_hash,
                "sealed_seq": report.sealed_seq,
                "checkpoints": report.checkpoints,
                "problem": None
                if report.problem is None
                else {
                    "kind": report.problem.kind,
                    "seq": report.problem.seq,
                    "message": report.problem.message,
                },
                "warnings": report.warnings,
            }
        )
    else:
        for warning in report.warnings:
            output.warn(warning)
        if report.problem is None:
            output.say(
                f"audit chain OK: {report.count} events, head seq {report.head_seq}, "
                f"sealed up to seq {report.sealed_seq} by {report.checkpoints} checkpoints"
            )
        else:
            output.fail(
                f"audit chain BAD at seq {report.problem.seq} ({report.problem.kind}): "
                f"{report.problem.message}"
            )
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _rows(events: list[AuditEvent]) -> list[list[str]]:
    return [[str(e.seq), e.ts, e.actor, e.action, e.target, e.outcome, e.details] for e in events]


_COLUMNS = ["seq", "time (UTC)", "actor", "action", "target", "outcome", "details"]


@app.command()
def tail(
    ctx: typer.Context,
    lines: int = typer.Option(
        20, "-n", "--lines", min=1, max=100_000, help="How many recent events."
    ),
    follow: bool = typer.Option(
        False, "-f", "--follow", help="Keep printing new events as they arrive."
    ),
    since: str | None = typer.Option(
        None, help="Only events since this time or duration ago (2h, 2026-11-22T08:00Z)."
    ),
    action: str | None = typer.Option(
        None, help="Only actions matching this glob (e.g. 'store.*')."
    ),
    actor: str | None = typer.Option(None, help="Only events by this actor (e.g. unix:root)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Show the most recent events, oldest first; with -f, follow new ones."""
    app_ = state(ctx).app()
    conn = app_.ready_store().conn
    newest = replace(_filter(since, None, action, actor), limit=lines, newest_first=True)
    recent = list(iter_events(conn, newest))
    recent.reverse()
    if follow and json_out:
        for line in to_jsonl(recent):
            typer.echo(line)
    elif json_out:
        output.print_json([e.as_dict() for e in recent])
    elif recent or not follow:
        output.table(None, _COLUMNS, _rows(recent))
    if follow:
        _follow(app_, recent[-1].seq if recent else 0, action, actor, json_out)


def _follow(app_: App, after: int, action: str | None, actor: str | None, json_out: bool) -> None:
    conn = app_.ready_store().conn
    try:
        while True:
            fresh = list(
                iter_events(conn, EventFilter(action=action, actor=actor, after_seq=after))
            )
            for event in fresh:
                if json_out:
                    typer.echo(next(iter(to_jsonl([event]))))
                else:
                    output.say(
                        f"{event.seq} {event.ts} {event.actor} {event.action} {event.target} "
                        f"{event.outcome} {event.details}"
                    )
                after = event.seq
            time.sleep(1.0)
    except KeyboardInterrupt:
        return


@app.command()
def export(
    ctx: typer.Context,
    fmt: ExportFormat = typer.Option(ExportFormat.jsonl, "--format", help="jsonl or cef."),
    since: str | None = typer.Option(None, help="Start time or duration ago."),
    until: str | None = typer.Option(None, help="End time (exclusive) or duration ago."),
    output_file: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file (0600, atomically) instead of stdout."
    ),
) -> None:
    """Export events for a SIEM, each with its seq and chain hash."""
    conn = state(ctx).app().ready_store().conn
    events = iter_events(conn, _filter(since, until, None, None))
    lines = to_jsonl(events) if fmt is ExportFormat.jsonl else to_cef(events)
    if output_file is None:
        for line in lines:
            typer.echo(line)
        return
    if output_file.exists() and output_file.is_dir():
        raise UsageError(f"{output_file} is a directory", fix="give a file name")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    write_private_file(output_file.absolute(), data, None, 0o600)
    output.err.print(f"wrote {output_file}")


@app.command()
def seal(ctx: typer.Context) -> None:
    """Write a signed checkpoint of the current head now (to every configured copy)."""
    sealed = state(ctx).app().seal()
    output.say(
        f"sealed up to seq {sealed}"
        if sealed
        else "already sealed: nothing new since the last checkpoint"
    )
