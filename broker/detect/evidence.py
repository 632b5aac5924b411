"""What an alert's automatic action may rest on. Pure: the responder asks, then acts or not.

A finding is built from one of three kinds of evidence:

- the broker's own events (grants it issued, MFA codes it checked, refusals it made):
  every action the rule names is carried out;
- a hook event the broker collected from a node's spool over its pinned SSH connection
  (`session.open`, `deny`, `escape`, ...): the node it came from is certain, the user in
  it is the node's word. Actions on that node (quarantine it, end its sessions) are
  carried out; actions on the user (lock MFA, revoke grants) only when the user is
  corroborated (a grant of that user on that node covers the event);
- a recording (session content, and the drift check of a finished session): both user
  and node are whatever the sending node's sudo wrote. Every action waits for the
  recording to be corroborated (sessions/provenance.py); an uncorroborated one raises
  its alert and acts on nobody, since even the node it names may be the victim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.sessions.provenance import Provenance

# The hook events the collector stores, each audited with actor `node:NAME` of the node
# whose spool it was collected from (sessions/collect.py).
HOOK_ACTIONS = frozenset(
    {"session.open", "session.close", "session.deny", "session.usage", "session.escape"}
)
# Events the broker writes (actor `broker`) whose verdict rests on a node's report alone:
# `grant.drop_in` says what the node said its drop-in is. Only the reporting node may be
# acted on, never a user (root there could otherwise revoke every user holding a grant).
NODE_REPORTS = frozenset({"grant.drop_in"})
USER_ACTIONS = frozenset({"lock_mfa", "revoke_grants"})
NODE_ACTIONS = frozenset({"quarantine_node", "end_session"})


@dataclass(frozen=True)
class Basis:
    """Where an alert's subject came from."""

    kind: str  # broker | hook | recording | node-report
    recording_id: str | None = None
    reporter: str | None = None  # hook: the node the event was collected from


def basis_of(
    source: str,
    recording_id: str | None,
    actor: str | None,
    action: str | None,
    details: Mapping[str, object] | None = None,
) -> Basis:
    """From the alert's source (`session:ID:...` or `audit:SEQ`) and, for an audit source,
    the audit event's actor, action and details."""
    if action in NODE_REPORTS:  # the broker's event, the node's verdict (review finding)
        node = (details or {}).get("node")
        return Basis("node-report", reporter=node if isinstance(node, str) else None)
    if source.startswith("session:"):
        return Basis("recording", recording_id or source.split(":")[1])
    if action == "session.recorded":  # its actor names the node sudo claimed: not certain
        return Basis("recording", recording_id)
    if action in HOOK_ACTIONS and actor is not None and actor.startswith("node:"):
        return Basis("hook", reporter=actor[5:])
    return Basis("broker")


def action_node(kind: str, target: str) -> str:
    """The node a node action targets (end_session's target is `node:grant`)."""
    return target.partition(":")[0] if kind == "end_session" else target


def withheld(kind: str, target: str, basis: Basis, proof: Provenance | None) -> str | None:
    """Why the action must not be carried out, in one line; None: carry it out. `proof` is
    the recording's provenance (recording basis) or the hook event user's (hook basis)."""
    if basis.kind == "broker":
        return None
    if basis.kind == "node-report":
        if kind in NODE_ACTIONS and action_node(kind, target) == basis.reporter:
            return None
        return f"withheld: only {basis.reporter or 'a node'}'s report speaks for {target}"
    if basis.kind == "recording":
        if proof is not None and proof.corroborated:
            return None
        why = proof.reason if proof is not None else "the recording is not indexed"
        return f"withheld: session {basis.recording_id} is uncorroborated ({why})"
    if kind in NODE_ACTIONS:
        node = action_node(kind, target)
        if node == basis.reporter:
            return None
        return f"withheld: {node} is not the node that reported this ({basis.reporter})"
    if kind in USER_ACTIONS and proof is not None and proof.corroborated:
        return None
    why = proof.reason if proof is not None else f"only {basis.reporter}'s word"
    return f"withheld: {target} is uncorroborated ({why})"
