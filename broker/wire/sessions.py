"""sessions: the response records of /v1/sessions routes, read by the daemon and the client."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from broker.wire.base import Out


class SessionOut(Out):
    id: str
    path: str
    state: str
    node: str | None
    user: str | None
    runas: str | None
    command: str | None
    argv: list[str]
    cwd: str | None
    tty: str | None
    started_at: str | None
    ended_at: str | None
    exit_value: int | None
    signal: str | None
    end_reason: str | None
    grant_id: str | None
    relayed: bool
    # No grant, and the node's hook opened a break-glass session for this user then.
    break_glass: bool = False
    bytes_in: int
    bytes_out: int
    sha256: str | None
    files: dict[str, str]
    error: str | None
    first_seen: str
    indexed_at: str
    # How user and node were learned (docs/sessions.md, "Provenance"): "corroborated" by the
    # node's own hook event and a grant, or "uncorroborated" (only the sending node's word).
    provenance: Literal["corroborated", "uncorroborated"]
    provenance_reason: str


class GrantContextOut(Out):
    id: str
    role: str
    reason: str
    not_before: str
    not_after: str
    state: str
    approvers: list[str]


class HookEventOut(Out):
    kind: str
    at: str
    tty: str
    pid: int
    service: str
    grant: str | None
    # close, usage and escape events of contained sessions (docs/elevation.md)
    ended_by: str | None = None
    killed: int | None = None
    contained: bool | None = None
    cpu_usec: int | None = None
    memory_peak: int | None = None
    pids_peak: int | None = None
    detail: str | None = None


class CommandOut(Out):
    offset_s: float
    text: str


class DriftOut(Out):
    """What the session left behind on its node, against the baseline taken at grant push."""

    checked_at: str
    changes: list[str]  # one line each
    unexpected: int
    error: str | None


class EndingOut(Out):
    """How an elevated session ended and what its cgroup used (docs/elevation.md)."""

    pid: int
    closed_by: str | None  # the sudo: exit, revoke, expiry, quarantine, end-session
    ended_by: str | None  # the session's cgroup: the same, or a later kill of what it left
    killed: int  # processes killed when it was ended
    contained: bool | None  # in a cgroup of its own (False: ended by process tree)
    cpu_seconds: float | None
    memory_peak: int | None  # bytes; None where the memory controller was not delegated
    pids_peak: int | None


class SessionDetailOut(Out):
    session: SessionOut
    grant: GrantContextOut | None
    hook_events: list[HookEventOut]
    timeline: list[CommandOut]
    drift: DriftOut | None = None
    alerts: list[int] = Field(default_factory=list)
    ending: EndingOut | None = None


class ReplayOut(Out):
    id: str
    columns: int
    lines: int
    complete: bool
    # [delay seconds, stream, base64 bytes] in the order sudo wrote them.
    chunks: list[tuple[float, str, str]]


class MatchOut(Out):
    stream: str
    offset: int
    excerpt: str


class SearchHitOut(Out):
    session: SessionOut
    match: MatchOut


class SearchOut(Out):
    """The hits (newest first) and how they were found (docs/sessions.md, "Search")."""

    hits: list[SearchHitOut]
    mode: Literal["regex", "word", "prefix", "phrase"]
    narrowed: bool  # the text index chose which recordings were read
    literals: list[str]  # what a regex was narrowed by
    read: int  # recordings whose files were read
    complete: bool  # False: a scan stopped at its bound; older recordings were not read
    note: str | None


class VerifyOut(Out):
    id: str
    ok: bool
    sha256: str
    indexed_sha256: str | None
    audited_sha256: str | None
    changed: list[str]


class IndexOut(Out):
    seen: int
    new: list[str]
    finished: list[str]
    quarantined: list[str]
    bytes_read: int
    seconds: float
    backfilled: int = 0  # older recordings added to the search index in this pass


class PurgeOut(Out):
    purged: list[str]
