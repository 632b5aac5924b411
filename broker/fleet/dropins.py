"""The drop-in report in `broker-node status`, checked field by field.

A node says, per grant file it holds, what its /etc/sudoers.d/broker_<id> looks like
(pam/broker_node/dropins.py). Nothing of it is believed unchecked: a field of the wrong
type, an unknown kind or an id that is not a grant id makes the whole report malformed,
and a malformed report is an error for every grant on that node, never "fine"
(docs/grants.md "Drop-in integrity").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_GRANT_ID = re.compile(r"^g[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = frozenset({"file", "symlink", "other", "missing"})
MAX_PROBLEM = 200


@dataclass(frozen=True)
class DropIn:
    """One grant's drop-in as the node saw it."""

    present: bool
    kind: str  # file, symlink, other, missing
    uid: int | None
    gid: int | None
    mode: int | None
    sha256: str | None
    honoured: bool  # whether sudo reads it (regular, root's, not writable by others)
    problem: str | None  # the node's own sentence (bounded, printable)


# What status says of a node's drop-ins: per grant id, or why the report is unusable.
# None: the node program predates drop-in reports (nothing can be said either way).
DropInReport = Mapping[str, DropIn] | str | None


def _uint(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
        return value
    raise ValueError("an id or mode that is not a small unsigned integer")


def _printable(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a problem that is not text")
    return "".join(c if c.isprintable() else "?" for c in value[:MAX_PROBLEM])


def parse_one(raw: object) -> DropIn:
    """One `drop_in` object; ValueError names what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("a drop-in entry that is not an object")
    present, kind, honoured = raw.get("present"), raw.get("kind"), raw.get("honoured")
    sha = raw.get("sha256")
    if not isinstance(present, bool) or not isinstance(honoured, bool):
        raise ValueError("present/honoured not true or false")
    if kind not in _KINDS or (kind == "missing") == present:
        raise ValueError("an unknown kind of drop-in")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise ValueError("a sha256 that is not 64 hex digits")
    mode = _uint(raw.get("mode"))
    if mode is not None and mode > 0o7777:
        raise ValueError("a mode out of range")
    return DropIn(
        present, str(kind), _uint(raw.get("uid")), _uint(raw.get("gid")), mode,
        sha, honoured and kind == "file", _printable(raw.get("problem")),
    )  # fmt: skip


def parse_report(data: Mapping[str, Any]) -> DropInReport:
    """The drop-ins of a status reply: by grant id, None from an older node program (no
    `drop_in` key in any grant entry), or the reason the report cannot be used."""
    grants = data.get("grants")
    if not isinstance(grants, list):
        return "no list of grants"
    if grants and all(isinstance(g, dict) and "drop_in" not in g for g in grants):
        return None
    found: dict[str, DropIn] = {}
    try:
        for entry in grants:
            if not isinstance(entry, dict):
                raise ValueError("a grant entry that is not an object")
            grant_id, raw = entry.get("id"), entry.get("drop_in")
            if not isinstance(grant_id, str) or not _GRANT_ID.fullmatch(grant_id):
                continue  # not a grant the broker issued (the node names other files too)
            if grant_id in found:
                raise ValueError(f"grant {grant_id} reported twice")
            found[grant_id] = parse_one(raw)
    except ValueError as exc:
        return f"malformed drop-in report: {exc}"
    return found
