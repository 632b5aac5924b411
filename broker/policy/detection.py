"""Reading `[detect]`: the detection rules and the drift check (docs/detection.md).

Everything the detector will run is checked here, at `broker policy check`
and `apply`: a pattern that does not compile, a threshold out of range, an
action the rule's kind cannot carry out or an unknown time zone is a policy
error with its line, never a crash of the running detector.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

from broker.core import multimatch
from broker.policy import names
from broker.policy.detection_rules import (
    ACTIONS,
    BUILTIN,
    DRIFT_ACTIONS,
    KIND_ACTIONS,
    KIND_KEYS,
    SEVERITIES,
    STREAMS,
    Action,
    Detection,
    DriftRule,
    Kind,
    Rule,
    Severity,
    Stream,
    combined,
)
from broker.policy.positions import Path as KeyPath
from broker.policy.reader import Problems, Table

_COMMON_KEYS = ("description", "kind", "enabled", "severity", "actions", "cooldown")
_ALL_RULE_KEYS = tuple(
    dict.fromkeys(_COMMON_KEYS + tuple(k for keys in KIND_KEYS.values() for k in keys))
)
_DRIFT_KEYS = ("enabled", "severity", "actions", "expected")
MAX_PATTERNS = 64
MAX_PATTERN = 500
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
_HOURS = re.compile(r"^([01]?[0-9]|2[0-3])-([01]?[0-9]|2[0-4])$")


def read(problems: Problems, data: Mapping[str, Any]) -> Detection:
    """The `[detect]` table (may be empty: the built-in rules as they are)."""
    top = Table(problems, ("detect",), dict(data), ("rules", "drift"))
    rules: dict[str, Rule] = dict(BUILTIN)
    raw_rules = top.table("rules", hint="[detect.rules.NAME]") or {}
    for name, value in raw_rules.items():
        path: KeyPath = ("detect", "rules", name)
        reason = names.policy_name(name)
        if reason is not None:
            problems.add(path, reason)
            continue
        if not isinstance(value, dict):
            problems.add(path, f"expected a table [detect.rules.{name}]", value)
            continue
        rule = _rule(problems, path, name, value)
        if rule is not None:
            rules[name] = rule
    drift = _drift(problems, top.table("drift", hint="[detect.drift]") or {})
    if any(r.enabled and r.kind == "session_match" for r in rules.values()):
        why = multimatch.unavailable()
        if why is not None:  # fail closed: never a policy whose session rules cannot run
            problems.add(("detect",), f"session_match rules cannot run here: {why}")
    return Detection(rules=rules, drift=drift)


def _rule(problems: Problems, path: KeyPath, name: str, raw: dict[str, Any]) -> Rule | None:
    table = Table(problems, path, raw, _ALL_RULE_KEYS)
    before = len(problems)
    base = BUILTIN.get(name)
    kind = _kind(table, base)
    if kind is None:
        return None
    for key in raw:
        if key in _ALL_RULE_KEYS and key not in _COMMON_KEYS and key not in KIND_KEYS[kind]:
            problems.add((*path, key), f"a {kind} rule has no {key}")
    if base is None:
        base = Rule(name, kind, "medium", ("alert",))
    severity = _severity(table, base.severity)
    actions = _actions(table, base.actions, KIND_ACTIONS[kind], f"a {kind} rule")
    rule = replace(
        base,
        enabled=table.flag("enabled", base.enabled),
        severity=severity or base.severity,
        actions=base.actions if actions is None else actions,
        description=table.text("description", check=names.description) or base.description,
        cooldown=_duration_or(  # "0s" is a cool-down of none, not the default
            table.duration("cooldown", base.cooldown, low=timedelta(0), high=timedelta(days=7)),
            base.cooldown,
        ),
        threshold=table.integer("threshold", base.threshold, 1, 100_000) or base.threshold,
        window=table.duration(
            "window", base.window, low=timedelta(seconds=1), high=timedelta(days=7)
        )
        or base.window,
        min_history=_optional_int(table, "min_history", base.min_history, 0, 100_000),
        usual_hours=_hours(table, base.usual_hours),
        timezone=_timezone(table, base.timezone),
        patterns=_patterns(table, base.patterns),
        streams=_streams(table, base.streams),
    )
    if kind == "session_match" and not rule.patterns and "patterns" not in raw:
        problems.add((*path, "patterns"), "a session_match rule needs patterns")
    return rule if len(problems) == before else None


def _kind(table: Table, base: Rule | None) -> Kind | None:
    text = table.text("kind")
    if text is None:
        if base is not None:
            return base.kind
        if not table.has("kind"):
            table.problems.add(
                (*table.path, "kind"),
                f"a rule of your own needs a kind: one of {', '.join(KIND_KEYS)}",
            )
        return None
    if text not in KIND_KEYS:
        table.problems.add((*table.path, "kind"), f"expected one of {', '.join(KIND_KEYS)}", text)
        return None
    if base is not None and text != base.kind:
        table.problems.add(
            (*table.path, "kind"), f"the built-in rule {base.name} is of kind {base.kind}", text
        )
        return None
    return cast(Kind, text)


def _severity(table: Table, default: Severity) -> Severity | None:
    text = table.text("severity")
    if text is None:
        return default
    if text not in SEVERITIES:
        table.problems.add(
            (*table.path, "severity"), f"expected one of {', '.join(SEVERITIES)}", text
        )
        return None
    return text


def _actions(
    table: Table, default: tuple[Action, ...], allowed: tuple[Action, ...], what: str
) -> tuple[Action, ...] | None:
    if not table.has("actions"):
        return default
    value = table.data["actions"]
    if value == []:
        return ()
    items = table.strings("actions")
    if items is None:
        return None
    out: list[Action] = []
    for item_path, item in items:
        if item not in ACTIONS:
            table.problems.add(item_path, f"expected one of {', '.join(ACTIONS)}", item)
        elif item not in allowed:
            table.problems.add(
                item_path, f"{what} cannot {item}: it may {', '.join(allowed)}", item
            )
        else:
            out.append(item)
    return tuple(out) if len(out) == len(items) else None


def _optional_int(table: Table, key: str, default: int, low: int, high: int) -> int:
    value = table.integer(key, default, low, high)
    return default if value is None else value


def _hours(table: Table, default: tuple[int, int] | None) -> tuple[int, int] | None:
    text = table.text("usual_hours")
    if text is None:
        return default
    match = _HOURS.fullmatch(text)
    if match is None or int(match[1]) >= int(match[2]):
        table.problems.add(
            (*table.path, "usual_hours"), "expected START-END in whole hours, e.g. 07-19", text
        )
        return default
    return int(match[1]), int(match[2])


def _timezone(table: Table, default: str) -> str:
    text = table.text("timezone")
    if text is None:
        return default
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        table.problems.add(
            (*table.path, "timezone"),
            "unknown time zone; use an IANA name like Europe/Berlin",
            text,
        )
        return default
    return text


def _patterns(table: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    items = table.strings("patterns")
    if items is None:
        return default
    if len(items) > MAX_PATTERNS:
        table.problems.add((*table.path, "patterns"), f"at most {MAX_PATTERNS} patterns")
        return default
    good: list[str] = []
    for item_path, pattern in items:
        reason = _pattern_problem(pattern)
        if reason is not None:
            table.problems.add(item_path, reason, pattern)
        else:
            good.append(pattern)
    if len(good) == len(items):
        try:  # exactly as the detector will: one alternation (Rule.regex)
            combined(tuple(good))
        except re.error as exc:
            table.problems.add(
                (*table.path, "patterns"),
                f"the patterns cannot be combined ({exc}); write flags inline as (?i:...)",
            )
            return default
    return tuple(good)


def _pattern_problem(pattern: str) -> str | None:
    if len(pattern) > MAX_PATTERN:
        return f"pattern longer than {MAX_PATTERN} characters"
    try:
        compiled = re.compile(pattern.encode("utf-8"), re.MULTILINE)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    if compiled.groupindex:
        return "named groups (?P<...>) are not allowed; use (...) or (?:...)"
    if _BACKREF.search(pattern):
        return "back-references are not allowed (patterns are combined into one expression)"
    if compiled.search(b""):
        return "matches the empty string, so it would match every line"
    # The detector runs every pattern through Hyperscan too (broker/core/multimatch.py):
    # no lookaround, atomic groups or possessive quantifiers, Python's {,n} refused.
    return multimatch.problem(pattern)


def _streams(table: Table, default: tuple[Stream, ...]) -> tuple[Stream, ...]:
    items = table.strings("streams")
    if items is None:
        return default
    out: list[Stream] = []
    for item_path, item in items:
        if item not in STREAMS:
            table.problems.add(item_path, f"expected one of {', '.join(STREAMS)}", item)
        else:
            out.append(item)
    return tuple(out) if len(out) == len(items) else default


def _drift(problems: Problems, raw: dict[str, Any]) -> DriftRule:
    table = Table(problems, ("detect", "drift"), raw, _DRIFT_KEYS)
    base = DriftRule()
    expected = table.strings("expected", check=_glob_problem)
    return DriftRule(
        enabled=table.flag("enabled", base.enabled),
        severity=_severity(table, base.severity) or base.severity,
        actions=_or(_actions(table, base.actions, DRIFT_ACTIONS, "the drift check"), base.actions),
        expected=tuple(g for _, g in expected) if expected is not None else base.expected,
    )


def _duration_or(value: timedelta | None, default: timedelta) -> timedelta:
    return default if value is None else value


def _or(value: tuple[Action, ...] | None, default: tuple[Action, ...]) -> tuple[Action, ...]:
    return default if value is None else value


def _glob_problem(text: str) -> str | None:
    if not text.startswith("/") or len(text) > 500 or not text.isprintable():
        return "expected an absolute path or glob, e.g. /etc/cron.d/backup-*"
    return None
