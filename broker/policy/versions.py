"""Applied policies in the store: the history of versions and which one is active.

`activate` is the only writer. It re-validates the text, computes the plan
against the active policy inside the write transaction (so two concurrent
applies cannot both plan against the same predecessor), switches the
active pointer and records `policy.apply` with the sha256 and the plan, all
in one transaction. The stored text is checked against its sha256 on every
read: a policy edited in the database is refused, never used.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from broker.audit import writer
from broker.core import sqldialect
from broker.core.errors import IntegrityError, RefusedError
from broker.core.identity import Snapshot
from broker.core.timeutil import to_text
from broker.policy.lint import Finding, lint
from broker.policy.load import LoadedPolicy, PolicyError, load_policy, sha256_of
from broker.policy.plan import Plan, make_plan
from broker.store.db import Store


@dataclass(frozen=True)
class PolicyVersion:
    id: int
    sha256: str
    source: str
    text: str
    applied_at: str
    actor: str

    @property
    def short(self) -> str:
        return self.sha256[:12]


@dataclass(frozen=True)
class ApplyResult:
    applied: bool  # False: this text was already the active policy
    version: PolicyVersion
    previous: PolicyVersion | None
    plan: Plan | None  # None when nothing was applied
    warnings: tuple[Finding, ...]


def active_version(conn: sqlite3.Connection) -> PolicyVersion | None:
    """The active version, verified against its sha256; None before the first apply."""
    row = conn.execute(
        "SELECT v.id, v.sha256, v.source, v.text, v.applied_at, v.actor"
        " FROM policy_active a JOIN policy_versions v ON v.id = a.version_id"
    ).fetchone()
    if row is None:
        return None
    version = PolicyVersion(*row)
    if sha256_of(version.text) != version.sha256:
        raise IntegrityError(
            f"the active policy (version {version.id}) does not match its sha256 "
            f"{version.short}: it was changed in the database",
            fix="check `broker audit verify`, then re-apply the policy file from version control",
        )
    # The row's own sha256 proves nothing to someone who rewrote text and hash together;
    # the hash-chained policy.apply event of this version is what vouches for it.
    engine = sqldialect.engine_of(conn)
    vouched = conn.execute(
        "SELECT 1 FROM audit_events WHERE action = 'policy.apply'"  # noqa: S608 (fixed fragments)
        f" AND {sqldialect.json_text(engine, 'details', 'version')} = ?"
        f" AND {sqldialect.json_text(engine, 'details', 'sha256')} = ?",
        (str(version.id), version.sha256),
    ).fetchone()
    if vouched is None:
        raise IntegrityError(
            f"the active policy (version {version.id}, sha256 {version.short}) has no matching"
            " policy.apply event in the audit chain: it was changed in the database",
            fix="check `broker audit verify`, then re-apply the policy file from version control",
        )
    return version


def history(conn: sqlite3.Connection, limit: int = 20) -> list[PolicyVersion]:
    """The most recent activations, newest first."""
    rows = conn.execute(
        "SELECT id, sha256, source, text, applied_at, actor FROM policy_versions"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [PolicyVersion(*row) for row in rows]


def parse_version(version: PolicyVersion) -> LoadedPolicy:
    """The policy a stored version holds; one that no longer validates is refused."""
    try:
        return load_policy(version.text, f"active policy {version.short}")
    except PolicyError as exc:
        raise RefusedError(
            f"the active policy {version.short} no longer validates: {exc.problems[0]}",
            fix="fix the policy file and apply it again",
        ) from exc


def located(loaded: LoadedPolicy, finding: Finding) -> str:
    """`file:line: severity CONTROL: message` for a lint finding."""
    return f"{loaded.source}:{loaded.lines.line(finding.path)}: {finding.text()}"


def refuse_lint_errors(loaded: LoadedPolicy) -> list[Finding]:
    """Refuse a policy with lint errors (every one, located); return its warnings."""
    findings = lint(loaded.policy)
    errors = [located(loaded, f) for f in findings if f.severity == "error"]
    if errors:
        raise RefusedError("\n".join(errors))
    return [f for f in findings if f.severity == "warning"]


def activate(
    store: Store,
    loaded: LoadedPolicy,
    snapshot: Snapshot,
    *,
    actor: str,
    now: datetime,
) -> ApplyResult:
    """Make `loaded` the active policy, atomically, with its `policy.apply` audit event."""
    warnings = tuple(refuse_lint_errors(loaded))
    with store.transaction() as conn:
        previous = active_version(conn)
        if previous is not None and previous.sha256 == loaded.sha256:
            return ApplyResult(False, previous, previous, None, warnings)
        old = parse_version(previous).policy if previous is not None else None
        plan = make_plan(
            old,
            loaded.policy,
            snapshot,
            old_sha256=previous.sha256 if previous else None,
            new_sha256=loaded.sha256,
        )
        stamp = to_text(now)
        cursor = conn.execute(
            "INSERT INTO policy_versions (sha256, source, text, applied_at, actor)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (loaded.sha256, loaded.source, loaded.text, stamp, actor),
        )
        version_id = int(cursor.fetchone()[0])
        conn.execute(
            "INSERT INTO policy_active (id, version_id) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET version_id = excluded.version_id",
            (version_id,),
        )
        writer.record(
            conn,
            writer.EventInput(
                actor,
                "policy.apply",
                "policy",
                details={
                    "sha256": loaded.sha256,
                    "previous_sha256": previous.sha256 if previous else None,
                    "version": version_id,
                    "source": loaded.source,
                    "plan": plan.summary(),
                    "warnings": [f.text() for f in warnings],
                },
            ),
            now,
        )
        version = PolicyVersion(version_id, loaded.sha256, loaded.source, loaded.text, stamp, actor)
    return ApplyResult(True, version, previous, plan, warnings)
