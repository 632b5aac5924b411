"""`broker audit`: verify the chain, follow it, export it for a SIEM, seal its head.

Every command asks the daemon; events come a page at a time and exports are
formatted (and written) here, on the caller's side.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import typer

from broker.audit.chain import AuditEvent, canonical_details
from broker.audit.export import to_cef, to_jsonl
from broker.audit.query import PAGE_MAX
from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.client.client import Client
from broker.core.errors import EXIT_FAILED, UsageError
from broker.store.files import write_private_file
from broker.wire.audit import EventOut, SealOut, VerifyOut

app = typer.Typer(help="The tamper-evident audit chain.", no_args_is_help=True)

EVENTS = "/v1/audit/events"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    cef = "cef"


def event_of(row: EventOut) -> AuditEvent:
    """An event from the daemon, rebuilt as stored (`details` back to its canonical text)."""
    return AuditEvent(**row.model_dump(exclude={"details"}), details=canonical_details(row.details))


def events_after(c: Client, after_seq: int = 0, **filters: str | None) -> Iterator[AuditEvent]:
    """Every matching event after `after_seq`, oldest first, fetched a page at a time."""
    while True:
        page = c.get_list(EVENTS, EventOut, after_seq=after_seq, limit=PAGE_MAX, **filters)
        for row in page:
            event = event_of(row)
            after_seq = event.seq
            yield event
        if len(page) < PAGE_MAX:
            return


def newest_events(c: Client, count: int, **filters: str | None) -> list[AuditEvent]:
    """The `count` most recent matching events, oldest first."""
    found: list[AuditEvent] = []
    before: int | None = None
    while len(found) < count:
        want = min(PAGE_MAX, count - len(found))
        page = c.get_list(
            EVENTS, EventOut, limit=want, newest_first=True, before_seq=before, **filters
        )
        found += [event_of(row) for row in page]
        if len(page) < want:
            break
        before = found[-1].seq
    found.reverse()
    return found


@app.command()
def verify(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Check every event's hash and link, and the chain against the signed checkpoints.

    Exit 0 when the chain is intact, 1 with the first bad seq and why.
    """
    report = client(ctx).get("/v1/audit/verify", VerifyOut)
    problem = report.problem
    if json_out:
        output.print_json(report)
    else:
        for warning in report.warnings:
            output.warn(warning)
        if problem is None:
            output.say(
                f"audit chain OK: {report.count} events, head seq {report.head_seq}, "
                f"sealed up to seq {report.sealed_seq} by {report.checkpoints} checkpoints"
            )
        else:
            output.fail(f"audit chain BAD at seq {problem.seq} ({problem.kind}): {problem.message}")
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
    c = client(ctx)
    recent = newest_events(c, lines, since=output.moment(since), action=action, actor=actor)
    if follow and json_out:
        for line in to_jsonl(recent):
            typer.echo(line)
    elif json_out:
        output.print_json([e.as_dict() for e in recent])
    elif recent or not follow:
        output.table(None, _COLUMNS, _rows(recent))
    if follow:
        _follow(c, recent[-1].seq if recent else 0, action, actor, json_out)


def _follow(c: Client, after: int, action: str | None, actor: str | None, json_out: bool) -> None:
    """Poll the daemon once a second for events after the last one shown, until Ctrl-C."""
    try:
        while True:
            for event in events_after(c, after, action=action, actor=actor):
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
    if output_file is not None and output_file.is_dir():
        raise UsageError(f"{output_file} is a directory", fix="give a file name")
    events = events_after(client(ctx), since=output.moment(since), until=output.moment(until))
    lines = to_jsonl(events) if fmt is ExportFormat.jsonl else to_cef(events)
    if output_file is None:
        for line in lines:
            typer.echo(line)
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    write_private_file(output_file.absolute(), data, None, 0o600)
    output.err().print(f"wrote {output_file}")


@app.command()
def seal(ctx: typer.Context) -> None:
    """Write a signed checkpoint of the current head now (to every configured copy)."""
    sealed = client(ctx).post("/v1/audit/seal", None, SealOut).sealed_seq
    output.say(
        f"sealed up to seq {sealed}"
        if sealed
        else "already sealed: nothing new since the last checkpoint"
    )
