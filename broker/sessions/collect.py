"""Collect the PAM hook's events (session open/close, refused sudo) from node spools, store
them, then ack.

An event is deleted from a node only after the transaction that stored it
has committed (at-least-once delivery; `UNIQUE (node, event_id)` makes a
second delivery a no-op), so a broker crash between the two loses nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from broker.audit import writer
from broker.fleet import nodeprog
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.sessions import rows
from broker.sessions.rows import SessionEvent
from broker.store.db import Store

log = logging.getLogger("broker.sessions")

_KINDS = ("open", "close", "deny", "usage", "escape")
ENDED_BY = frozenset({"exit", "revoke", "expiry", "quarantine", "end-session"})
_COUNT_MAX = 1 << 62
# A refused sudo has no grant: the hook writes "-" there (the JSON format stays the same).
_NO_GRANT = "-"
_TEXT_MAX = 256
_PID_MAX = 2**22  # the kernel's largest pid_max
# The node's time of the event: UTC, whole seconds (contract.format_utc, bk_format_utc)
_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
# Why a node refused a sudo (docs/grants.md): the PAM module's codes, `workloads` for a job
# launch refused while its user holds root, and `log_server` from the node's watcher (a sudo
# the module allowed that its log server then refused, under the grant it was allowed by).
# Anything else is stored as "other".
DENY_REASONS = frozenset(
    {
        "no_grant", "expired", "not_yet_valid", "revoked", "bad_signature", "other_node",
        "quarantined", "max_sessions", "bad_file", "bad_config", "no_user", "uncontained",
        "log_server", "workloads",
    }
)  # fmt: skip


def parse_event(node: str, raw: Mapping[str, Any]) -> SessionEvent | None:
    """A checked event, or None for anything malformed (a node is not trusted to be tidy)."""
    try:
        event_id, kind, user = str(raw["event_id"]), str(raw["kind"]), str(raw["user"])
        grant_id = raw.get("grant_id")
        pid = raw["pid"]
        at = str(raw["at"])
        texts = [event_id, user, str(raw["runas"]), str(raw["service"]), str(raw["tty"]), at]
    except (KeyError, TypeError, ValueError):
        return None
    # A pid is a JSON integer within the kernel's pid_max (2^22): not a float, a bool or a
    # number SQLite cannot store (one such event must not stall a node's whole spool).
    if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= _PID_MAX):
        return None
    if kind not in _KINDS or not _AT.fullmatch(at) or not all(_clean(t) for t in texts):
        return None
    if grant_id is not None and not (isinstance(grant_id, str) and _clean(grant_id)):
        return None
    if kind == "deny" and grant_id == _NO_GRANT:
        grant_id = None
    reason = raw.get("reason") if kind == "deny" else None
    if reason is not None:
        reason = reason if isinstance(reason, str) and reason in DENY_REASONS else "other"
    return SessionEvent(
        node, event_id, kind, grant_id, user, texts[2], texts[3], texts[4], pid, at, reason,
        **_containment(kind, raw),
    )  # fmt: skip


def _containment(kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of close, usage and escape events, each checked; what fails a check is
    left out (None), never stored as the node said it."""
    if kind not in ("close", "usage", "escape"):
        return {}
    ended_by = raw.get("ended_by")
    contained = raw.get("contained")
    detail = None
    if kind == "escape":
        how, group = raw.get("how"), raw.get("cgroup")
        if isinstance(how, str) and _clean(how) and len(how) <= 80:
            detail = how
            if isinstance(group, str) and _CGROUP.fullmatch(group):
                detail += f" (cgroup {group})"
    elif kind == "usage" and isinstance(raw.get("cgroup"), str):
        detail = raw["cgroup"] if _CGROUP.fullmatch(raw["cgroup"]) else None
    return {
        "ended_by": ended_by if ended_by in ENDED_BY else None,
        "killed": _count(raw.get("killed")),
        "contained": contained if isinstance(contained, bool) else None,
        "cpu_usec": _count(raw.get("cpu_usec")),
        "memory_peak": _count(raw.get("memory_peak")),
        "pids_peak": _count(raw.get("pids_peak")),
        "session_pid": _count(raw.get("session_pid")),
        "detail": detail,
    }


# A session cgroup's name on the node: <grant or break-glass>-<pid>-<ticks>.
_CGROUP = re.compile(r"(g[0-9a-f]{16}|break-glass)-[0-9]{1,10}-[0-9]{1,20}")


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _COUNT_MAX:
        return value
    return None


def _clean(text: str) -> bool:
    return 0 < len(text) <= _TEXT_MAX and text.isprintable()


def store_events(
    store: Store,
    node: str,
    events: Sequence[SessionEvent],
    malformed: Sequence[str],
    now: datetime,
) -> int:
    """Insert new events with one audit event each; returns how many.

    Open/close are `session.open`/`session.close`; a sudo the hook refused is
    `session.deny` with outcome `refused`. An event naming a grant the broker never put
    on this node is kept, its audit event saying `known_grant: false`; malformed ones are
    audited (by id) before the node may delete them.
    """
    added = 0
    with store.transaction() as conn:
        known = rows.grants_on_node(conn, node)
        for e in events:
            if rows.insert_event(conn, e, now):
                added += 1
                writer.record(conn, _event_audit(e, known), now)
        if malformed:
            writer.record(
                conn,
                writer.EventInput(
                    f"node:{node}",
                    "session.malformed",
                    node,
                    outcome="refused",
                    details={"event_ids": [i[:80] for i in malformed[:100]]},
                ),
                now,
            )
    return added


def _event_audit(e: SessionEvent, known: set[str]) -> writer.EventInput:
    """The audit event of one newly stored hook event."""
    return writer.EventInput(
        f"node:{e.node}",
        f"session.{e.kind}",
        e.grant_id or "-",
        # An escape is containment that failed: the detector turns it into an alert.
        outcome={"deny": "refused", "escape": "failed"}.get(e.kind, "ok"),
        details={
            # False: a grant the broker never put on this node (or none:
            # a break-glass session, grant_id "break-glass").
            "known_grant": e.grant_id in known,
            "break_glass": e.grant_id == "break-glass",
            "user": e.user,
            "runas": e.runas,
            "tty": e.tty,
            "pid": e.pid,
            "at": e.at,
            "service": e.service,
            **({"reason": e.reason} if e.reason is not None else {}),
            **_containment_details(e),
        },
    )


def _containment_details(e: SessionEvent) -> dict[str, Any]:
    """How a session ended and what it used, when the node said (docs/elevation.md)."""
    if e.kind == "escape":
        return {"session_pid": e.session_pid, "how": e.detail}
    if e.kind not in ("close", "usage"):
        return {}
    found = {
        "ended_by": e.ended_by or ("exit" if e.kind == "close" else None),
        "killed": e.killed,
        "contained": e.contained,
        "cpu_usec": e.cpu_usec,
        "memory_peak": e.memory_peak,
        "pids_peak": e.pids_peak,
    }
    return {k: v for k, v in found.items() if v is not None}


def collect(
    store: Store, pool: SshPool, targets: Sequence[NodeTarget], now: datetime
) -> dict[str, int]:
    """node -> events newly stored; a node that does not answer, or answers nonsense, is
    tried next time (and never stops the others)."""
    stored: dict[str, int] = {}
    for target in targets:
        try:
            stored[target.name] = _collect_one(store, pool, target, now)
        except Exception:  # a node's reply is not trusted to be well-formed
            log.exception("collecting session events from %s failed", target.name)
    return stored


def _collect_one(store: Store, pool: SshPool, target: NodeTarget, now: datetime) -> int:
    reply = nodeprog.call(pool, target, "collect", None)
    if not reply.ok or reply.data is None:
        return 0
    raw = reply.data.get("events")
    if not isinstance(raw, list):
        return 0
    events: list[SessionEvent] = []
    malformed: list[str] = []
    ids: list[str] = []
    for item in raw[:1000]:
        if not isinstance(item, dict) or not isinstance(item.get("event_id"), str):
            continue  # nothing to acknowledge it by: the node keeps it and reports it
        event = parse_event(target.name, item)
        ids.append(item["event_id"])
        if event is None:
            malformed.append(item["event_id"])
        else:
            events.append(event)
    count = store_events(store, target.name, events, malformed, now) if ids else 0
    if ids:  # only after the commit above: at-least-once delivery
        nodeprog.call(pool, target, "ack", {"event_ids": ids})
    return count
