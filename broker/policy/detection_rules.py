"""Detection rules as typed values: what each kind watches, and the built-in set.

A policy tunes or disables the built-ins by name under `[detect.rules.NAME]`
and may add rules of its own (docs/detection.md); `broker.policy.detection`
reads and validates that section, so a bad regex or threshold is a policy
check error and never reaches the running detector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Literal

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
Action = Literal["alert", "lock_mfa", "revoke_grants", "end_session", "quarantine_node"]
ACTIONS: tuple[Action, ...] = (
    "alert",
    "lock_mfa",
    "revoke_grants",
    "end_session",
    "quarantine_node",
)
Kind = Literal[
    "mfa_failures",
    "off_hours",
    "many_nodes",
    "new_origin",
    "session_match",
    "sudo_without_grant",
    "quarantined_session",
    "session_escape",
    "refusals",
    "drop_in",
]
Stream = Literal["command", "input", "output"]
STREAMS: tuple[Stream, ...] = ("command", "input", "output")

_USER_ACTIONS: tuple[Action, ...] = ("alert", "lock_mfa", "revoke_grants")
# What each kind's finding names, and so which actions can act on it: ending a session
# needs a session, quarantining needs one node.
KIND_ACTIONS: Mapping[Kind, tuple[Action, ...]] = {
    "mfa_failures": _USER_ACTIONS,
    "off_hours": _USER_ACTIONS,
    "many_nodes": _USER_ACTIONS,
    "new_origin": ACTIONS,
    "session_match": ACTIONS,
    "sudo_without_grant": (*_USER_ACTIONS, "quarantine_node"),
    "quarantined_session": (*_USER_ACTIONS, "end_session"),
    "session_escape": ACTIONS,
    "refusals": _USER_ACTIONS,
    "drop_in": (*_USER_ACTIONS, "quarantine_node"),
}
DRIFT_ACTIONS: tuple[Action, ...] = (*_USER_ACTIONS, "quarantine_node")
# Which keys a kind reads (the policy loader refuses the others for that kind).
KIND_KEYS: Mapping[Kind, tuple[str, ...]] = {
    "mfa_failures": ("threshold", "window"),
    "off_hours": ("min_history", "usual_hours", "timezone"),
    "many_nodes": ("threshold", "window"),
    "new_origin": ("min_history",),
    "session_match": ("patterns", "streams"),
    "sudo_without_grant": ("threshold", "window"),
    "quarantined_session": (),
    "session_escape": (),
    "refusals": ("threshold", "window"),
    "drop_in": (),
}


@dataclass(frozen=True)
class Rule:
    """One rule: a kind of watch, its parameters, and what a finding makes the broker do.

    Every finding is stored as an alert; `alert` in `actions` also sends it to syslog and
    the webhook. A finding is raised once per subject within `cooldown`."""

    name: str
    kind: Kind
    severity: Severity
    actions: tuple[Action, ...]
    enabled: bool = True
    threshold: int = 1
    window: timedelta = timedelta(minutes=15)
    cooldown: timedelta = timedelta(minutes=10)
    min_history: int = 10
    usual_hours: tuple[int, int] | None = None  # [start, end) hours everybody works
    timezone: str = "UTC"
    patterns: tuple[str, ...] = ()
    streams: tuple[Stream, ...] = STREAMS
    description: str = ""

    @cached_property
    def regex(self) -> re.Pattern[bytes] | None:
        """All patterns as one alternation over bytes (one pass per chunk, not one per
        pattern); each named group `p<i>` tells which pattern matched."""
        return combined(self.patterns) if self.patterns else None


def combined(patterns: tuple[str, ...]) -> re.Pattern[bytes]:
    """The patterns as one expression (raises re.error when they cannot be combined)."""
    parts = [f"(?P<p{i}>{p})" for i, p in enumerate(patterns)]
    return re.compile("|".join(parts).encode("utf-8"), re.MULTILINE)


@dataclass(frozen=True)
class DriftRule:
    """What happens when an elevated session leaves changes behind (docs/detection.md)."""

    enabled: bool = True
    severity: Severity = "high"
    actions: tuple[Action, ...] = ("alert",)
    expected: tuple[str, ...] = ()  # fnmatch globs of paths whose changes are expected


# Paths where checkpoints and datasets live by default; sites set their own patterns.
_DATA = r"(/data/checkpoints|/data/datasets|/models)\b"
EXFILTRATION_PATTERNS = (
    r"\b(scp|rsync|sftp|rclone)\b[^\n]*" + _DATA,
    r"\btar\b[^\n]*" + _DATA,
    r"\bcurl\b[^\n]*(\s-T\s|\s--upload-file\b|\s-F\s|\s--form\b|\s--data-binary\s+@|\s-d\s+@)",
    r"\bwget\b[^\n]*\s--post-file\b",
)
INSTALL_PATTERNS = (
    r"\b(apt-get|apt|aptitude|yum|dnf|zypper|snap)\s+(-\S+\s+)*(install|reinstall)\b",
    r"\bdpkg\s+(-\S+\s+)*(-i|--install)\b",
    r"\brpm\s+(-\S+\s+)*-(i|U)\w*\b",
    r"\b(pip3?|python3?\s+-m\s+pip)\s+(-\S+\s+)*install\b",
    r"\b(conda|mamba|micromamba)\s+(-\S+\s+)*(install|create)\b",
)

BUILTIN: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "mfa-failures",
            "mfa_failures",
            "high",
            ("alert", "lock_mfa"),
            threshold=5,
            window=timedelta(minutes=15),
            description="repeated wrong MFA codes: someone may be guessing",
        ),
        Rule(
            "off-hours",
            "off_hours",
            "medium",
            ("alert",),
            min_history=10,
            description="an elevation at an hour the user has never elevated at before",
        ),
        Rule(
            "many-nodes",
            "many_nodes",
            "high",
            ("alert",),
            threshold=16,
            window=timedelta(minutes=10),
            description="one user elevating on many nodes in a short time",
        ),
        Rule(
            "new-origin",
            "new_origin",
            "low",
            ("alert",),
            min_history=5,
            description="an elevated session from a node or terminal kind never seen for the user",
        ),
        Rule(
            "exfiltration",
            "session_match",
            "critical",
            ("alert", "revoke_grants", "end_session"),
            patterns=EXFILTRATION_PATTERNS,
            description="copying checkpoints or datasets off the node",
        ),
        Rule(
            "software-install",
            "session_match",
            "medium",
            ("alert",),
            patterns=INSTALL_PATTERNS,
            description="installing software in an elevated session (CM-11)",
        ),
        Rule(
            "sudo-without-grant",
            "sudo_without_grant",
            "medium",
            ("alert",),
            threshold=3,
            window=timedelta(minutes=10),
            description="sudo tried again and again without a grant",
        ),
        Rule(
            "repeated-refusals",
            "refusals",
            "medium",
            ("alert",),
            threshold=5,
            window=timedelta(minutes=10),
            description="one caller refused again and again: probing what it may reach",
        ),
        Rule(
            "session-escape",
            "session_escape",
            "high",
            ("alert",),
            description="a root process left its elevated session's cgroup",
        ),
        Rule(
            "drop-in-tampered",
            "drop_in",
            "high",
            ("alert",),
            description="a grant's sudoers drop-in on a node is missing, changed or ignored by sudo",
        ),
        Rule(
            "quarantined-session",
            "quarantined_session",
            "high",
            ("alert", "end_session"),
            description="an elevated session opened on a quarantined node",
        ),
    )
}


@dataclass(frozen=True)
class Detection:
    """The rules in force: the built-ins as the policy tuned them, plus its own."""

    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(BUILTIN))
    drift: DriftRule = DriftRule()

    def enabled(self) -> list[Rule]:
        return [r for r in self.rules.values() if r.enabled]


DEFAULT = Detection()
