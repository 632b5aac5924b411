"""The rules at work: audit events and session bytes in, findings out. No I/O.

The detector's memory (recent failures, hours and origins seen per user,
cool-downs) is a plain JSON-able dict, so the runner stores it in the same
transaction as the cursor it belongs to: a restart resumes exactly where the
last committed pass ended, and no event is judged twice.
"""

from __future__ import annotations

import logging
import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from broker.audit.refusals import REFUSAL_ACTIONS
from broker.core.durations import format_duration
from broker.detect.content import ContentMatcher, excerpt
from broker.detect.eventdata import nodes_of
from broker.policy.detection_rules import Action, Detection, Rule, Severity

log = logging.getLogger("broker.detect")

# MFA refusals that count towards a lockout (the service's own words).
COUNTED_MFA = frozenset(
    {
        "wrong code",
        "replayed code",
        "malformed code",
        "wrong recovery code",
        "malformed recovery code",
    }
)
CARRY_MAX = 4096  # an unfinished line kept between passes
HEAD_KEEP = 1024  # of a longer one, its head (and the rest of CARRY_MAX from its tail)
HISTORY_CAP = 256  # nodes and terminal kinds remembered per user
_TTY_DIGITS = re.compile(r"[0-9]+")


class AuditEvent(NamedTuple):
    """One audit event as the rules see it: immutable, and a tuple rather than a frozen
    dataclass because the detector builds hundreds of thousands a second and a frozen
    dataclass sets each field through `object.__setattr__` (about 4x the cost)."""

    seq: int
    at: float  # epoch seconds
    actor: str
    action: str
    target: str
    outcome: str
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Recording:
    """The elevated session a stream belongs to (from the recordings index)."""

    id: str
    node: str
    user: str
    grant_id: str | None


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    actions: tuple[Action, ...]
    message: str
    at: float
    source: str
    user: str | None = None
    node: str | None = None
    grant_id: str | None = None
    recording_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def new_memory() -> dict[str, Any]:
    return {"times": {}, "hours": {}, "origins": {}, "cooldown": {}}


def _node_of(actor: str) -> str | None:
    return actor[5:] if actor.startswith("node:") else None


@lru_cache(maxsize=4096)
def tty_kind(tty: str) -> str:
    """pts/7 -> pts/N: what kind of terminal, not which one (cached: every session open
    asks, and a node has a few dozen terminals, not millions)."""
    return _TTY_DIGITS.sub("N", tty) if tty and tty != "-" else "none"


class Detector:
    """Judges one pass of events; its memory is the caller's to store afterwards."""

    def __init__(
        self,
        detection: Detection,
        memory: dict[str, Any],
        *,
        quarantined: Iterable[str] = (),
        exempt_users: Iterable[str] = (),
    ) -> None:
        self.memory = memory
        for key, value in new_memory().items():
            memory.setdefault(key, value)
        self.quarantined = set(quarantined)
        self.exempt = frozenset(exempt_users)  # the incident-response group
        self.by_kind: dict[str, list[Rule]] = {}
        for rule in detection.enabled():
            self.by_kind.setdefault(rule.kind, []).append(rule)
        self.content = ContentMatcher(self.by_kind.get("session_match", []))
        # How far back each kind's memory must reach: its longest window (asked per event).
        self._keep = {
            kind: max(r.window.total_seconds() for r in rules)
            for kind, rules in self.by_kind.items()
        }
        self._zones = {
            r.timezone: zoneinfo.ZoneInfo(r.timezone) for r in self.by_kind.get("off_hours", ())
        }
        self._handlers = {
            "grant.issue": self._grant_issue,
            "session.open": self._session_open,
            "session.deny": self._session_deny,
            "session.escape": self._session_escape,
            "grant.drop_in": self._drop_in,
            "node.quarantine": self._quarantine,
            "node.release": self._release,
            **dict.fromkeys(REFUSAL_ACTIONS, self._refused),
        }

    # ------------------------------------------------------------ memory helpers

    def _cool(self, key: str, at: float, rule: Rule) -> bool:
        """True (and start the cool-down) unless this subject alerted for this rule lately."""
        cooldown = self.memory["cooldown"]
        until = cooldown.get(key)
        if until is not None and at < until:
            return False
        cooldown[key] = at + rule.cooldown.total_seconds()
        return True

    def _times(self, kind: str, key: str, at: float, keep: float) -> list[float]:
        """Append `at` to a subject's recent times, dropping those older than `keep`."""
        bucket = self.memory["times"].setdefault(kind, {})
        times: list[float] = bucket.get(key, [])
        times = [t for t in times if t >= at - keep]
        times.append(at)
        bucket[key] = times
        return times

    def prune(self, now: float) -> None:
        """Forget cool-downs that ended and windows nobody can reach any more."""
        self.memory["cooldown"] = {k: v for k, v in self.memory["cooldown"].items() if v > now}
        longest = max(
            [r.window.total_seconds() for rules in self.by_kind.values() for r in rules] or [0.0]
        )
        for bucket in self.memory["times"].values():
            # The "nodes" bucket holds [time, node] pairs, the others bare times.
            for key in [
                k
                for k, v in bucket.items()
                if not v or (v[-1][0] if isinstance(v[-1], list) else v[-1]) < now - longest
            ]:
                del bucket[key]

    # ------------------------------------------------------------ audit events

    def actions(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The audit actions some rule reads, and the action globs of which it reads only
        refusals (MFA: refused codes count, a reset clears): the runner leaves the rest of
        the chain (session closes, successful checks, syncs) in the store."""
        return (*self._handlers, "mfa.reset"), ("mfa.*",)

    def audit(self, event: AuditEvent) -> list[Finding]:
        if event.action.startswith("mfa."):
            return self._mfa(event)
        handler = self._handlers.get(event.action)
        return handler(event) if handler is not None else []

    def _mfa(self, event: AuditEvent) -> list[Finding]:
        if event.action == "mfa.reset" and event.outcome == "ok":
            # An operator's reset starts the user's count afresh, as the service's does.
            self.memory["times"].get("mfa", {}).pop(event.target, None)
            return []
        rules = self.by_kind.get("mfa_failures")
        if not rules or event.outcome != "refused":
            return []
        if event.details.get("reason") not in COUNTED_MFA:
            return []
        keep = self._keep["mfa_failures"]
        times = self._times("mfa", event.target, event.at, keep)
        found = []
        for rule in rules:
            count = sum(1 for t in times if t >= event.at - rule.window.total_seconds())
            if count >= rule.threshold and self._cool(
                f"{rule.name}:{event.target}", event.at, rule
            ):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{count} failed MFA codes for {event.target} within {_span(rule)}",
                        event.at,
                        f"audit:{event.seq}",
                        user=event.target,
                        details={"failures": count, "purpose": event.details.get("purpose")},
                    )
                )
        return found

    def _grant_issue(self, event: AuditEvent) -> list[Finding]:
        user = str(event.details.get("user", ""))
        if not user:
            return []
        found = self._off_hours(event, user)
        nodes = nodes_of(str(event.details.get("nodes", "")))
        return found + self._spread(event, user, nodes, event.target)

    def _off_hours(self, event: AuditEvent, user: str) -> list[Finding]:
        found = []
        for rule in self.by_kind.get("off_hours", ()):
            hour = datetime.fromtimestamp(event.at, UTC).astimezone(self._zones[rule.timezone]).hour
            hours = self.memory["hours"].setdefault(rule.name, {})
            seen: list[int] | None = hours.get(user)
            if seen is None:
                seen = hours[user] = [0] * 24
            usual = (
                rule.usual_hours is not None and rule.usual_hours[0] <= hour < rule.usual_hours[1]
            )
            near = seen[hour] + seen[(hour - 1) % 24] + seen[(hour + 1) % 24]
            if (
                not usual
                and sum(seen) >= rule.min_history
                and near == 0
                and self._cool(f"{rule.name}:{user}", event.at, rule)
            ):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{user} elevated at {hour:02d}:00 ({rule.timezone}), an hour never seen"
                        f" in their last {sum(seen)} elevations",
                        event.at,
                        f"audit:{event.seq}",
                        user=user,
                        grant_id=event.target,
                        details={"hour": hour, "history": sum(seen)},
                    )
                )
            seen[hour] += 1
        return found

    def _spread(
        self, event: AuditEvent, user: str, nodes: Sequence[str], grant_id: str | None
    ) -> list[Finding]:
        rules = self.by_kind.get("many_nodes")
        if not rules or not nodes:
            return []
        keep = self._keep["many_nodes"]
        bucket = self.memory["times"].setdefault("nodes", {})
        at = event.at
        cutoff = at - keep
        pairs: list[list[Any]] = [p for p in bucket.get(user, ()) if p[0] >= cutoff]
        pairs += [[at, n] for n in nodes]
        bucket[user] = pairs if len(pairs) <= 4096 else pairs[-4096:]  # judged: all of pairs
        found = []
        for rule in rules:
            if len(pairs) < rule.threshold:
                continue  # fewer elevations than the threshold: fewer distinct nodes too
            since = event.at - rule.window.total_seconds()
            distinct = {n for t, n in pairs if t >= since}
            if len(distinct) >= rule.threshold and self._cool(
                f"{rule.name}:{user}", event.at, rule
            ):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{user} elevated on {len(distinct)} nodes within {_span(rule)}",
                        event.at,
                        f"audit:{event.seq}",
                        user=user,
                        grant_id=grant_id,
                        details={"nodes": len(distinct)},
                    )
                )
        return found

    def _session_open(self, event: AuditEvent) -> list[Finding]:
        node = _node_of(event.actor)
        details = event.details
        user = str(details.get("user", ""))
        if node is None or not user:
            return []
        grant = event.target if event.target not in ("-", "break-glass") else None
        found = self._origin(event, user, node, tty_kind(str(details.get("tty", "-"))))
        if node in self.quarantined and user not in self.exempt:
            for rule in self.by_kind.get("quarantined_session", ()):
                if self._cool(
                    f"{rule.name}:{user}@{node}:{event.details.get('pid')}", event.at, rule
                ):
                    found.append(
                        Finding(
                            rule.name,
                            rule.severity,
                            rule.actions,
                            f"{user} opened an elevated session on quarantined {node}",
                            event.at,
                            f"audit:{event.seq}",
                            user=user,
                            node=node,
                            grant_id=event.target if event.target != "-" else None,
                            details={"pid": event.details.get("pid")},
                        )
                    )
        if details.get("break_glass"):
            return found
        return found + self._spread(event, user, (node,), grant)

    def _origin(self, event: AuditEvent, user: str, node: str, tty: str) -> list[Finding]:
        rules = self.by_kind.get("new_origin", ())
        if not rules:
            return []
        origins = self.memory["origins"]
        seen = origins.get(user)  # not setdefault: that would build a new record every event
        if seen is None:
            seen = origins[user] = {"n": 0, "nodes": [], "ttys": []}
        new_node, new_tty = node not in seen["nodes"], tty not in seen["ttys"]
        found = []
        new = [f"node {node}"] if new_node else []
        if new_tty:
            new.append(f"terminal {tty}")
        for rule in rules if new else ():  # the usual node and terminal: only counted
            if seen["n"] >= rule.min_history and self._cool(
                f"{rule.name}:{user}:{node}:{tty}", event.at, rule
            ):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{user} used a grant from {' and '.join(new)}, never seen in their"
                        f" last {seen['n']} sessions",
                        event.at,
                        f"audit:{event.seq}",
                        user=user,
                        node=node,
                        grant_id=event.target if event.target not in ("-", "break-glass") else None,
                        details={"new": new, "tty": tty},
                    )
                )
        seen["n"] += 1
        if new_node:
            seen["nodes"] = (seen["nodes"] + [node])[-HISTORY_CAP:]
        if new_tty:
            seen["ttys"] = (seen["ttys"] + [tty])[-HISTORY_CAP:]
        return found

    def _session_escape(self, event: AuditEvent) -> list[Finding]:
        """A node saw a root process leave its session's cgroup (docs/elevation.md)."""
        node = _node_of(event.actor)
        if node is None:
            return []
        user = str(event.details.get("user", "-"))
        pid = event.details.get("pid")
        grant = event.target if event.target not in ("-", "break-glass") else None
        return [
            Finding(
                rule.name,
                rule.severity,
                rule.actions,
                f"process {pid} left the elevated session {event.details.get('session_pid')}"
                f" of {user} on {node} ({event.details.get('how') or 'seen outside'})",
                event.at,
                f"audit:{event.seq}",
                user=user if user != "-" else None,
                node=node,
                grant_id=grant,
                details={"pid": pid, "session_pid": event.details.get("session_pid")},
            )
            for rule in self.by_kind.get("session_escape", ())
            if self._cool(f"{rule.name}:{node}:{pid}", event.at, rule)
        ]

    def _drop_in(self, event: AuditEvent) -> list[Finding]:
        """The broker found a live grant's drop-in missing, changed or ignored by sudo
        (grants/integrity.py writes `grant.drop_in`, failed, once per new verdict)."""
        node, problem = event.details.get("node"), event.details.get("problem")
        if event.outcome != "failed" or not isinstance(node, str) or not problem:
            return []
        response = event.details.get("response")
        then = "it is pushed again" if response == "repair" else "left as found"
        return [
            Finding(
                rule.name,
                rule.severity,
                rule.actions,
                f"grant {event.target} on {node}: {problem} ({then})",
                event.at,
                f"audit:{event.seq}",
                user=str(event.details["user"]) if event.details.get("user") else None,
                node=node,
                grant_id=event.target,
                details={"problem": str(problem)[:200], "response": response},
            )
            for rule in self.by_kind.get("drop_in", ())
            if self._cool(f"{rule.name}:{event.target}@{node}:{problem}", event.at, rule)
        ]

    def _session_deny(self, event: AuditEvent) -> list[Finding]:
        rules = self.by_kind.get("sudo_without_grant")
        node = _node_of(event.actor)
        user = str(event.details.get("user", ""))
        # A sudo its log server refused had a grant: an outage, not someone trying without.
        if not rules or node is None or not user or event.details.get("reason") == "log_server":
            return []
        keep = self._keep["sudo_without_grant"]
        times = self._times("deny", f"{user}@{node}", event.at, keep)
        found = []
        for rule in rules:
            count = sum(1 for t in times if t >= event.at - rule.window.total_seconds())
            if count >= rule.threshold and self._cool(f"{rule.name}:{user}@{node}", event.at, rule):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{user} tried sudo {count} times without a grant on {node}"
                        f" within {_span(rule)}",
                        event.at,
                        f"audit:{event.seq}",
                        user=user,
                        node=node,
                        details={"attempts": count},
                    )
                )
        return found

    def _refused(self, event: AuditEvent) -> list[Finding]:
        """Refusals of one caller (grant/request/approve.refused); a rate-limit summary
        counts as the refusals it stands for, so a capped loop still adds up."""
        rules = self.by_kind.get("refusals")
        if not rules or event.outcome != "refused":
            return []
        weight = event.details.get("suppressed", 1)
        weight = weight if isinstance(weight, int) and weight > 0 else 1
        keep = self._keep["refusals"]
        bucket = self.memory["times"].setdefault("refused", {})
        pairs: list[list[Any]] = [p for p in bucket.get(event.actor, []) if p[0] >= event.at - keep]
        pairs.append([event.at, weight])
        bucket[event.actor] = pairs[-HISTORY_CAP:]
        # The account behind the caller, when the refusal names one (lock_mfa, revoke_grants).
        who = event.details.get("user") or event.details.get("approver")
        found = []
        for rule in rules:
            count = sum(w for t, w in pairs if t >= event.at - rule.window.total_seconds())
            if count >= rule.threshold and self._cool(f"{rule.name}:{event.actor}", event.at, rule):
                found.append(
                    Finding(
                        rule.name,
                        rule.severity,
                        rule.actions,
                        f"{event.actor} was refused {count} times within {_span(rule)}"
                        f" (last: {event.action} {event.target})",
                        event.at,
                        f"audit:{event.seq}",
                        user=str(who) if who else None,
                        details={"refusals": count, "actor": event.actor},
                    )
                )
        return found

    def _quarantine(self, event: AuditEvent) -> list[Finding]:
        if event.outcome == "ok":
            self.quarantined.add(event.target)
        return []

    def _release(self, event: AuditEvent) -> list[Finding]:
        if event.outcome == "ok":
            self.quarantined.discard(event.target)
        return []

    # ------------------------------------------------------------ session content

    def command(self, rec: Recording, text: str, at: float) -> list[Finding]:
        """The command line sudo logged when the session began."""
        line = text.encode("utf-8", "replace")
        return self._match(rec, "command", line, at, 0)

    def stream(
        self, rec: Recording, kind: str, data: bytes, carry: bytes, at: float, offset: int
    ) -> tuple[list[Finding], bytes]:
        """New bytes of an input or output stream; returns findings and the unfinished line.

        Patterns see whole lines (a carriage return ends one, as Enter does on a
        terminal), so a command typed in pieces across passes is still matched."""
        text = (carry + data).replace(b"\r", b"\n")
        cut = text.rfind(b"\n") + 1
        rest = text[cut:]
        if len(rest) > CARRY_MAX:
            # A runaway line (padding to push a command's head out of view): judge it now
            # and keep its head and its tail, so what is typed later still meets the head.
            found = self._match(rec, kind, text, at, offset)
            return found, rest[:HEAD_KEEP] + b" " + rest[-(CARRY_MAX - HEAD_KEEP - 1) :]
        found = self._match(rec, kind, text[:cut], at, offset) if cut else []
        return found, rest

    def _match(
        self, rec: Recording, kind: str, text: bytes, at: float, offset: int
    ) -> list[Finding]:
        found = []
        cooldown = self.memory["cooldown"]

        def cooling(rule: Rule) -> bool:
            until = cooldown.get(f"{rule.name}:{rec.id}")
            return until is not None and at < until

        for hit in self.content.hits(kind, text, cooling):
            rule = hit.rule
            if not self._cool(f"{rule.name}:{rec.id}", at, rule):
                continue
            found.append(
                Finding(
                    rule.name,
                    rule.severity,
                    rule.actions,
                    f"{rule.description or rule.name}: {kind} of session {rec.id} of {rec.user}"
                    f" on {rec.node} matched pattern {hit.pattern + 1}",
                    at,
                    f"session:{rec.id}:{kind}:{offset}",
                    user=rec.user,
                    node=rec.node,
                    grant_id=rec.grant_id,
                    recording_id=rec.id,
                    details={
                        "stream": kind,
                        "pattern": rule.patterns[hit.pattern],
                        "excerpt": excerpt(hit.line),
                    },
                )
            )
        return found


def _span(rule: Rule) -> str:
    return format_duration(rule.window)
