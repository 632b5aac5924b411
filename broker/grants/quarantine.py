"""Node quarantine: take everything elevated off a node and keep it off until released.

Order matters and fails closed: the quarantine is committed (and audited)
first, so from that moment the policy refuses new grants there to everybody
outside the incident-response group; then every grant on the node is revoked
(removed, sessions ended); then the marker goes to the node, whose PAM hook
then refuses elevation and gated logins on its own, even with a grant it
still holds. A node that cannot be reached keeps `marker = pending` and the
scheduler tries again; the grants' removal is retried by the reaper as always.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.audit import writer
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import expand
from broker.fleet import inventory, nodeprog
from broker.fleet import quarantine as state
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.grants.grantfile import validate_reason
from broker.grants.service import GrantService
from broker.store.db import Store

# The group names a node's quarantine marker carries (pam/broker_node/contract.py _GROUP_CHARS).
NODE_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class NodeMark:
    node: str
    ok: bool
    error: str | None


@dataclass(frozen=True)
class QuarantineResult:
    nodes: tuple[str, ...]
    revoked: tuple[str, ...]
    sessions_ended: int
    marks: tuple[NodeMark, ...]


class Quarantines:
    def __init__(
        self,
        store: Store,
        pool: Callable[[], SshPool],
        grants: Callable[[], GrantService],
        group: Callable[[], str | None],
    ) -> None:
        self._store = store
        self._pool = pool  # built on first use: listing needs no SSH
        self._grants = grants
        self._group = group  # the incident-response group of the active policy

    def listed(self) -> list[state.Quarantine]:
        """Every node under quarantine or being released, with its marker's state."""
        return state.quarantines(self._store.conn)

    def _targets(self, nodes: str | Sequence[str]) -> tuple[list[str], list[NodeTarget]]:
        names = expand(nodes) if isinstance(nodes, str) else list(nodes)
        targets = inventory.targets_known(self._store, names)
        unknown = sorted(set(names) - {t.name for t in targets})
        if unknown:
            raise UsageError(
                f"not enrolled nodes: {', '.join(unknown[:10])}",
                fix="see `broker node list`",
            )
        return names, targets

    def quarantine(
        self, nodes: str | Sequence[str], *, reason: str, actor: str, now: datetime
    ) -> QuarantineResult:
        reason = validate_reason(reason)
        names, targets = self._targets(nodes)
        with self._store.transaction() as conn:
            for name in names:
                state.hold(conn, name, reason=reason, actor=actor, now=now)
                writer.record(
                    conn,
                    writer.EventInput(actor, "node.quarantine", name, details={"reason": reason}),
                    now,
                )
        revoked: list[str] = []
        ended = 0
        grants = self._grants()
        for name in names:
            result = grants.revoke(
                node=name, actor=actor, reason=f"node {name} quarantined: {reason}"[:200],
                now=now, ended_by="quarantine",
            )  # fmt: skip
            revoked.extend(result.revoked)
            ended += sum(o.killed for o in result.outcomes)
        marks = self._place(targets, now)
        return QuarantineResult(tuple(names), tuple(revoked), ended, tuple(marks))

    def release(self, nodes: str | Sequence[str], *, actor: str, now: datetime) -> list[NodeMark]:
        names, targets = self._targets(nodes)
        current = {q.node for q in state.quarantines(self._store.conn)}
        missing = [n for n in names if n not in current]
        if missing:
            raise RefusedError(
                f"not quarantined: {', '.join(missing[:10])}", fix="see `broker node quarantined`"
            )
        with self._store.transaction() as conn:
            for name in names:
                state.start_release(conn, name, now)
                writer.record(conn, writer.EventInput(actor, "node.release", name), now)
        return self._place(targets, now)

    def retry(self, now: datetime) -> list[NodeMark]:
        """Markers (or their removal) that have not reached their node yet."""
        pending = [q.node for q in state.quarantines(self._store.conn) if q.marker == "pending"]
        if not pending:
            return []
        return self._place(inventory.targets_known(self._store, pending), now)

    def _place(self, targets: Sequence[NodeTarget], now: datetime) -> list[NodeMark]:
        """Put each node's marker in the state its row asks for; record how that went."""
        rows = {q.node: q for q in state.quarantines(self._store.conn)}
        group = self._group()
        if group is not None and not NODE_GROUP.fullmatch(group):
            # A name the node's marker cannot carry (a space): nobody is exempt there, which
            # fails closed; incident response then uses root or the console.
            group = None

        def one(target: NodeTarget) -> NodeMark:
            row = rows.get(target.name)
            if row is None:
                return NodeMark(target.name, True, None)
            if row.state == "releasing":
                reply = nodeprog.call(self._pool(), target, "release", {})
                done = (
                    reply.ok
                    and reply.data is not None
                    and isinstance(reply.data.get("released"), bool)
                    and reply.data.get("error") is None
                )
            else:
                payload = {"reason": row.reason, "since": _second(row.since), "group": group}
                reply = nodeprog.call(self._pool(), target, "quarantine", payload)
                done = reply.ok and reply.data is not None and reply.data.get("quarantined") is True
            if done:
                return NodeMark(target.name, True, None)
            said = reply.data.get("error") if reply.data is not None else None
            return NodeMark(target.name, False, str(said or reply.error or "no answer")[:300])

        marks: list[NodeMark] = self._pool().map(one, list(targets))
        with self._store.transaction() as conn:
            for mark in marks:
                row = rows.get(mark.node)
                if row is None:
                    continue
                if mark.ok and row.state == "releasing":
                    state.released(conn, mark.node)
                else:
                    state.record_marker(
                        conn, mark.node, row.state, placed=mark.ok, error=mark.error, now=now
                    )
        return marks


def _second(text: str) -> str:
    """The node's marker carries whole seconds, as its hook prints times."""
    return text[:19] + "Z"
