"""How a recording's user and node were learned: corroborated, or only the node's word.

A recording reaches the broker through sudo_logsrvd; its `log.json` names the user and
the node, and both are whatever the sending node's sudo says (root on any node can send
one naming another user on another node). The certificate of the tunnel that carried it
is checked by stunnel and then lost: sudo_logsrvd sees stunnel's loopback connection,
and neither program records which certificate a given session came through. So the
broker corroborates a recording with what it learned itself:

(a) the hook's `open` event for the same user (and grant), collected from that node's
    spool over the broker's own pinned SSH connection to that node, near the start; and
(b) a grant the broker put on that node for that user whose window holds the start (or
    the hook recorded a break-glass session).

A hook event's node is known for certain (the broker fetched it from that node); its
user is the node's word, corroborated only by a grant of that user on that node covering
the event. Pure: no I/O, so every rule here is tested without a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.core.timeutil import to_second_text

CORROBORATED = "corroborated"
UNCORROBORATED = "uncorroborated"
# Both times come from the node's clock, the hook's in whole seconds; the hook's open
# (PAM session) comes just before sudo starts the command and its recording. Kept short:
# a forgery timed inside it, naming a user who really opened a session then, passes.
SLACK = timedelta(seconds=15)
BREAK_GLASS = "break-glass"


@dataclass(frozen=True)
class Provenance:
    label: str  # corroborated | uncorroborated
    reason: str  # one line: the evidence, or what is missing

    @property
    def corroborated(self) -> bool:
        return self.label == CORROBORATED


@dataclass(frozen=True)
class HookOpen:
    """A session `open` event as collected from the node's spool over the pinned channel."""

    user: str
    grant_id: str | None
    at: datetime


@dataclass(frozen=True)
class GrantSpan:
    """A grant the broker put on the node, as the index found it for the claimed user."""

    id: str
    not_before: datetime
    not_after: datetime


def _no(reason: str) -> Provenance:
    return Provenance(UNCORROBORATED, reason)


def judge_recording(
    node: str | None,
    user: str | None,
    started: datetime | None,
    grant: GrantSpan | None,
    opens: Sequence[HookOpen],
    recordings: int = 1,
) -> Provenance:
    """Corroborated only when the node's own hook saw the same user open a session (under
    the same grant, or break-glass) within SLACK of the recording's start, a grant of that
    user on that node holds the start (break-glass needs none), and the `recordings` that
    name this node and user within SLACK are no more than the hook's opens there (one
    event never vouches for two recordings)."""
    if not node or not user or started is None:
        return _no("the recording names no node, user or start")
    near = [o for o in opens if o.user == user and abs(o.at - started) <= SLACK]
    if not near:
        return _no(f"no hook event from {node} for {user} at {to_second_text(started)}")
    if recordings > len(opens):
        # One sudo opens one PAM session: more recordings than opens in the window means
        # some were not made by that node's sudo; none of them is taken as evidence.
        return _no(
            f"{recordings} recordings of {user} on {node} near {to_second_text(started)}"
            f" but {len(opens)} hook event(s)"
        )
    if grant is None:
        if any(o.grant_id == BREAK_GLASS for o in near):
            return Provenance(CORROBORATED, f"{node}'s hook recorded a break-glass session")
        return _no(f"no grant of {user} on {node} at {to_second_text(started)}")
    if not grant.not_before <= started <= grant.not_after:
        return _no(f"grant {grant.id} does not cover {to_second_text(started)}")
    if not any(o.grant_id == grant.id for o in near):
        return _no(f"no hook event from {node} for {user} under grant {grant.id}")
    return Provenance(
        CORROBORATED, f"{node}'s hook opened a session of {user} under grant {grant.id}"
    )


def judge_hook(
    node: str, user: str, grant_id: str | None, at: datetime, grant: GrantSpan | None
) -> Provenance:
    """A hook event's user: corroborated when it names a grant the broker put on this
    node for this user whose window holds the event. A refused sudo or a break-glass
    session names no such grant, so its user stays the node's word."""
    if grant_id is None or grant_id in ("-", BREAK_GLASS):
        return _no(f"only {node}'s word for {user}: the event names no grant")
    if grant is None or grant.id != grant_id:
        return _no(f"no grant {grant_id} of {user} on {node}")
    if not grant.not_before <= at <= grant.not_after:
        return _no(f"grant {grant_id} does not cover {to_second_text(at)}")
    return Provenance(CORROBORATED, f"grant {grant_id} of {user} on {node} covers it")
