"""`broker policy check` as a pure function: one report for the daemon and for `--offline`.

The report is the JSON `broker policy check --json` prints, plus `counts`
(the policy's size, for the human summary line) when the text is valid.
"""

from __future__ import annotations

from typing import Any

from broker.policy.lint import lint
from broker.policy.load import parse_policy
from broker.policy.model import Policy
from broker.policy.reader import key_text

SEVERITIES = ("error", "warning", "note")


def sizes(policy: Policy) -> dict[str, int]:
    """How big a policy is: zones, nodes, roles, bindings, service accounts."""
    return {
        "zones": len(policy.zones),
        "nodes": len(policy.zone_of),
        "roles": len(policy.roles),
        "bindings": len(policy.bindings),
        "service_accounts": len(policy.service_accounts),
    }


def check_policy(text: str, source: str, known_groups: frozenset[str] | None) -> dict[str, Any]:
    """Schema, meaning and lint of `text`; every finding located, in line order.

    `known_groups` (lower-cased, from the directory snapshot) turns on the
    unknown-group check; None skips it.
    """
    loaded, problems = parse_policy(text, source, known_groups=known_groups)
    rows: list[dict[str, Any]] = [
        {
            "line": p.line,
            "severity": "error",
            "control": None,
            "rule": "schema",
            "key": p.key,
            "message": p.message,
        }
        for p in problems
    ]
    if loaded is not None:
        rows += [
            {
                "line": loaded.lines.line(f.path),
                "severity": f.severity,
                "control": f.control,
                "rule": f.rule,
                "key": key_text(f.path),
                "message": f.message,
            }
            for f in lint(loaded.policy)
        ]
    rows.sort(key=lambda r: int(r["line"]))
    count = {s: sum(1 for r in rows if r["severity"] == s) for s in SEVERITIES}
    return {
        "file": source,
        "valid": count["error"] == 0,
        "sha256": loaded.sha256 if loaded else None,
        "errors": count["error"],
        "warnings": count["warning"],
        "notes": count["note"],
        "findings": rows,
        "groups_checked": known_groups is not None,
        "counts": sizes(loaded.policy) if loaded is not None else None,
    }
