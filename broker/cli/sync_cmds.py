"""`broker sync`: bring the directory snapshot up to date with Active Directory."""

from __future__ import annotations

import typer

from broker.app import local_actor
from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.directory.sync import SyncReport


def report_json(report: SyncReport) -> dict[str, object]:
    return {
        "kind": report.kind,
        "reason": report.reason,
        "dc": report.dc,
        "usn": report.usn,
        "users": report.users,
        "groups": report.groups,
        "rows_written": report.rows_written,
        "elapsed_s": round(report.elapsed_s, 3),
        "skipped": report.skipped,
        "changes": [
            {
                "action": c.action,
                "user": c.user,
                "sid": c.user_sid,
                "group": c.group,
                "before": c.before,
                "after": c.after,
            }
            for c in report.changes
        ],
    }


def sync(
    ctx: typer.Context,
    full: bool = typer.Option(
        False, "--full", help="Read everything, not only what changed since the last sync."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Read AD (users, groups, account state, POSIX ids) into the snapshot, in one transaction.

    Incremental by default (changes since the last USN of the same DC). Every
    change that matters for access is an audit event. Exit 3 when no DC can be
    used; the last good snapshot is then left as it was.
    """
    report = state(ctx).app().sync_directory(local_actor(), full=full)
    if json_out:
        output.print_json(report_json(report))
        return
    output.say(
        f"{report.kind} sync from {report.dc} (USN {report.usn}): {report.users} users, "
        f"{report.groups} groups, {report.rows_written} rows written, "
        f"{len(report.changes)} access changes, {report.elapsed_s:.2f}s ({report.reason})"
    )
    if report.changes:
        output.table(
            None,
            ["change", "user", "group", "before", "after"],
            [[c.action, c.user, c.group, c.before, c.after] for c in report.changes[:200]],
        )
        if len(report.changes) > 200:
            output.say(f"... and {len(report.changes) - 200} more (see `broker audit tail`)")
    for reason in report.skipped:
        output.warn(f"skipped: {reason}")
