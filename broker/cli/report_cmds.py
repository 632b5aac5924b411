"""`broker report`: the controls report an auditor accepts, and its verification.

The daemon computes and signs the report (it alone holds the store and the audit key);
this side only prints it, writes it to a file, and for `verify` reads a JSON or HTML
report, checks that it is one (exit 2 when it is not) and sends it to the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.errors import EXIT_FAILED, TooLargeError, UsageError
from broker.report.document import MAX_DOCUMENT, parse
from broker.store.files import write_private_file
from broker.wire.report import ReportOut, ReportVerifyOut

app = typer.Typer(
    help="Evidence for auditors: the controls report, signed, and its verification.",
    no_args_is_help=True,
)


def render_html(document: dict[str, Any]) -> str:
    """The self-contained page (broker/report/html.py), drawn here from the signed document:
    the daemon signs the figures, the page is only their picture (loaded on demand, since
    the charts' library takes a moment to import)."""
    from broker.report import html

    return html.render_html(document)


def _write(path: Path, text: str) -> None:
    """0600, owner and mode set before the name appears (reports name people and nodes)."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory", fix="give a file name")
    write_private_file(path.absolute(), text.encode("utf-8"), None, 0o600)
    output.err().print(f"wrote {path}")


@app.command()
def controls(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None, help="Start of the period: a time or a duration ago (default: 30 days ago)."
    ),
    until: str | None = typer.Option(None, help="End of the period, exclusive (default: now)."),
    zone: str | None = typer.Option(None, help="Only this zone's nodes (node facts)."),
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML report here."),
    json_out: bool = JSON_OPTION,
) -> None:
    """For each supported NIST control: what the broker enforces, the evidence for the
    period from the audit chain and the store, a status, and the command behind each item.

    The report states the audit head it was computed from and is signed with the audit
    key; check it with `broker report verify FILE`.
    """
    report = client(ctx).get(
        "/v1/report/controls",
        ReportOut,
        since=output.moment(since),
        until=output.moment(until),
        zone=zone,
    )
    document = report.model_dump(mode="json", by_alias=True)
    if html is not None:
        _write(html, render_html(document))
    if json_out:
        output.print_json(document)
        return
    _print(report)


def _print(report: ReportOut) -> None:
    head = report.audit_head
    output.say(
        f"controls report of {report.broker}, {report.period.since} .. {report.period.until}"
        + (f", zone {report.zone}" if report.zone else "")
        + f", audit head seq {head.seq}"
    )
    rows = []
    for c in report.controls:
        rows.append([c.id, c.status, c.title])
    output.table(None, ["control", "status", "title"], rows)
    for c in report.controls:
        for item in c.attention:
            output.warn(f"{c.id}: {item.item} (see: {item.command})")


@app.command()
def verify(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="A JSON or HTML report."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check a report's signature (this broker's audit key), that its audit head is in the
    chain, and that the chain verifies up to it; for an HTML report also that the page is
    exactly the one drawn from that signed document (nothing a reader sees was edited).

    Exit 0 when it holds, 1 naming the check that failed, 2 when FILE is not a report.
    """
    text = _read(file)
    document = parse(text, str(file))
    try:
        result = client(ctx).post("/v1/report/verify", {"document": document}, ReportVerifyOut)
    except TooLargeError as exc:
        # Larger than the daemon takes in one request, so not a report it could check.
        raise UsageError(
            f"{file} holds a document larger than the daemon accepts ({exc.message})",
            fix="if this broker issued it, raise daemon.max_body (at most 8388608) and retry",
        ) from None
    if result.ok and not text.lstrip().startswith("{"):
        result = _same_page(result, text, document)
    if json_out:
        output.print_json(result)
    elif result.ok:
        output.say(result.message)
    else:
        output.fail(f"report NOT verified ({result.failed}): {result.message}")
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _same_page(result: ReportVerifyOut, page: str, document: dict[str, Any]) -> ReportVerifyOut:
    """The signature covers the embedded document only; what a reader sees (badges, tables,
    charts) is checked by drawing the page again from it: rendering is deterministic, so an
    edited page differs. (A page drawn by another broker version may differ too: the JSON
    report, or a page drawn again with `--html`, is then what to verify.)"""
    if render_html(document) == page:
        return result.model_copy(update={"message": result.message + "; page unedited"})
    return result.model_copy(
        update={
            "ok": False,
            "failed": "page",
            "message": "the page is not the one drawn from its signed document: its visible "
            "content was edited (or it was drawn by another broker version; verify the JSON "
            "report instead)",
        }
    )


def _read(file: Path) -> str:
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DOCUMENT:
        raise UsageError(f"{file} is larger than any report ({MAX_DOCUMENT} bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{file} is not UTF-8 text") from None
