"""Which notices a request's change produces, to whom, and what they say.

`RequestNotices.queue` is called by the grant flows inside the transaction that stores the
request or its decision, so a notice exists exactly when the change does and no receiver
can delay or block the request: sending happens later (deliver.py). A new request goes to
the role's approvers (members of its approver groups who could approve it now, never the
requester); an approval, denial or expiry goes to the requester. Every text is built from
values the broker already validated (names, ids, hostlists, the printable reason).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol

from broker.config.notify import NotifySection, email_problem
from broker.core.identity import Account, Snapshot
from broker.core.timeutil import to_sentence, to_text
from broker.notify import outbox
from broker.policy.evaluate import state_at

log = logging.getLogger("broker.notify")


class RequestFacts(Protocol):
    """What a notice says about a request (the grants model's Request has all of it)."""

    @property
    def id(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def sid(self) -> str: ...
    @property
    def nodes(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def duration_s(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def approvals_needed(self) -> int: ...
    @property
    def approver_groups(self) -> tuple[str, ...]: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def decided_by(self) -> str | None: ...
    @property
    def decision_reason(self) -> str | None: ...
    @property
    def grant_id(self) -> str | None: ...


def approve_command(request_id: str) -> str:
    """The exact command an approver runs."""
    return f"broker approve {request_id}"


def address_of(account: Account, cfg: NotifySection) -> str | None:
    """The account's mail address under the site's mapping, or None when it has none."""
    address = cfg.email_addresses.get(account.name)
    if address is None:
        if cfg.email_from == "domain":
            address = f"{account.name}@{cfg.email_domain}"
        else:
            address = account.upn
    if address is None or email_problem(address) is not None:
        return None
    return address


def approvers(request: RequestFacts, snapshot: Snapshot, now: datetime) -> list[Account]:
    """Who could approve the request now: eligible members of its approver groups, never
    the requester (the same rule the approval itself applies)."""
    groups = set(request.approver_groups)
    found = [
        a
        for a in snapshot.accounts()
        if a.eligible
        and a.sid != request.sid
        and state_at(a, now) == "enabled"
        and groups & a.groups
    ]
    return sorted(found, key=lambda a: a.name)


def _text(kind: str, request: RequestFacts) -> tuple[str, str]:
    """(subject, body) of a notice."""
    minutes = timedelta(seconds=request.duration_s)
    facts = (
        f"Request:  {request.id}\nUser:     {request.user}\nRole:     {request.role}\n"
        f"Nodes:    {request.nodes}\nDuration: {minutes}\nReason:   {request.reason}\n"
    )
    if kind == "requested":
        subject = f"broker: {request.user} asks for {request.role} ({request.id})"
        body = (
            f"{request.user} asks for {request.role} on {request.nodes}; "
            f"{request.approvals_needed} approval(s) needed before "
            f"{to_sentence(request.expires_at)}.\n\n{facts}\n"
            f"To approve:  {approve_command(request.id)}\n"
            f'To deny:     broker deny {request.id} --reason "why"\n'
        )
    elif kind == "approved":
        subject = f"broker: your request {request.id} was approved"
        body = f"Your request was approved; grant {request.grant_id} is issued.\n\n{facts}"
    elif kind == "denied":
        subject = f"broker: your request {request.id} was denied"
        body = f"{request.decided_by} denied your request: {request.decision_reason}\n\n{facts}"
    else:
        subject = f"broker: your request {request.id} expired"
        body = (
            f"Your request expired at {to_sentence(request.expires_at)} without enough"
            f" approvals; elevate again if you still need it.\n\n{facts}"
        )
    return subject, body


def _event(kind: str, request: RequestFacts, recipients: Iterable[str], now: datetime) -> str:
    """The Standard Webhooks event body: type, timestamp and data, canonical JSON."""
    data = {
        "request_id": request.id,
        "user": request.user,
        "role": request.role,
        "nodes": request.nodes,
        "duration_s": request.duration_s,
        "reason": request.reason,
        "approvals_needed": request.approvals_needed,
        "approver_groups": list(request.approver_groups),
        "expires_at": to_text(request.expires_at),
        "notify": sorted(recipients),
    }
    if kind == "requested":
        data["approve_command"] = approve_command(request.id)
    else:
        data.update(decided_by=request.decided_by, decision_reason=request.decision_reason)
        data["grant_id"] = request.grant_id
    body = {"type": f"request.{kind}", "timestamp": to_text(now), "data": data}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class RequestNotices:
    """Queues the notices of request changes under the [notify] settings."""

    def __init__(self, cfg: NotifySection) -> None:
        self._cfg = cfg

    def queue(
        self,
        conn: sqlite3.Connection,
        kind: str,
        request: RequestFacts,
        snapshot: Snapshot,
        now: datetime,
    ) -> int:
        """Queue the notices of one change (inside its transaction); returns how many."""
        if kind not in outbox.KINDS:
            raise ValueError(f"unknown notice kind {kind!r}")
        channels = self._cfg.channels
        if not channels:
            return 0
        if kind == "requested":
            people = approvers(request, snapshot, now)
        else:
            requester = snapshot.account(request.user)
            people = [] if requester is None else [requester]
        subject, body = _text(kind, request)
        event = _event(kind, request, (p.name for p in people), now)
        queued = 0
        common = {"request_id": request.id, "kind": kind, "subject": subject, "text": body}
        if "webhook" in channels:
            outbox.insert(conn, channel="webhook", recipient="", event=event, now=now, **common)
            queued += 1
        if "email" in channels:
            for person in people:
                address = address_of(person, self._cfg)
                if address is None:
                    log.warning("request %s: %s has no mail address", request.id, person.name)
                    continue
                outbox.insert(
                    conn, channel="email", recipient=address, event=event, now=now, **common
                )
                queued += 1
        return queued
