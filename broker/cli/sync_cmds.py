"""`broker sync`: bring the directory snapshot up to date with Active Directory."""

from __future__ import annotations

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.wire.directory import SyncOut


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
    r = client(ctx).post("/v1/directory/sync", {"full": full}, SyncOut)
    if json_out:
        output.print_json(r)
        return
    changes = r.changes
    output.say(
        f"{r.kind} sync from {r.dc} (USN {r.usn}): {r.users} users, "
        f"{r.groups} groups, {r.rows_written} rows written, "
        f"{len(changes)} access changes, {r.elapsed_s:.2f}s ({r.reason})"
    )
    if changes:
        output.table(
            None,
            ["change", "user", "group", "before", "after"],
            [[c.action, c.user, c.group, c.before, c.after] for c in changes[:200]],
        )
        if len(changes) > 200:
            output.say(f"... and {len(changes) - 200} more (see `broker audit tail`)")
    for reason in r.skipped:
        output.warn(f"skipped: {reason}")
    if r.revoked:
        output.say(f"revoked grants no longer allowed: {', '.join(r.revoked)}")
