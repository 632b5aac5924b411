"""ReportService: compute the controls report over one store, sign it, verify one.

The I/O side of broker.report: it reads the store (queries), verifies the chain, reads the
settings that say which transports are in use, signs with the audit checkpoint key, and
writes one audit event per report made or verified (AU-2: who looked at the evidence,
and which verifications failed).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit import writer
from broker.audit.chain import GENESIS_HASH
from broker.audit.checkpoint import (
    checkpoint_keys,
    load_public_key,
    load_signing_key,
    public_key_path,
)
from broker.audit.query import verify_store
from broker.config.settings import Settings
from broker.core import sqldialect
from broker.core.errors import BadRequestError, UsageError
from broker.core.pubkeys import load_peer_keys
from broker.core.timeutil import from_text, to_text
from broker.policy.model import Policy
from broker.report import document, evidence, queries
from broker.report.catalogue import CATALOGUE, Control
from broker.report.charts import chart_series
from broker.report.evidence import ChainCheck, Result, Scope, Transports
from broker.store.db import Store

# A grant still active this long after its end counts as having outlived it: the reaper
# runs every grants.reap_interval (30 s by default); the node refuses it at once anyway.
REAPER_GRACE = timedelta(minutes=10)


@dataclass(frozen=True)
class VerifyOutcome:
    """`broker report verify`: ok, or which check failed (`signature`, `head`, `chain`)."""

    ok: bool
    head_seq: int
    failed: str | None
    message: str


def transports_of(settings: Settings) -> Transports:
    """What SC-8 reports about the configured connections (no secrets: schemes only)."""
    d = settings.directory
    schemes: tuple[str, ...] = ()
    if d is not None:
        schemes = tuple(
            sorted({"ldaps" if u.startswith("ldaps:") else "ldap+starttls" for u in d.uris})
        )
    forward = settings.audit.forward
    return Transports(
        directory=schemes or ("not configured",),
        directory_auth=d.auth if d is not None else "not configured",
        recordings="mutual TLS (stunnel, the session CA) to sudo_logsrvd",
        audit_forward=None if forward is None else forward.split(":", 1)[0],
        api_tls=settings.daemon.listen is not None,
    )


def _chart_series(
    conn: sqlite3.Connection, period: queries.Period, zone: str | None, policy: Policy | None
) -> dict[str, Any]:
    """The charts' data, signed with the rest: the figures the HTML page draws are the ones
    the signature covers. Nodes are put in zones by the active policy (none: no zones)."""
    zone_of = {} if policy is None else dict(policy.zone_of)
    return chart_series(
        conn, from_text(period.since), from_text(period.until), zone, zone_of=zone_of
    )


def _up_to(chain: ChainCheck, head_seq: int) -> ChainCheck:
    """The verification as of the report's head: events committed after it (the other
    connection may have seen them) are not the report's."""
    return replace(
        chain,
        head_seq=min(chain.head_seq, head_seq),
        count=min(chain.count, head_seq),
        sealed_seq=min(chain.sealed_seq, head_seq),
    )


class ReportService:
    """The controls report of one store."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        policy: Callable[[], Policy | None],
        zone_nodes: Callable[[str], frozenset[str] | None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._policy = policy
        self._zone_nodes = zone_nodes

    def controls(
        self, *, since: datetime, until: datetime, zone: str | None, actor: str, now: datetime
    ) -> dict[str, Any]:
        """The signed report for [since, until), optionally limited to one zone's nodes."""
        key = load_signing_key(self._settings.signing_key)
        conn = self._store.conn
        nodes = None if zone is None else self._nodes_of(zone)
        period = queries.Period(to_text(since), to_text(until), nodes)
        scope = Scope(period.since, period.until, zone)
        # The chain is verified on a connection of its own in a second thread while the
        # figures are read here: verification is Python (it holds the GIL), the figures
        # are SQLite (which releases it), so on two cores the report costs little more
        # than the larger of the two instead of their sum.
        with ThreadPoolExecutor(1, thread_name_prefix="report-verify") as pool:
            # One read transaction: every figure, and the head, from the same snapshot; the
            # verification starts after the head is read, so it sees at least that head.
            conn.execute(sqldialect.begin_snapshot(sqldialect.engine_of(conn)))
            try:
                head = writer.head(conn)
                chain = pool.submit(self._chain, head[0])
                results = self._results(conn, period, scope, now)
                charts = _chart_series(conn, period, zone, self._policy())
            finally:
                conn.execute("COMMIT")
            verified = _up_to(chain.result(), head[0])
        results["AU-9(3)"] = evidence.chain_protection(verified, scope)
        doc = document.assemble(
            generated_at=to_text(now),
            broker=socket.gethostname(),
            since=period.since,
            until=period.until,
            zone=zone,
            head=head,
            controls=[document.control_entry(c, results[c.id]) for c in CATALOGUE],
            charts=charts,
        )
        signed = document.sign(doc, key)
        self._audit(
            actor,
            "report.controls",
            "ok",
            now,
            head_seq=head[0],
            since=period.since,
            until=period.until,
            zone=zone,
        )
        return signed

    def _nodes_of(self, zone: str) -> tuple[str, ...]:
        found = self._zone_nodes(zone)
        if found is None:
            raise BadRequestError(
                f"zone {zone} is not in the active policy", fix="see `broker policy show`"
            )
        return tuple(sorted(found))

    def _results(
        self,
        conn: sqlite3.Connection,
        p: queries.Period,
        s: Scope,
        now: datetime,
    ) -> dict[str, Result]:
        """Each control's result, by the evidence function its catalogue entry names (but
        AU-9(3)'s, which the caller adds from the verification)."""
        at = to_text(now - REAPER_GRACE)
        figures: dict[str, Callable[[Control], Result]] = {
            "account_management": lambda c: evidence.account_management(
                queries.account_management(conn, p), s
            ),
            "time_boxes": lambda c: evidence.time_boxes(queries.time_boxes(conn, p, at), s),
            "least_privilege": lambda c: evidence.least_privilege(
                queries.least_privilege(conn, p), s
            ),
            "privileged_use": lambda c: evidence.privileged_use(queries.privileged_use(conn, p), s),
            "concurrent_sessions": lambda c: evidence.concurrent_sessions(
                queries.concurrent_sessions(conn, p), s
            ),
            "software_installs": lambda c: evidence.software_installs(
                queries.software_installs(conn, p), s
            ),
            "mfa_elevations": lambda c: evidence.mfa_elevations(queries.mfa_elevations(conn, p), s),
            "mfa_replays": lambda c: evidence.mfa_replays(queries.mfa_replays(conn, p), s),
            "keytab_rotation": lambda c: evidence.keytab_rotation(
                queries.keytab_rotation(conn, p), s, self._overdue(conn, now)
            ),
            "transports": lambda c: evidence.transports(
                queries.pinned_nodes(conn, p), s, transports_of(self._settings)
            ),
            "event_logging": lambda c: evidence.event_logging(queries.event_logging(conn, p), s),
            "recording_digests": lambda c: evidence.recording_digests(
                queries.recording_digests(conn, p), s
            ),
        }
        # chain_protection (AU-9(3)) comes from the verification running beside these.
        return {c.id: figures[c.evidence](c) for c in CATALOGUE if c.evidence in figures}

    def _chain(self, up_to: int) -> ChainCheck:
        """The whole chain verified against the checkpoint logs, as `broker audit verify`,
        on a read-only connection of this thread's own; a problem after the report's head
        (`up_to`) is not this report's (its figures were read before that row)."""
        path = self._settings.db_path
        uri = f"{path.absolute().as_uri()}?mode=ro"  # as_uri escapes what a URI cannot hold
        # timeout: SQLite's busy timeout, 30 s, as the store's own connections wait.
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
        try:
            report = verify_store(
                conn,
                self._settings.signing_key,
                self._settings.checkpoint_paths,
                self._settings.audit.trusted_keys,
            )
        finally:
            conn.close()
        problem = None
        ok = report.ok or (report.problem is not None and report.problem.seq > up_to)
        if report.problem is not None and not ok:
            p = report.problem
            problem = f"audit chain BAD at seq {p.seq} ({p.kind}): {p.message}"
        return ChainCheck(
            ok=ok,
            count=report.count,
            head_seq=up_to if ok and not report.ok else (report.head_seq if ok else 0),
            sealed_seq=report.sealed_seq,
            checkpoints=report.checkpoints,
            problem=problem,
            warnings=tuple(report.warnings),
        )

    def _overdue(self, conn: sqlite3.Connection, now: datetime) -> list[tuple[str, str]]:
        """Service accounts of the active policy past their rotate_every (never rotated
        ones count from nothing: they are overdue until the first rotation)."""
        policy = self._policy()
        if policy is None:
            return []
        last = dict(conn.execute("SELECT name, last_rotated_at FROM keytab_accounts").fetchall())
        out = []
        for name, account in sorted(policy.service_accounts.items()):
            stamp = last.get(name)
            if stamp is None:
                out.append((name, "never rotated"))
                continue
            due = from_text(str(stamp)) + account.rotate_every
            if due < now:
                out.append((name, to_text(due)))
        return out

    def verify(self, doc: dict[str, Any], *, actor: str, now: datetime) -> VerifyOutcome:
        """Check the signature, that the stated head is the chain's row at that seq, and
        that the chain verifies up to it; one audit event either way."""
        outcome = self._check(doc)
        self._audit(
            actor,
            "report.verify",
            "ok" if outcome.ok else "failed",
            now,
            head_seq=outcome.head_seq,
            failed=outcome.failed,
            message=outcome.message,
        )
        return outcome

    def _report_key(self, doc: dict[str, Any]) -> Ed25519PublicKey:
        """The key a report says signed it, when it is this broker's or a trusted peer's
        (audit.trusted_keys: a peer's report over the shared chain verifies here); else
        this broker's, which then names the mismatch."""
        public = load_public_key(public_key_path(self._settings.signing_key))
        peers = load_peer_keys(public, self._settings.audit.trusted_keys, "trusted audit key")
        signature = doc.get("signature")
        claimed = signature.get("key_id") if isinstance(signature, dict) else None
        return checkpoint_keys(public, peers).get(str(claimed), public)

    def _check(self, doc: dict[str, Any]) -> VerifyOutcome:
        if doc.get("schema") != document.SCHEMA:  # the key also signs checkpoints: only a
            # report's shape is checked as a report
            raise BadRequestError(f"not a {document.SCHEMA} document")
        try:
            seq, digest = document.stated_head(doc)
        except UsageError as exc:
            raise BadRequestError(exc.message) from None
        bad = document.signature_problem(doc, self._report_key(doc))
        if bad is not None:
            return VerifyOutcome(False, seq, "signature", bad)
        stored = queries.hash_at(self._store.conn, seq) if seq else GENESIS_HASH
        if stored != digest:
            found = "no such seq" if stored is None else f"hash {stored[:16]}…"
            return VerifyOutcome(
                False,
                seq,
                "head",
                f"the report's audit head seq {seq} hash {digest[:16]}… is not in the chain"
                f" ({found}): the chain was rewritten or the report is from another broker",
            )
        report = verify_store(
            self._store.conn,
            self._settings.signing_key,
            self._settings.checkpoint_paths,
            self._settings.audit.trusted_keys,
        )
        if report.problem is not None and report.problem.seq <= seq:
            p = report.problem
            return VerifyOutcome(
                False,
                seq,
                "chain",
                f"the audit chain is broken at seq {p.seq} ({p.kind}), at or before the "
                f"report's head seq {seq}: {p.message}",
            )
        return VerifyOutcome(
            True,
            seq,
            None,
            f"report verified: signed by this broker, "
            f"computed from audit head seq {seq}, chain intact up to it",
        )

    def _audit(self, actor: str, action: str, outcome: str, now: datetime, **details: Any) -> None:
        with self._store.transaction() as conn:
            writer.record(conn, writer.EventInput(actor, action, "report", outcome, details), now)
