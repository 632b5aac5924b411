"""`broker sessions`: set up the log server, then list, show, replay, search and verify
the recorded elevated sessions (docs/sessions.md)."""

from __future__ import annotations

import base64
import sys
import time
from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client, state
from broker.core.errors import FailedError, UsageError
from broker.core.timeutil import utcnow
from broker.wire.sessions import (
    EndingOut,
    IndexOut,
    PurgeOut,
    ReplayOut,
    SearchOut,
    SessionDetailOut,
    SessionOut,
    VerifyOut,
)

app = typer.Typer(
    help="Recorded elevated sessions: list, show, replay, search, verify.", no_args_is_help=True
)


@app.command("setup")
def setup(ctx: typer.Context) -> None:
    """On the broker host, as root: the session CA, the log server's certificate, the store
    and the sudo_logsrvd and stunnel configurations (idempotent). Then start
    broker-logsrvd.service, broker-logsrv-tunnel.service and broker-logsrv-crl.path."""
    from broker.sessions.setup import setup as run_setup  # lazy: CLI start-up (cryptography)

    changed = run_setup(state(ctx).settings(), utcnow())
    for line in changed:
        output.say(line)
    if not changed:
        output.say("the log server's files are already in place")


def _command(row: SessionOut) -> str:
    text = str(" ".join(row.argv) or row.command or "-")
    return text if len(text) <= 60 else text[:57] + "..."


def _state(row: SessionOut) -> str:
    marks = [m for m, on in (("break-glass", row.break_glass), ("relayed", row.relayed)) if on]
    return f"{row.state} ({', '.join(marks)})" if marks else row.state


def _evidence(row: SessionOut) -> str:
    """User and node corroborated, or only the sending node's word (shouted: alerts on such
    a session take no action against the user or node it names)."""
    return "corroborated" if row.provenance == "corroborated" else "UNCORROBORATED"


@app.command("list")
def list_sessions(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="Only this user's sessions."),
    node: str | None = typer.Option(None, "--node", help="Only sessions on this node."),
    grant: str | None = typer.Option(None, "--grant", help="Only sessions under this grant."),
    since: str | None = typer.Option(
        None, help="Still running at or after (2h, 2026-11-22T08:00Z)."
    ),
    until: str | None = typer.Option(None, help="Started at or before this time."),
    running: bool = typer.Option(False, "--running", help="Only sessions still running."),
    exit_value: int | None = typer.Option(None, "--exit", help="Only sessions that exited so."),
    limit: int = typer.Option(200, help="At most this many (newest first)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Recorded elevated sessions, newest first."""
    query: dict[str, Any] = {"running": running, "limit": limit}
    for key, value in (("user", user), ("node", node), ("grant", grant), ("exit", exit_value)):
        if value is not None:
            query[key] = value
    for key, value in (("since", output.moment(since)), ("until", output.moment(until))):
        if value is not None:
            query[key] = value
    found = client(ctx).get_list("/v1/sessions", SessionOut, **query)
    if json_out:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "user", "as", "node", "command", "started", "ended", "end", "grant", "state",
         "evidence"],
        [
            [
                r.id, r.user or "-", r.runas or "-", r.node or "-", _command(r),
                output.when(r.started_at), output.when(r.ended_at), r.end_reason or "-",
                r.grant_id or "-", _state(r), _evidence(r),
            ]
            for r in found
        ],
    )  # fmt: skip


@app.command("show")
def show(
    ctx: typer.Context,
    session_id: str = typer.Argument(..., metavar="ID"),
    json_out: bool = JSON_OPTION,
) -> None:
    """One session: who, as whom, where, which grant and reason, start, end, exit status,
    and the command lines typed in it, with when."""
    d = client(ctx).get(f"/v1/sessions/{session_id}", SessionDetailOut)
    if json_out:
        output.print_json(d)
        return
    s, g = d.session, d.grant
    rows: list[list[str]] = [
        ["session", s.id],
        ["state", _state(s) + (f": {s.error}" if s.error else "")],
        ["evidence", f"{_evidence(s)}: {s.provenance_reason}"],
        ["user", s.user or "-"],
        ["as", s.runas or "-"],
        ["node", s.node or "-"],
        ["tty", s.tty or "-"],
        ["command", " ".join(s.argv) or s.command or "-"],
        ["cwd", s.cwd or "-"],
        ["grant", s.grant_id or "none found"],
        ["reason", g.reason if g else "-"],
        ["approvers", ", ".join(g.approvers) if g and g.approvers else "-"],
        ["started", output.when(s.started_at)],
        ["ended", output.when(s.ended_at)],
        ["end", s.end_reason or "-"],
        ["exit", "-" if s.exit_value is None else str(s.exit_value)],
        ["bytes in/out", f"{s.bytes_in}/{s.bytes_out}"],
        ["sha256", s.sha256 or "-"],
    ]
    drift = d.drift
    if drift is not None:
        rows.append(
            [
                "drift",
                drift.error
                or f"{len(drift.changes)} change(s), "
                f"{drift.unexpected} unexpected (checked {output.when(drift.checked_at)})",
            ]
        )
    if d.ending is not None:
        rows += ending_rows(d.ending)
    if d.alerts:
        rows.append(["alerts", ", ".join(str(a) for a in d.alerts)])
    output.table(None, ["", ""], rows)
    if drift is not None and drift.changes:
        output.table("left behind", ["change"], [[c] for c in drift.changes])
    if d.timeline:
        output.table("typed", ["+s", "line"], [[f"{c.offset_s:.1f}", c.text] for c in d.timeline])


def ending_rows(e: EndingOut) -> list[list[str]]:
    """How the session ended on its node and what its cgroup used (docs/elevation.md)."""
    how = e.ended_by or "-"
    if e.closed_by and e.closed_by != e.ended_by:
        how = f"{e.closed_by}; what it left running: {e.ended_by}"
    if e.killed:
        how += f" ({e.killed} process(es) killed)"
    kept = {True: "own cgroup", False: "process tree only (weaker)", None: "-"}
    used = [f"CPU {e.cpu_seconds:.2f} s" if e.cpu_seconds is not None else "CPU -"]
    if e.memory_peak is not None:
        used.append(f"peak memory {e.memory_peak / 1048576:.1f} MiB")
    if e.pids_peak is not None:
        used.append(f"peak {e.pids_peak} process(es)")
    return [["ended by", how], ["contained", kept[e.contained]], ["used", ", ".join(used)]]


@app.command("replay")
def replay(
    ctx: typer.Context,
    session_id: str = typer.Argument(..., metavar="ID"),
    speed: float = typer.Option(1.0, "--speed", min=0.0, help="Play N times faster; 0: no pauses."),
    max_wait: float = typer.Option(
        0.0, "--max-wait", min=0.0, help="Cap each pause at this many seconds (0: no cap)."
    ),
) -> None:
    """Play the session's output as the user saw it: the same bytes, the same pauses
    (scaled by --speed). `sudoreplay -d STORE ID` works on the central copy too."""
    data = client(ctx).get(f"/v1/sessions/{session_id}/replay", ReplayOut, streams="output")
    out = sys.stdout.buffer
    for delay, _stream, b64 in data.chunks:
        pause = delay / speed if speed > 0 else 0.0
        if max_wait > 0:
            pause = min(pause, max_wait)
        if pause > 0:
            out.flush()
            time.sleep(pause)
        out.write(base64.b64decode(b64))
    out.flush()


def _mode(word: bool, prefix: bool, phrase: bool) -> str:
    chosen = [m for m, on in (("word", word), ("prefix", prefix), ("phrase", phrase)) if on]
    if len(chosen) > 1:
        raise UsageError("--word, --prefix and --phrase exclude each other", fix="give one")
    return chosen[0] if chosen else "regex"


@app.command("search")
def search(
    ctx: typer.Context,
    pattern: str = typer.Argument(
        ...,
        metavar="REGEX|TEXT",
        help="A regular expression (RE2: no backreferences or lookaround), or text with --word etc.",
    ),
    word: bool = typer.Option(False, "--word", help="TEXT as a whole word in typed lines."),
    prefix: bool = typer.Option(False, "--prefix", help="A word starting with TEXT, typed."),
    phrase: bool = typer.Option(False, "--phrase", help="These words in this order, typed."),
    input_only: bool = typer.Option(False, "--input", help="Only what was typed."),
    output_only: bool = typer.Option(False, "--output", help="Only what was printed."),
    user: str | None = typer.Option(None, "--user"),
    node: str | None = typer.Option(None, "--node"),
    grant: str | None = typer.Option(None, "--grant", help="Only sessions under this grant."),
    since: str | None = typer.Option(None, help="Sessions running at or after this time."),
    until: str | None = typer.Option(None, help="Sessions started at or before this time."),
    exit_value: int | None = typer.Option(None, "--exit", help="Only sessions that exited so."),
    limit: int = typer.Option(100, help="At most this many sessions."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Which sessions typed (--input) or printed (--output) something matching REGEX, or
    typed TEXT as a word (--word), word start (--prefix) or phrase (--phrase). Typed input
    is answered from the search index; how a search was done is said on stderr."""
    if input_only and output_only:
        raise UsageError("--input and --output exclude each other", fix="give one or neither")
    body: dict[str, Any] = {
        "pattern": pattern,
        "mode": _mode(word, prefix, phrase),
        "streams": "input" if input_only else "output" if output_only else "all",
        "limit": limit,
    }
    for key, value in (
        ("user", user), ("node", node), ("grant", grant), ("exit", exit_value),
        ("since", output.moment(since)), ("until", output.moment(until)),
    ):  # fmt: skip
        if value is not None:
            body[key] = value
    found = client(ctx).post("/v1/sessions/search", body, SearchOut)
    if found.note and (not found.narrowed or not found.complete):
        output.warn(found.note)
    if json_out:
        output.print_json(found.hits)
        return
    output.table(
        None,
        ["id", "user", "node", "started", "stream", "match"],
        [
            [
                h.session.id, h.session.user or "-", h.session.node or "-",
                output.when(h.session.started_at), h.match.stream,
                h.match.excerpt.encode("unicode_escape").decode("ascii")[:120],
            ]
            for h in found.hits
        ],
    )  # fmt: skip


@app.command("verify")
def verify(
    ctx: typer.Context,
    session_id: str = typer.Argument(..., metavar="ID"),
    json_out: bool = JSON_OPTION,
) -> None:
    """Recompute the recording's SHA-256 and compare it with the audit chain's copy;
    exit 1 when anything changed."""
    r = client(ctx).post(f"/v1/sessions/{session_id}/verify", {}, VerifyOut)
    if json_out:
        output.print_json(r)
    elif r.ok:
        output.say(f"session {r.id}: intact (sha256 {r.sha256})")
    if not r.ok:
        changed = ", ".join(r.changed) or "the recording"
        raise FailedError(
            f"session {r.id}: the stored recording changed since it was indexed ({changed})",
            fix="treat it as tampered; the audit chain holds the original digest",
        )


@app.command("index")
def index(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Index the log server's store now (the daemon does it every sessions.index_interval)."""
    r = client(ctx).post("/v1/sessions/index", {}, IndexOut)
    if json_out:
        output.print_json(r)
        return
    output.say(
        f"{r.seen} recordings seen: {len(r.new)} new, {len(r.finished)} finished, "
        f"{len(r.quarantined)} quarantined ({r.bytes_read} bytes in {r.seconds:.2f}s)"
        + (f"; {r.backfilled} older ones added to the search index" if r.backfilled else "")
    )


@app.command("purge")
def purge(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Remove recordings older than sessions.retention_days now (audited)."""
    r = client(ctx).post("/v1/sessions/purge", {}, PurgeOut)
    if json_out:
        output.print_json(r)
        return
    output.say(f"purged {len(r.purged)} recording(s)")
