"""Drop-in integrity: is each live grant's sudoers drop-in on its node what the broker
pushed, and does sudo read it? (docs/grants.md "Drop-in integrity")

sudo skips a drop-in that is world-writable, not root's or not a regular file, without a
word: `chmod 666 /etc/sudoers.d/broker_<id>` would leave a grant that the hook accepts
and sudo no longer has. The node reports each drop-in (owner, mode, sha256); `judge`
compares that with the sha256 recorded at push time. A grant whose drop-in is missing,
changed or ignored is `broken` on that node (not live), one `grant.drop_in` audit event
marks each change of verdict (the detector raises `drop-in-tampered` from it), and with
`grants.drop_in_integrity = "repair"` the scheduler pushes the grant there again.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal

from broker.audit import writer
from broker.core.hostlist import fold
from broker.fleet import inventory
from broker.fleet import status as fleet_status
from broker.fleet.dropins import DropIn, DropInReport
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.fleet.status import NodeStatus
from broker.grants import rows
from broker.grants.delivery import Delivery
from broker.grants.model import GrantNode
from broker.store.db import Store

log = logging.getLogger("broker.grants")

PUSHED_MODE = 0o440
# Not repaired, only reported: the node's root removing a grant file is a deliberate act
# (local incident response); pushing it back would restore the root it took away.
GRANT_FILE_MISSING = "grant file missing on the node: the hook refuses sudo (not re-pushed)"
IntegrityPolicy = Literal["repair", "alert"]


def sudo_ignores(uid: int | None, gid: int | None, mode: int | None) -> str | None:
    """Why sudo skips a regular drop-in with this owner and mode (its checks of an included
    file), computed here from the numbers rather than taken from the node's words."""
    if uid != 0:
        return f"drop-in owned by uid {uid}: sudo ignores it"
    if mode is None:
        return "drop-in mode unknown: sudo may ignore it"
    if mode & 0o002:
        return f"drop-in mode {mode:04o}: sudo ignores it"
    if mode & 0o020 and gid != 0:
        return f"drop-in mode {mode:04o}, group {gid}: sudo ignores it"
    return None


def judge(grant_id: str, pushed_sha256: str | None, report: DropInReport) -> str | None:
    """Why this grant's drop-in on the node is not the one pushed and read by sudo; None
    when it is. A report that cannot be used is a problem, never "fine"."""
    if report is None or isinstance(report, str):
        return f"the node's drop-in report is unusable: {report or 'none given'}"
    found: DropIn | None = report.get(grant_id)
    if found is None:
        return GRANT_FILE_MISSING
    if not found.present:
        return "drop-in missing: sudo has no rule"
    if found.kind == "symlink":
        return "drop-in replaced by a symbolic link"
    if found.kind != "file":
        return "drop-in is not a regular file: sudo ignores it"
    ignored = sudo_ignores(found.uid, found.gid, found.mode)
    if ignored is not None:
        return ignored
    if not found.honoured:
        return f"sudo ignores the drop-in (the node says: {found.problem or 'no reason'})"
    if found.sha256 is None:
        return found.problem or "drop-in content unreadable"
    if pushed_sha256 is not None and found.sha256 != pushed_sha256:
        return (
            f"drop-in changed on the node (sha256 {found.sha256[:12]}, pushed {pushed_sha256[:12]})"
        )
    if found.mode != PUSHED_MODE:
        return f"drop-in mode {found.mode:04o}, pushed {PUSHED_MODE:04o}"
    return None


def _answered(status: NodeStatus) -> bool:
    """The node program answered (unreachable nodes cannot be judged either way)."""
    return status.reachable and (status.hook_version is not None or status.sudo_flavour is not None)


class DropInCheck:
    def __init__(
        self,
        *,
        store: Store,
        pool: Callable[[], SshPool],
        delivery: Callable[[], Delivery],
        policy: IntegrityPolicy,
        max_skew: timedelta,
    ) -> None:
        self._store = store
        self._pool = pool  # built on first use: a daemon without live grants needs no SSH
        self._delivery = delivery  # needs the signing key: only repair builds it
        self._policy = policy
        self._max_skew = max_skew

    def observe(
        self, statuses: Sequence[NodeStatus], *, actor: str, now: datetime
    ) -> list[NodeStatus]:
        """Judge each answered node's drop-ins against the store, record the verdicts (one
        audit event per change) and return the statuses with `drop_in_problems` filled."""
        out: list[NodeStatus] = []
        for status in statuses:
            try:
                problems = self._observe_one(status, actor, now) if _answered(status) else []
            except Exception:  # one node's failure is that node's, never the others'
                log.exception("drop-in check of %s failed", status.node)
                problems = ["drop-in check failed on the broker (see its log)"]
            shown = "; ".join([status.problem or "", *(f"grant {p}" for p in problems)])
            out.append(
                dataclasses.replace(
                    status, drop_in_problems=tuple(problems), problem=shown.strip("; ") or None
                )
            )
        return out

    def _observe_one(self, status: NodeStatus, actor: str, now: datetime) -> list[str]:
        held = rows.live_grant_nodes(
            self._store.conn, nodes=[status.node], until=now + self._max_skew
        )
        if held and status.drop_ins is None:
            return [
                "the node program does not report drop-ins (older than the broker):"
                f" run `broker node bootstrap {status.node}`"
            ]
        problems: list[str] = []
        with self._store.transaction() as conn:
            for row in held:
                problem = judge(row.grant_id, row.drop_in_sha256, status.drop_ins)
                if problem is not None:
                    problems.append(f"{row.grant_id}: {problem}")
                self._record(conn, row, problem, actor, now)
        return problems

    def _record(
        self,
        conn: sqlite3.Connection,
        row: GrantNode,
        problem: str | None,
        actor: str,
        now: datetime,
    ) -> None:
        """Store the verdict (unless a push changed the row meanwhile); audit a change."""
        changed = conn.execute(
            "SELECT 1 FROM grant_nodes WHERE grant_id = ? AND node = ? AND state = 'live'"
            " AND drop_in_sha256 IS NOT DISTINCT FROM ? AND drop_in_problem IS DISTINCT FROM ?",
            (row.grant_id, row.node, row.drop_in_sha256, problem),
        ).fetchone()
        rows.set_drop_in_problem(conn, row, problem, now)
        if changed is None:
            return
        grant = rows.grant(conn, row.grant_id)
        details: dict[str, object] = {"node": row.node, "problem": problem}
        details["user"] = grant.user if grant is not None else None
        if problem is not None:
            details["response"] = self._policy
        writer.record(
            conn,
            writer.EventInput(
                actor, "grant.drop_in", row.grant_id,
                outcome="failed" if problem is not None else "ok", details=details,
            ),
            now,
        )  # fmt: skip

    def sweep(self, now: datetime) -> list[NodeStatus]:
        """The scheduler's periodic check: every node holding live grants, asked in
        parallel; a node that fails is that node's problem only."""
        held = rows.live_grant_nodes(self._store.conn, nodes=None, until=now + self._max_skew)
        names = sorted({row.node for row in held})
        if not names:
            return []
        pool, skew = self._pool(), self._max_skew.total_seconds()

        def one(target: NodeTarget) -> NodeStatus | None:
            try:
                return fleet_status.probe(pool, target, skew)
            except Exception:  # one node's failure is that node's, never the others'
                log.exception("drop-in check: status of %s failed", target.name)
                return None

        found = [s for s in pool.map(one, inventory.targets_known(self._store, names)) if s]
        return self.observe(found, actor="broker", now=now)

    def repair(self, now: datetime) -> list[str]:
        """With policy "repair": push each grant again to the nodes where its drop-in is
        broken (grant@node repaired). With "alert" the nodes are left as found."""
        if self._policy != "repair":
            return []
        broken: dict[str, list[str]] = {}
        for row in rows.live_grant_nodes(self._store.conn, nodes=None, until=now + self._max_skew):
            if row.drop_in_problem not in (None, GRANT_FILE_MISSING):
                broken.setdefault(row.grant_id, []).append(row.node)
        repaired: list[str] = []
        for grant_id, nodes in broken.items():
            try:
                repaired += self._repair_one(grant_id, nodes, now)
            except Exception:  # one grant's failure never stops the others
                log.exception("repairing the drop-in of %s failed", grant_id)
        return repaired

    def _repair_one(self, grant_id: str, nodes: list[str], now: datetime) -> list[str]:
        grant = rows.grant(self._store.conn, grant_id)
        if grant is None or grant.state != "active":
            return []
        targets = inventory.targets_known(self._store, nodes)
        # Pushed first, audited with the outcome: a push that cannot even start (no signing
        # key) writes nothing each tick, and a node that keeps failing is named once a tick
        # in one event, with the push's own grant.push event beside it.
        outcomes = self._delivery().push(grant, targets, now, None)
        with self._store.transaction() as conn:
            writer.record(
                conn,
                writer.EventInput(
                    "broker",
                    "grant.repair",
                    grant_id,
                    outcome="ok" if all(o.ok for o in outcomes) else "failed",
                    details={
                        "nodes": fold(nodes),
                        "failed": {o.node: o.error for o in outcomes if not o.ok},
                    },
                ),
                now,
            )
        return [f"{grant_id}@{o.node}" for o in outcomes if o.ok]
