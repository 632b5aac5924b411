"""The data behind the HTML report's five charts, aggregated in SQL from the store.

Why SQL and not Python: a year of a busy cluster is a million audit events and tens of
thousands of grants and sessions. Every figure here is a GROUP BY (per day, per zone, per
duration bucket) over an indexed range, so the report's cost grows with the days and buckets
it shows, not with the rows behind them, and Python never walks the events.

Which tables, and why those: elevations are the `grants` the services issued (with
`grant_nodes` saying where each landed, hence its zones); the wait for approval is a granted
`elevation_requests` row's `created_at` to `decided_at`; session length is the session index
(`recordings`: sudo_logsrvd's own start and end); MFA failures are the audit chain's refused
MFA attempts (the `mfa_failures` table forgets rows after the failure window, the chain does
not); keytab age is the last rotation that finished (`keytab_rotations`) before the period
ended, falling back on `keytab_accounts`.

Zones: nodes belong to zones in the active policy. The caller hands in that mapping
(`PolicyService.active().zone_of`); a zone's nodes travel to SQLite as one bound JSON array,
so no node or zone name is ever SQL text. A second factor belongs to an account, not a node, so the MFA
chart is the same for every zone and says so (`"zone": None`).

The result is plain JSON (lists, dicts, str, int, float, None): the report signs it, and the
HTML page draws it again from the signed document.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from broker.core import sqldialect
from broker.core.errors import UsageError
from broker.core.timeutil import from_text, to_text

# The five charts, in the order the page shows them.
CHART_KEYS = ("elevations", "approval_wait", "session_length", "mfa_failures", "keytab_age")

# Grants on nodes the policy places in no zone are drawn under this name.
NO_ZONE = "(no zone)"

# Duration buckets: each bound is the exclusive upper end, in seconds; one more bucket
# (at or above the last bound) follows. Labels are what the chart's axis shows.
WAIT_BOUNDS = (300, 900, 3600, 14400, 86400)
WAIT_LABELS = ("< 5 min", "5-15 min", "15-60 min", "1-4 h", "4-24 h", ">= 24 h")
SESSION_BOUNDS = (60, 600, 1800, 3600, 14400)
SESSION_LABELS = ("< 1 min", "1-10 min", "10-30 min", "30-60 min", "1-4 h", ">= 4 h")

# MFA refusals that count towards a lockout (broker/mfa: count=True), and the one refused
# because the account was already locked. Other refusals (not enrolled, already enrolled)
# are no failed factor and are not drawn.
MFA_ACTIONS = ("mfa.verify", "mfa.enroll.activate", "mfa.recovery.use")
FAILED_CODE_REASONS = (
    "wrong code",
    "malformed code",
    "replayed code",
    "wrong recovery code",
    "malformed recovery code",
)

# Per bucket of a duration `d` (five bound parameters, six buckets): its count, and the
# median and 90th percentile (nearest rank: the ceil(n/2)-th and ceil(9n/10)-th smallest) if
# they fall in it. One pass and one sort over the durations, whatever their number.
_HISTOGRAM = (
    " SELECT bucket, COUNT(*), MAX(CASE WHEN rn = (n + 1) / 2 THEN d END),"
    " MAX(CASE WHEN rn = (9 * n + 9) / 10 THEN d END)"
    " FROM (SELECT d, CASE WHEN d < :b0 THEN 0 WHEN d < :b1 THEN 1 WHEN d < :b2 THEN 2"
    " WHEN d < :b3 THEN 3 WHEN d < :b4 THEN 4 ELSE 5 END AS bucket,"
    " ROW_NUMBER() OVER (ORDER BY d) AS rn, COUNT(*) OVER () AS n FROM durations) AS ranked"
    " GROUP BY bucket"
)

# A set of node names: the bound JSON array (sqldialect.json_values), which SQLite's IN
# (subquery) turns into a temporary index once per statement, so the lookup per row is a
# search, not a scan. Used as `{unindexed:column} IN ...`: SQLite's unary plus keeps it from
# probing the table's index once per node of the zone (160 probes per grant on a big
# compute zone) instead of reading the grant's few rows and looking each up in the set.
# Every query here goes through sqldialect.render, which fills these markers per engine.
_IN_ZONE = "IN ({values::zone_nodes})"

# Grants issued per day that reached at least one node of a set (:inside = 1) or one node
# outside it (:inside = 0, the set being every zoned node: grants on unzoned nodes).
_ELEVATIONS = (
    "SELECT substr(g.created_at, 1, 10) AS day, COUNT(*) FROM grants g"
    " WHERE g.created_at >= :since AND g.created_at < :until"
    " AND EXISTS (SELECT 1 FROM grant_nodes gn WHERE gn.grant_id = g.id"
    " AND (CASE WHEN gn.node IN ({values::nodes}) THEN 1 ELSE 0 END) = :inside)"
    " GROUP BY day ORDER BY day"
)
_ELEVATIONS_TOTAL = (
    "SELECT COUNT(*) FROM grants g WHERE g.created_at >= :since AND g.created_at < :until"
    " AND (CAST(:zone AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM grant_nodes gn WHERE gn.grant_id = g.id"
    " AND {unindexed:gn.node} " + _IN_ZONE + "))"
)

# Seconds from a request to the decision that granted it, for requests granted in the period.
_WAITS = (
    "WITH durations(d) AS (SELECT"
    " {seconds:r.decided_at,r.created_at}"
    " FROM elevation_requests r"
    " WHERE r.state = 'granted' AND r.decided_at >= :since AND r.decided_at < :until"
    " AND (CAST(:zone AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM grant_nodes gn"
    " WHERE gn.grant_id = r.grant_id AND {unindexed:gn.node} " + _IN_ZONE + ")))"
)

# Seconds from a recording's start to its end, for sessions started in the period.
_SESSIONS = (
    "WITH durations(d) AS (SELECT"
    " {seconds:s.ended_at,s.started_at}"
    " FROM recordings s"
    " WHERE s.started_at >= :since AND s.started_at < :until"
    " AND s.ended_at IS NOT NULL AND s.ended_at >= s.started_at"
    " AND (CAST(:zone AS TEXT) IS NULL OR s.node " + _IN_ZONE + "))"
)

_MFA = (
    "SELECT substr(ts, 1, 10) AS day,"
    " SUM(CASE WHEN action != 'mfa.lock' AND {text:details,reason}"
    "     IN (:r0, :r1, :r2, :r3, :r4) THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN action != 'mfa.lock' AND {text:details,reason} = 'locked'"
    "     THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN action = 'mfa.lock' THEN 1 ELSE 0 END)"
    " FROM audit_events"
    " WHERE action IN (:a0, :a1, :a2, 'mfa.lock') AND ts >= :since AND ts < :until"
    " AND (outcome = 'refused' OR action = 'mfa.lock')"
    " GROUP BY day HAVING SUM(CASE WHEN action = 'mfa.lock' OR {text:details,reason}"
    "     IN (:r0, :r1, :r2, :r3, :r4, 'locked') THEN 1 ELSE 0 END) > 0"
    " ORDER BY day"
)

# Each account's last finished rotation before the period's end (None: never); its age in
# days is counted in Python (no date arithmetic in SQL: sqldialect).
_KEYTABS = (
    "SELECT k.name, COALESCE("
    " (SELECT MAX(r.updated_at) FROM keytab_rotations r"
    "  WHERE r.name = k.name AND r.state = 'done' AND r.updated_at < :until),"
    " CASE WHEN k.last_rotated_at < :until THEN k.last_rotated_at END)"
    " FROM keytab_accounts k"
    " WHERE CAST(:zone AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM keytab_nodes kn"
    " WHERE kn.name = k.name AND {unindexed:kn.node} " + _IN_ZONE + ")"
    " ORDER BY k.name"
)


def chart_series(
    db: sqlite3.Connection,
    since: datetime,
    until: datetime,
    zone: str | None,
    *,
    zone_of: Mapping[str, str],
) -> dict[str, Any]:
    """The five charts' data for [since, until), limited to `zone` when one is given.

    `zone_of` is the active policy's node -> zone mapping. Reads only: every query runs on
    the caller's connection, in WAL, so it never blocks a writer.
    """
    if since >= until:
        raise UsageError(
            f"the report's period is empty: {to_text(since)} is not before {to_text(until)}",
            fix="give --since earlier than --until",
        )
    params: dict[str, Any] = {
        "since": to_text(since),
        "until": to_text(until),
        "zone": zone,
        "zone_nodes": json.dumps(sorted(n for n, z in zone_of.items() if z == zone)),
    }
    return {
        "elevations": _elevations(db, params, zone, zone_of),
        "approval_wait": _durations(db, _WAITS, params, WAIT_BOUNDS, WAIT_LABELS),
        "session_length": _durations(db, _SESSIONS, params, SESSION_BOUNDS, SESSION_LABELS),
        "mfa_failures": _mfa_failures(db, params),
        "keytab_age": _keytab_age(db, params),
    }


def _elevations(
    db: sqlite3.Connection, params: dict[str, Any], zone: str | None, zone_of: Mapping[str, str]
) -> dict[str, Any]:
    """Grants issued per day, one series per zone they reached: a grant on nodes of two zones
    counts once in each, and once in `total`. One query per zone (a policy has a handful)."""
    nodes: dict[str, list[str]] = {}
    for node, name in zone_of.items():
        nodes.setdefault(name, []).append(node)
    wanted = [zone] if zone is not None else sorted(nodes)
    sets = [(name, sorted(nodes.get(name, [])), 1) for name in wanted]
    if zone is None:  # grants that reached a node outside every zone
        sets.append((NO_ZONE, sorted(zone_of), 0))
    per_zone: dict[str, dict[str, int]] = {}
    for name, members, inside in sets:
        query = {**params, "nodes": json.dumps(members), "inside": inside}
        counts = {str(day): int(n) for day, n in db.execute(_sql(db, _ELEVATIONS), query)}
        if counts:
            per_zone[name] = counts
    days = sorted({day for counts in per_zone.values() for day in counts})
    series = {name: [counts.get(day, 0) for day in days] for name, counts in per_zone.items()}
    total = db.execute(_sql(db, _ELEVATIONS_TOTAL), params).fetchone()[0]
    return {"days": days, "zones": series, "total": int(total or 0)}


def _durations(
    db: sqlite3.Connection,
    durations_sql: str,
    params: dict[str, Any],
    bounds: Sequence[int],
    labels: Sequence[str],
) -> dict[str, Any]:
    """A histogram of durations over fixed buckets, with their count, median and 90th
    percentile (seconds, nearest rank; None without data)."""
    bucket_params = {**params, **{f"b{i}": bound for i, bound in enumerate(bounds)}}
    counts = [0] * len(labels)
    median: float | None = None
    p90: float | None = None
    histogram = _sql(db, durations_sql + _HISTOGRAM)
    for bucket, count, mid, high in db.execute(histogram, bucket_params):
        counts[int(bucket)] = int(count)
        median = round(float(mid), 1) if mid is not None else median
        p90 = round(float(high), 1) if high is not None else p90
    return {
        "buckets": [{"label": label, "count": n} for label, n in zip(labels, counts, strict=True)],
        "count": sum(counts),
        "median_s": median,
        "p90_s": p90,
    }


def _mfa_failures(db: sqlite3.Connection, params: dict[str, Any]) -> dict[str, Any]:
    """Per day: failed codes (those that count towards a lockout), attempts refused while
    locked, and lockouts. Account-wide, whatever the zone."""
    mfa_params = {
        **params,
        **{f"r{i}": reason for i, reason in enumerate(FAILED_CODE_REASONS)},
        **{f"a{i}": action for i, action in enumerate(MFA_ACTIONS)},
    }
    rows = db.execute(_sql(db, _MFA), mfa_params).fetchall()
    return {
        "zone": None,
        "days": [str(row[0]) for row in rows],
        "failed_codes": [int(row[1] or 0) for row in rows],
        "while_locked": [int(row[2] or 0) for row in rows],
        "lockouts": [int(row[3] or 0) for row in rows],
    }


def _keytab_age(db: sqlite3.Connection, params: dict[str, Any]) -> dict[str, Any]:
    """Each service account's keytab age in days at the period's end (None: the broker
    never finished a rotation of it by then)."""
    until = from_text(params["until"])
    accounts = [
        {
            "name": str(name),
            "age_days": None
            if last is None
            else round((until - from_text(last)).total_seconds() / 86400, 2),
        }
        for name, last in db.execute(_sql(db, _KEYTABS), params)
    ]
    return {"accounts": accounts}


def _sql(db: sqlite3.Connection, sql: str) -> str:
    """`sql` with its sqldialect markers filled for `db`'s engine."""
    return sqldialect.render(sqldialect.engine_of(db), sql)
