"""Alert delivery: every alert to syslog and, when configured, to a webhook signed with HMAC.

The detector only queues deliveries (`enqueue`, in the transaction that inserts the
alert); `Deliverer.run_once` sends them later from the daemon's scheduler, with the
network outside any store transaction, so a slow or dead receiver never holds the
database write lock or delays detection. A failed send is retried with doubling backoff;
after `alerts.webhook_attempts` tries the delivery is marked failed and an
`alert.delivery.failed` audit event says so.

Webhook receivers: the body is the alert as canonical JSON (sorted keys, ASCII).
`X-Broker-Signature: t=<unix time>,v1=<hex>` carries HMAC-SHA256 over
`"<t>." + body` with the shared secret; check it with `verify_signature` (or the same
computation), refuse stale timestamps, and use `X-Broker-Alert-Id` to drop the
duplicates a retry after a lost answer can produce.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from broker.audit import writer
from broker.config.settings import Settings
from broker.core import syslog
from broker.core.errors import BrokerError
from broker.detect import alerts
from broker.detect.alerts import COLUMNS
from broker.notify.transport import describe, load_secret, post
from broker.store.db import Store

log = logging.getLogger("broker.detect")

SYSLOG_SEVERITY: Final = {
    "critical": "crit",
    "high": "err",
    "medium": "warning",
    "low": "notice",
    "info": "info",
}
SYSLOG_TAG: Final = "broker-alert"
SIGNATURE_HEADER: Final = "X-Broker-Signature"
ALERT_ID_HEADER: Final = "X-Broker-Alert-Id"
MAX_BACKOFF: Final = timedelta(minutes=15)
_MAX_HEADER = 1024


@dataclass(frozen=True)
class AlertMessage:
    """One alerts row, as sent: every column, details and actions decoded from JSON."""

    id: int
    created_at: str
    event_at: str | None
    rule: str
    severity: str
    user: str | None
    node: str | None
    grant_id: str | None
    recording_id: str | None
    message: str
    details: Mapping[str, Any]
    actions: tuple[str, ...]
    source: str
    acked_at: str | None
    acked_by: str | None
    ack_note: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AlertMessage:
        """Build from a row as `alerts.alert_row` reads it (columns in `COLUMNS` order).

        Positional, so a plain tuple (the store's default) and an `sqlite3.Row` both work.
        A row that does not hold what migration 8 allows raises ValueError.
        """
        if len(row) != len(COLUMNS):
            raise ValueError(f"an alerts row has {len(COLUMNS)} columns, got {len(row)}")
        values = dict(zip(COLUMNS, tuple(row), strict=True))
        if not isinstance(values["id"], int) or isinstance(values["id"], bool):
            raise ValueError("alert id is not an integer")
        if values["severity"] not in SYSLOG_SEVERITY:
            raise ValueError(f"alert {values['id']} has an unknown severity")
        for name in COLUMNS[1:]:
            required = name in ("created_at", "rule", "message", "details", "actions", "source")
            if not isinstance(values[name], str) and (required or values[name] is not None):
                raise ValueError(f"alert {values['id']}: {name} is not text")
        details = _strict_json(values["details"])
        actions = _strict_json(values["actions"])
        if not isinstance(details, dict):
            raise ValueError(f"alert {values['id']}: details is not a JSON object")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ValueError(f"alert {values['id']}: actions is not a JSON list of names")
        values["details"] = details
        values["actions"] = tuple(actions)
        return cls(**values)


def _strict_json(text: object) -> object:
    """JSON without NaN or Infinity (which no receiver's parser is obliged to take)."""
    if not isinstance(text, str):
        raise ValueError("expected JSON text")

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def load_alert(conn: sqlite3.Connection, alert_id: int) -> AlertMessage | None:
    """The alert as stored now, or None when there is no such row."""
    row = alerts.alert_row(conn, alert_id)
    return None if row is None else AlertMessage.from_row(row)


PRIVATE_DETAILS = frozenset({"excerpt"})


def payload(alert: AlertMessage) -> bytes:
    """The webhook body: every column, canonical JSON (sorted keys, compact, ASCII, no NaN).

    A session match's `excerpt` (the line root typed, which may hold a password) stays in
    the broker: `broker alerts show` has it; the receiver gets the session id instead."""
    body = {name: getattr(alert, name) for name in COLUMNS}
    body["details"] = {k: v for k, v in alert.details.items() if k not in PRIVATE_DETAILS}
    body["actions"] = list(alert.actions)
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


# --- signatures -------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Broker-Signature` value: `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>." + body)>`.

    The timestamp is inside the MAC, so a captured request cannot be replayed later
    than the receiver's tolerance.
    """
    mac = hmac.new(secret, f"{int(timestamp)}.".encode("ascii") + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now: int, tolerance: int = 300
) -> bool:
    """Check an `X-Broker-Signature` header as a webhook receiver should.

    True only when the header is well formed, its timestamp lies within `tolerance`
    seconds of `now` (unix seconds; refuses replays), and one of its `v1=` values equals
    HMAC-SHA256(secret, "<t>." + body), compared in constant time. Pass the raw request
    body, before any JSON parsing.
    """
    if not secret or len(header) > _MAX_HEADER:
        return False
    stamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if stamp is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                return False
            stamp = int(value)
        elif key == "v1":
            macs.append(value)
    if stamp is None or not macs or abs(int(now) - stamp) > tolerance:
        return False
    expected = sign(secret, stamp, body).partition(",v1=")[2]
    matched = False
    for candidate in macs:
        matched |= hmac.compare_digest(expected.encode("ascii"), candidate.encode("utf-8"))
    return matched


# --- syslog -----------------------------------------------------------------------------------


def syslog_text(alert: AlertMessage) -> str:
    """`alert <id> <severity> <rule> user=<u> node=<n> grant=<g> session=<r>: <message>`;
    each value printable ASCII, spaces in the key=value fields made `?` so they still split,
    absent values `-`."""

    def field(value: str | None) -> str:
        return "-" if not value else syslog.clean(value, 200).replace(" ", "?")

    head = (
        f"alert {alert.id} {field(alert.severity)} {field(alert.rule)}"
        f" user={field(alert.user)} node={field(alert.node)}"
        f" grant={field(alert.grant_id)} session={field(alert.recording_id)}"
    )
    return f"{head}: {syslog.clean(alert.message)}"


def send_syslog(alert: AlertMessage, socket_path: Path, facility: str) -> None:
    """One datagram for the alert; raises OSError when syslog does not take it."""
    syslog.send(
        socket_path, facility, SYSLOG_SEVERITY[alert.severity], SYSLOG_TAG, syslog_text(alert)
    )


# --- queue ------------------------------------------------------------------------------------


def channels(settings: Settings) -> tuple[str, ...]:
    """Where alerts go with these settings."""
    out: list[str] = []
    if settings.alerts.syslog:
        out.append("syslog")
    if settings.alerts.webhook_url is not None:
        out.append("webhook")
    return tuple(out)


def enqueue(
    conn: sqlite3.Connection, alert_id: int, now: datetime, settings: Settings
) -> tuple[str, ...]:
    """Queue the alert's deliveries, due at once; call it in the transaction that inserts
    the alert, so an alert is never stored without its way out. Returns the channels."""
    if not conn.in_transaction:
        raise RuntimeError("alert deliveries must be queued inside Store.transaction()")
    queued = channels(settings)
    alerts.queue_deliveries(conn, alert_id, queued, now)
    return queued


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after a failed try when `attempts` tries had failed before it:
    webhook_backoff * 2^attempts, at most 15 minutes."""
    delay: timedelta = settings.alerts.webhook_backoff * (2 ** min(attempts, 30))
    return min(delay, MAX_BACKOFF)


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryReport:
    """What one pass did: deliveries sent, scheduled for a retry, and given up."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    # Due webhook deliveries left for the next pass because the webhook just failed.
    deferred: int = 0


@dataclass(frozen=True)
class _Due:
    alert_id: int
    channel: str
    attempts: int


class _Permanent(Exception):
    """A delivery that no retry can make work (the alert row is gone or unreadable,
    its channel no longer configured)."""


class Deliverer:
    """Sends due deliveries; one instance per daemon, `run_once` from one thread at a time."""

    def __init__(self, store: Store, settings: Settings, *, batch: int = 50) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._settings = settings
        self._batch = batch
        self._tls: ssl.SSLContext | None = None

    def run_once(self, now: datetime) -> DeliveryReport:
        """Send up to `batch` due deliveries (oldest first) and record each outcome.

        Once the webhook fails in a pass, the pass tries it no more: a dead receiver costs
        one timeout per pass, not one per queued alert, and the scheduler moves on.
        """
        due = self._due(now)
        secret: bytes | str | None = None  # the key, or why it is unusable
        sent = retried = failed = deferred = 0
        webhook_down = False
        for item in due:
            error: str | None
            permanent = False
            if item.channel == "webhook" and webhook_down:
                deferred += 1
                continue
            try:
                alert = self._alert(item)
                if item.channel == "syslog":
                    error = self._syslog(alert)
                else:
                    if secret is None:
                        secret = self._secret()
                    error = secret if isinstance(secret, str) else self._webhook(alert, secret, now)
            except _Permanent as exc:
                error, permanent = str(exc), True
            outcome = self._record(item, error, permanent, now)
            webhook_down |= item.channel == "webhook" and error is not None and not permanent
            sent += outcome == "sent"
            retried += outcome == "pending"
            failed += outcome == "failed"
        return DeliveryReport(sent=sent, retried=retried, failed=failed, deferred=deferred)

    def _due(self, now: datetime) -> list[_Due]:
        return [_Due(*row) for row in alerts.due_deliveries(self._store.conn, now, self._batch)]

    def _alert(self, item: _Due) -> AlertMessage:
        try:
            alert = load_alert(self._store.conn, item.alert_id)
        except ValueError as exc:
            raise _Permanent(f"alert row unreadable: {exc}") from exc
        if alert is None:
            raise _Permanent("alert row not found")
        wanted = channels(self._settings)
        if item.channel not in wanted:
            raise _Permanent(f"{item.channel} delivery is no longer configured")
        return alert

    def _syslog(self, alert: AlertMessage) -> str | None:
        cfg = self._settings.alerts
        try:
            send_syslog(alert, cfg.syslog_socket, cfg.syslog_facility)
        except OSError as exc:
            return f"syslog at {cfg.syslog_socket}: {describe(exc)}"
        return None

    def _secret(self) -> bytes | str:
        path = self._settings.alerts.webhook_secret_file
        if path is None:  # settings refuse a webhook_url without it
            return "no webhook_secret_file configured"
        try:
            return load_secret(path, service_user=self._settings.broker.service_user)
        except BrokerError as exc:
            return f"webhook secret unusable: {exc.one_line()}"

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            ca_file = self._settings.alerts.webhook_ca_file
            if ca_file is not None:
                context.load_verify_locations(cafile=str(ca_file))
            self._tls = context
        return self._tls

    def _webhook(self, alert: AlertMessage, secret: bytes, now: datetime) -> str | None:
        cfg = self._settings.alerts
        assert cfg.webhook_url is not None  # _alert checked the channel is configured
        body = payload(alert)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, int(now.timestamp()), body),
            ALERT_ID_HEADER: str(alert.id),
            "User-Agent": "broker",
        }
        context: ssl.SSLContext | None = None
        if urlsplit(cfg.webhook_url).scheme.lower() == "https":
            try:
                context = self._context()
            except (OSError, ValueError) as exc:
                return f"cannot use webhook_ca_file {cfg.webhook_ca_file}: {describe(exc)}"
        return post(
            cfg.webhook_url, body, headers, timeout=cfg.webhook_timeout.total_seconds(), tls=context
        )

    def _record(self, item: _Due, error: str | None, permanent: bool, now: datetime) -> str:
        """Store the outcome of one try; returns the delivery's new state."""
        tries = item.attempts + 1
        key = (item.alert_id, item.channel, item.attempts)
        with self._store.transaction() as conn:
            if error is None:
                state = "sent"
                changed = alerts.delivery_sent(conn, *key, now)
            elif permanent or tries >= self._settings.alerts.webhook_attempts:
                state = "failed"
                changed = alerts.delivery_failed(conn, *key, error)
                if changed:
                    writer.record(conn, _failed_event(item, tries, error), now)
            else:
                state = "pending"
                retry_at = now + backoff(self._settings, item.attempts)
                changed = alerts.delivery_retry(conn, *key, error, retry_at)
        if not changed:  # another deliverer recorded this try first
            return "raced"
        _log_outcome(item, state, tries, error)
        return state


def _failed_event(item: _Due, tries: int, error: str) -> writer.EventInput:
    """The audit event of a delivery given up for good."""
    return writer.EventInput(
        "broker",
        "alert.delivery.failed",
        f"alert:{item.alert_id}",
        "failed",
        {"alert_id": item.alert_id, "channel": item.channel, "attempts": tries, "error": error},
    )


def _log_outcome(item: _Due, state: str, tries: int, error: str | None) -> None:
    if state == "failed":
        log.error(
            "alert %d: %s delivery failed for good after %d tries: %s",
            item.alert_id,
            item.channel,
            tries,
            error,
        )
    elif state == "pending":
        log.warning(
            "alert %d: %s delivery failed (try %d), will retry: %s",
            item.alert_id,
            item.channel,
            tries,
            error,
        )
