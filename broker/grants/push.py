"""Put a grant on its nodes and take it off again, in parallel, over the pooled SSH connections.

Per node, install is one SSH command: the node's signed grant file and the
rendered drop-in go to `broker-node install-grant` with the broker's clock;
the node refuses when its own clock differs by more than `ssh.max_skew`
(naming the skew), checks both files, renames them into place and confirms
with `sudo -l -U USER` that the rule is live. Removal is
`broker-node revoke`, which also ends the grant's running sessions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.core import counters
from broker.fleet import nodeprog
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.grants.grantfile import GrantFile, encode_signed
from broker.grants.model import Grant
from broker.sudoers.render import SudoersGrant, check_hosts, render_grant

log = logging.getLogger("broker.grants")


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    ok: bool
    error: str | None
    elapsed_ms: float
    killed: int = 0  # sessions' processes ended (removal)
    drop_in_sha256: str | None = None  # of the drop-in text sent (install that landed)


def log_server(listen: str, port: int, target: NodeTarget) -> str:
    """The node tunnel's address that `log_servers` names (sessions.node_listen)."""
    return f"{target.host if listen == 'node-address' else '127.0.0.1'}:{port}"


def drop_in_text(grant: Grant, node: str, log_server: str) -> str:
    """The grant's sudoers drop-in for `node`: its rule names the node as the host, as the
    signed grant file names it for the PAM module."""
    return render_grant(
        SudoersGrant(
            grant_id=grant.id,
            user=grant.user,
            runas=grant.runas,
            host=node,
            not_before=grant.not_before,
            not_after=grant.not_after,
            command_sets=grant.command_sets,
            log_server=log_server,
        )
    )


def check_drop_ins(grant: Grant, nodes: Sequence[str], log_server: str) -> None:
    """UsageError unless every node's drop-in can be rendered: rendered once, and each node
    name checked as the host field (the only part that differs between the copies)."""
    drop_in_text(grant, nodes[0], log_server)
    check_hosts(nodes)


def grant_file_text(grant: Grant, node: str, key: Ed25519PrivateKey, issued_at: datetime) -> str:
    return encode_signed(
        GrantFile(
            id=grant.id,
            node=node,
            user=grant.user,
            runas=grant.runas,
            commands=grant.commands,
            not_before=grant.not_before,
            not_after=grant.not_after,
            login=grant.login,
            workloads=grant.workloads,
            max_sessions=grant.max_sessions,
            policy_sha256=grant.policy_sha256,
            approvers=grant.approvers,
            reason=grant.reason,
            issued_at=issued_at.replace(microsecond=0),
        ),
        key,
    )


# Called as each node's outcome arrives (the CLI's progress bar).
Progress = Callable[[NodeOutcome], None]


def install(
    pool: SshPool,
    targets: Sequence[NodeTarget],
    grant: Grant,
    key: Ed25519PrivateKey,
    *,
    max_skew: timedelta,
    log_listen: str,
    log_port: int,
    now: datetime,
    on_done: Callable[[NodeOutcome], None] | None = None,
) -> list[NodeOutcome]:
    """Install on every target in parallel; outcomes in target order."""

    def one(target: NodeTarget) -> NodeOutcome:
        started = time.monotonic()
        sent: list[str] = []  # the drop-in's sha256, once rendered
        try:
            problem = attempt(target, sent)
        except Exception as exc:  # one node's failure is that node's result, never the grant's
            log.exception("pushing %s to %s failed", grant.id, target.name)
            problem = f"{target.name}: {type(exc).__name__}: {exc}"[:500]
        outcome = NodeOutcome(
            target.name, problem is None, problem, (time.monotonic() - started) * 1000,
            drop_in_sha256=sent[0] if sent and problem is None else None,
        )  # fmt: skip
        if problem is not None:
            counters.bump(counters.PUSH_INSTALL_FAILED)
        if on_done is not None:
            on_done(outcome)
        return outcome

    def attempt(target: NodeTarget, sent: list[str]) -> str | None:
        sudoers = drop_in_text(grant, target.name, log_server(log_listen, log_port, target))
        # What the node must hold from now on: drop-in integrity compares against it.
        sent.append(hashlib.sha256(sudoers.encode("ascii")).hexdigest())
        payload = {
            "id": grant.id,
            "user": grant.user,
            "grant": grant_file_text(grant, target.name, key, now),
            "sudoers": sudoers,
            # The node compares its clock with ours before it writes anything.
            "broker_time": time.time(),
            "max_skew": max_skew.total_seconds(),
        }
        reply = nodeprog.call(pool, target, "install-grant", payload)
        return _install_problem(target.name, reply)

    return list(pool.map(one, targets))


def _install_problem(node: str, reply: nodeprog.NodeReply) -> str | None:
    if not reply.ok or reply.data is None:
        return _short(reply.error or f"{node}: the node program failed")
    data = reply.data
    if data.get("ok") is not True:
        return f"{node}: {_short(data.get('error') or 'install refused by the node')}"
    if data.get("live") is not True:
        return f"{node}: installed, but `sudo -l` on the node does not show the rule"
    return None


def _short(value: object, limit: int = 300) -> str:
    """Text from a node, as it may reach the audit chain and a terminal: one printable line,
    bounded (a node is not trusted to be brief or tidy)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def remove(
    pool: SshPool,
    targets: Sequence[NodeTarget],
    ids_by_node: Mapping[str, Sequence[str]],
    *,
    on_done: Callable[[NodeOutcome], None] | None = None,
    ended_by: str = "revoke",
) -> list[NodeOutcome]:
    """Remove grants (and end their sessions) on every target in parallel; `ended_by`
    (revoke or quarantine) is what the sessions' close events will say."""
    payload_extra = {} if ended_by == "revoke" else {"ended_by": ended_by}

    def one(target: NodeTarget) -> NodeOutcome:
        started = time.monotonic()
        try:
            problem, killed = attempt(target)
        except Exception as exc:  # one node never aborts the others, nor the scheduler
            log.exception("removing grants from %s failed", target.name)
            problem, killed = _short(f"{target.name}: {type(exc).__name__}: {exc}"), 0
        outcome = NodeOutcome(
            target.name, problem is None, problem, (time.monotonic() - started) * 1000, killed
        )
        if problem is not None:
            counters.bump(counters.PUSH_REMOVE_FAILED)
        if on_done is not None:
            on_done(outcome)
        return outcome

    def attempt(target: NodeTarget) -> tuple[str | None, int]:
        payload = {"ids": list(ids_by_node.get(target.name, ())), **payload_extra}
        reply = nodeprog.call(pool, target, "revoke", payload)
        if not reply.ok or reply.data is None:
            return _short(reply.error or f"{target.name}: the node program failed"), 0
        revoked, errors, killed = (reply.data.get(k) for k in ("revoked", "errors", "killed"))
        if not all(isinstance(v, list) for v in (revoked, errors, killed)):
            return f"{target.name}: malformed reply from the node program", 0
        assert isinstance(errors, list) and isinstance(killed, list)
        if errors:
            return f"{target.name}: " + _short("; ".join(str(e) for e in errors)), len(killed)
        return None, len(killed)

    return list(pool.map(one, targets))
