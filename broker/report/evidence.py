"""Each control's evidence, attention items and status, from the figures the queries read.

Pure: figures in, one `Result` out, so the status rules (what makes a control need
attention) are tested without a store. Every evidence line and attention item carries the
exact command that shows it in full, because an auditor checks a sample, and an operator
must be able to produce it without knowing the broker's internals.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

Value = int | float | str


@dataclass(frozen=True)
class Scope:
    """What the commands in the report need to point at the same period and zone."""

    since: str
    until: str
    zone: str | None


@dataclass
class Result:
    """One control's part of the report (the catalogue adds id, title and enforces)."""

    evidence: list[dict[str, Value]] = field(default_factory=list)
    attention: list[dict[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True

    def add(self, label: str, value: Value | None, command: str) -> None:
        self.evidence.append(
            {"label": label, "value": "-" if value is None else value, "command": command}
        )

    def flag(self, item: str, command: str) -> None:
        self.attention.append({"item": item, "command": command})

    @property
    def status(self) -> str:
        if not self.applicable:
            return "not applicable"
        return "attention" if self.attention else "ok"


def tail(s: Scope, action: str) -> str:
    """The audit events of `action` since the period began (the chain's own view)."""
    return (
        f"broker audit tail -n 100000 --since {shlex.quote(s.since)} --action {shlex.quote(action)}"
    )


def grant_cmd(grant_id: str) -> str:
    return f"broker grants show {shlex.quote(grant_id)}"


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def account_management(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    holders = f["holders"]
    r.add("accounts holding a role in the period", len(holders), "broker grants list")
    changes = f["changes"]
    r.add("access changes read from AD", sum(changes.values()), tail(s, "directory.*"))
    for action, count in changes.items():
        if count:
            r.add(f"  {action.removeprefix('directory.')}", count, tail(s, action))
    ended = f["ended_by_directory"]
    r.add(
        "grants ended because AD or the policy no longer allowed them",
        len(ended),
        tail(s, "grant.revoke"),
    )
    lags = [row[6] for row in ended if row[6] is not None]
    r.add(
        "slowest end after the AD change (s)",
        _seconds(max(lags)) if lags else "-",
        tail(s, "grant.revoke"),
    )
    for gid, user, state in f["disabled_still_active"]:
        r.flag(f"grant {gid} of {user} is active though the account is {state}", grant_cmd(gid))
    r.details = {
        "holders": [{"user": u, "grants": n} for u, n in holders],
        "ended_by_directory": [
            {
                "grant": g,
                "user": u,
                "reason": why,
                "ended_at": end,
                "change": ch,
                "change_at": at,
                "lag_s": _seconds(lag),
            }
            for g, u, why, end, ch, at, lag in ended
        ],
    }
    return r


def time_boxes(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    ends: dict[str, int] = f["ends"]
    r.add("grants ended in the period", sum(ends.values()), "broker grants list")
    r.add("  at their time box (expired)", ends.get("expired", 0), tail(s, "grant.expire"))
    r.add("  earlier (revoked)", ends.get("revoked", 0), tail(s, "grant.revoke"))
    r.add("grants that outlived their time box", len(f["outlived"]), "broker grants list --active")
    r.add(
        "longest reaper delay after a time box (s)",
        _seconds(f["reaper_lag_s"]),
        tail(s, "grant.expire"),
    )
    if f["longest"]:
        gid, user, length = f["longest"][0]
        r.add("longest time box granted (s)", _seconds(length) or 0, grant_cmd(gid))
        r.details["longest"] = {"grant": gid, "user": user, "seconds": _seconds(length)}
    for gid, user, not_after, state in f["outlived"]:
        what = (
            "is still active" if state == "active" else "still has a sudo rule waiting for removal"
        )
        r.flag(f"grant {gid} of {user} ended at {not_after} and {what}", grant_cmd(gid))
    return r


def least_privilege(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    r.add("grants issued", f["grants"], "broker grants list")
    r.add("  root (every command)", f["root"], "broker grants list")
    r.add("  command-set grants", f["grants"] - f["root"], "broker grants list")
    r.add("  after approval", f["approved"], tail(s, "grant.approve"))
    refused = f["refused_elevations"]
    r.add("elevations refused by the policy", sum(refused.values()), tail(s, "*.refused"))
    r.add("job launches refused while elevated", f["refused_launches"], tail(s, "session.deny"))
    r.add("logins refused (no login right)", f["refused_logins"], tail(s, "session.deny"))
    r.details["per_person_node"] = [
        {"user": u, "node": n, "elevations": c, "root": int(root or 0)}
        for u, n, c, root in f["per_person_node"]
    ]
    return r


def privileged_use(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    rec: dict[str, int] = f["recordings"]
    hook: dict[str, int] = f["hook"]
    since = shlex.quote(s.since)
    r.add(
        "elevated sessions opened (node hook)", hook.get("session.open", 0), tail(s, "session.open")
    )
    r.add("sessions recorded", sum(rec.values()), f"broker sessions list --since {since}")
    r.add(
        "sudo and job launches refused by the node",
        hook.get("session.deny", 0),
        tail(s, "session.deny"),
    )
    for state in ("incomplete", "quarantined"):
        if rec.get(state):
            r.flag(f"{rec[state]} recording(s) {state}", f"broker sessions list --since {since}")
    if hook.get("session.escape"):
        r.flag(
            f"{hook['session.escape']} session(s) escaped containment", tail(s, "session.escape")
        )
    r.details["recordings"] = rec
    return r


def concurrent_sessions(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    peak, limit = f["peak"], f["limit"]
    r.applicable = peak is not None or limit is not None
    seen = 0 if peak is None else int(peak[2])
    where = (
        "broker sessions list --running"
        if peak is None
        else f"broker sessions list --node {shlex.quote(peak[0])} --user {shlex.quote(peak[1])}"
    )
    r.add("most elevated sessions one user had open at once on a node", seen, where)
    r.add(
        "largest max_sessions of the grants in force",
        "-" if limit is None else int(limit),
        "broker grants list",
    )
    r.add("sudo refused at the session limit", f["refused"], tail(s, "session.deny"))
    if peak is not None and limit is not None and seen > int(limit):
        r.flag(f"{peak[1]} had {seen} sessions open on {peak[0]}, over the limit {limit}", where)
    return r


def software_installs(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    since = shlex.quote(s.since)
    r.add(
        "software installs seen in recorded sessions",
        f["installs"],
        f"broker sessions search --input 'install' --since {since}",
    )
    rows = f["per_grant"]
    r.add(
        "grants under which software was installed",
        len({g for g, *_ in rows if g != "-"}),
        "broker grants list",
    )
    for gid, user, node, count, first in rows:
        if gid == "-":
            r.flag(
                f"{count} install(s) by {user} on {node} outside any grant (first {first})",
                f"broker sessions list --user {shlex.quote(user)} --node {shlex.quote(node)} --since {since}",
            )
    r.details["per_grant"] = [
        {"grant": g, "user": u, "node": n, "installs": c, "first": first}
        for g, u, n, c, first in rows
    ]
    return r


def mfa_elevations(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    labels = {
        "direct": ("elevations without approval", "grant.issue"),
        "requests": ("elevation requests (waiting for approval)", "grant.request"),
        "approvals": ("approvals", "grant.approve"),
    }
    missing_total = 0
    for key, (label, action) in labels.items():
        part = f[key]
        r.add(label, part["total"], tail(s, action))
        missing_total += part["missing"]
        for seq, actor, target, ts in part["without_totp"]:
            r.flag(
                f"{action} {target} by {actor} at {ts} (seq {seq}) had no TOTP code accepted before it",
                tail(s, action),
            )
    r.add("of them without a fresh TOTP code", missing_total, tail(s, "mfa.verify"))
    return r


def mfa_replays(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    refused: dict[str, int] = f["refused"]
    cmd = tail(s, "mfa.verify")
    r.add("TOTP codes accepted", f["accepted"], cmd)
    r.add("replayed codes refused", refused.get("replayed code", 0), cmd)
    r.add(
        "wrong or malformed codes refused",
        refused.get("wrong code", 0) + refused.get("malformed code", 0),
        cmd,
    )
    r.add("attempts refused while locked", refused.get("locked", 0), cmd)
    r.add("lockouts", f["locks"], tail(s, "mfa.lock"))
    r.details["locked"] = [{"account": a, "at": at} for a, at in f["locked_now"]]
    return r


def keytab_rotation(f: dict[str, Any], s: Scope, overdue: list[tuple[str, str]]) -> Result:
    """`overdue`: (name, due time) of service accounts past their rotate_every now."""
    r = Result()
    states: dict[str, int] = f["states"]
    r.applicable = bool(f["accounts"] or states or overdue)
    r.add("keytab rotations done", states.get("done", 0), tail(s, "keytab.verify"))
    r.add("rotations failed", states.get("failed", 0), tail(s, "keytab.fail"))
    r.add("rotations abandoned", states.get("abandoned", 0), tail(s, "keytab.abandon"))
    r.add("service accounts overdue for rotation", len(overdue), "broker keytab status")
    for name, _kvno, _rotated, error in f["accounts"]:
        if error:
            r.flag(f"keytab {name}: last error: {error}", "broker keytab status")
    for name, kvno, at, error in f["failed"]:
        r.flag(
            f"rotation of {name} to kvno {kvno} failed at {at}: {error}",
            "broker keytab status",
        )
    for name, due in overdue:
        when = "has never been rotated" if due == "never rotated" else f"was due at {due}"
        r.flag(f"keytab {name} {when}", "broker keytab status")
    r.details["accounts"] = [
        {"name": n, "kvno": k, "last_rotated_at": at, "last_error": e}
        for n, k, at, e in f["accounts"]
    ]
    return r


@dataclass(frozen=True)
class Transports:
    """How the broker's connections are configured (from its settings, read at report time)."""

    directory: tuple[str, ...]  # URI schemes in use: ldaps, ldap+starttls
    directory_auth: str  # gssapi or simple
    recordings: str  # how sudo reaches the log server
    audit_forward: str | None  # scheme of audit.forward, None when off
    api_tls: bool  # the optional TCP listener (TLS + Kerberos)


def transports(f: dict[str, Any], s: Scope, t: Transports) -> Result:
    r = Result()
    r.add("directory transport", ", ".join(t.directory), "broker directory status")
    r.add("directory authentication", t.directory_auth, "broker config check")
    r.add("nodes reached over SSH with a pinned host key", f["pinned"], "broker node list")
    r.add("nodes without a pinned host key", len(f["unpinned"]), "broker node list")
    r.add("recordings to the log server", t.recordings, "broker config check")
    r.add(
        "recordings carried by a relay",
        f["relayed"],
        f"broker sessions list --since {shlex.quote(s.since)}",
    )
    r.add("audit events forwarded", t.audit_forward or "off", "broker config check")
    r.add(
        "API over the network",
        "TLS with Kerberos" if t.api_tls else "local socket only",
        "broker config check",
    )
    for node in f["unpinned"]:
        r.flag(
            f"node {node} has no pinned host key: the broker will not reach it",
            f"broker node enroll {shlex.quote(node)}",
        )
    if t.directory_auth == "simple":
        r.flag(
            "the directory is read with a simple bind (over TLS) rather than GSSAPI",
            "broker config check",
        )
    if t.audit_forward in ("tcp", "unix"):
        r.flag(
            f"audit events are forwarded over {t.audit_forward} without TLS", "broker config check"
        )
    return r


def event_logging(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    outcomes: dict[str, int] = f["outcomes"]
    export = f"broker audit export --since {shlex.quote(s.since)} --until {shlex.quote(s.until)}"
    r.add("audit events in the period", sum(outcomes.values()), export)
    for outcome in ("ok", "refused", "failed"):
        r.add(f"  {outcome}", outcomes.get(outcome, 0), export)
    r.add("first seq in the period", f["first_seq"], export)
    r.add("last seq in the period", f["last_seq"], export)
    return r


@dataclass(frozen=True)
class ChainCheck:
    """The audit chain verified as the report was computed (broker.audit.query.verify_store)."""

    ok: bool
    count: int
    head_seq: int
    sealed_seq: int
    checkpoints: int
    problem: str | None
    warnings: tuple[str, ...]


def chain_protection(c: ChainCheck, s: Scope) -> Result:
    r = Result()
    r.add("chain verified up to seq", c.head_seq if c.ok else "-", "broker audit verify")
    r.add("events verified", c.count, "broker audit verify")
    r.add("signed checkpoints", c.checkpoints, "broker audit verify")
    r.add("sealed up to seq", c.sealed_seq, "broker audit verify")
    if c.problem is not None:
        r.flag(c.problem, "broker audit verify")
    for warning in c.warnings:
        r.flag(warning, "broker audit seal")
    return r


def recording_digests(f: dict[str, Any], s: Scope) -> Result:
    r = Result()
    r.applicable = f["finished"] > 0
    r.add(
        "finished recordings in the period",
        f["finished"],
        f"broker sessions list --since {shlex.quote(s.since)}",
    )
    r.add(
        "recordings whose SHA-256 is in the audit chain", f["in_chain"], tail(s, "session.recorded")
    )
    for rid, node, user in f["missing"]:
        r.flag(
            f"recording {rid} ({user} on {node}) has no digest in the chain",
            f"broker sessions verify {shlex.quote(rid)}",
        )
    return r
