"""Sending queued request notices: the webhook (Standard Webhooks signature) and SMTP mail.

`NoticeDeliverer.run_once` runs in the daemon's notifier thread, with the network outside
any store transaction. A failed send is retried with doubling backoff (at most 15 minutes
apart); after `notify.attempts` tries the notice is marked failed and a
`notify.delivery.failed` audit event says so. Once a channel fails in a pass the pass
tries it no more, so a dead receiver costs one timeout per pass.

Webhook receivers check `webhook-signature: v1,<base64 HMAC-SHA256>` over
`"<webhook-id>.<webhook-timestamp>.<body>"` (Standard Webhooks); a key file holding
`whsec_<base64>` is used as that spec's secret (decoded), any other content as raw bytes.
Mail goes only over STARTTLS with a verified certificate: a server that does not offer
it is a failed try, never a plain-text send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Final
from urllib.parse import urlsplit

from broker.audit import writer
from broker.config.settings import Settings
from broker.core.errors import BrokerError
from broker.notify import outbox
from broker.notify.outbox import Notice
from broker.notify.transport import describe, load_secret, post
from broker.store.db import Store

log = logging.getLogger("broker.notify")

MAX_BACKOFF: Final = timedelta(minutes=15)
_WHSEC: Final = b"whsec_"


def standard_key(secret: bytes) -> bytes:
    """The HMAC key a secret file holds: `whsec_<base64>` decoded, else the bytes as they are."""
    if secret.startswith(_WHSEC):
        try:
            return base64.b64decode(secret[len(_WHSEC) :], validate=True)
        except ValueError:
            return secret
    return secret


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: v1,base64(HMAC-SHA256(key, id.timestamp.body))."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_body(notice: Notice, fmt: str) -> bytes:
    """The POSTed body: the JSON event, or `{"text": ...}` for Slack and Teams."""
    if fmt == "slack":
        text = f"{notice.subject}\n\n{notice.text}"
        return json.dumps({"text": text}, sort_keys=True, ensure_ascii=True).encode()
    return notice.event.encode()


@dataclass(frozen=True)
class NoticeReport:
    """What one pass did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    deferred: int = 0


class NoticeDeliverer:
    """Sends due notices; one per daemon, `run_once` from one thread at a time."""

    def __init__(self, store: Store, settings: Settings, *, batch: int = 50) -> None:
        self._store = store
        self._settings = settings
        self._cfg = settings.notify
        self._batch = batch
        self._contexts: dict[str, ssl.SSLContext] = {}

    def run_once(self, now: datetime) -> NoticeReport:
        """Send up to `batch` due notices, oldest first, and record each outcome."""
        counts = {"sent": 0, "pending": 0, "failed": 0, "deferred": 0, "raced": 0}
        down: set[str] = set()
        for notice in outbox.due(self._store.conn, now, self._batch):
            if notice.channel in down:
                counts["deferred"] += 1
                continue
            permanent = notice.channel not in self._cfg.channels
            if permanent:
                error: str | None = f"{notice.channel} is no longer configured"
            else:
                error = self._send(notice, now)
            state = self._record(notice, error, permanent, now)
            if state == "pending":
                down.add(notice.channel)
            counts[state] += 1
        return NoticeReport(counts["sent"], counts["pending"], counts["failed"], counts["deferred"])

    def _send(self, notice: Notice, now: datetime) -> str | None:
        """One try; None when it went out, else why not (never a secret, never the body)."""
        try:
            if notice.channel == "webhook":
                return self._webhook(notice, now)
            return self._mail(notice, now)
        except BrokerError as exc:
            return exc.one_line()

    def _context(self, ca_file: object) -> ssl.SSLContext:
        key = str(ca_file)
        if key not in self._contexts:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if ca_file is not None:
                context.load_verify_locations(cafile=key)
            self._contexts[key] = context
        return self._contexts[key]

    def _webhook(self, notice: Notice, now: datetime) -> str | None:
        cfg = self._cfg
        assert cfg.webhook_url is not None and cfg.webhook_secret_file is not None
        secret = load_secret(
            cfg.webhook_secret_file, service_user=self._svc, what="notify webhook secret"
        )
        body = webhook_body(notice, cfg.webhook_format)
        msg_id = f"msg_{notice.request_id}_{notice.id}"
        stamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature(standard_key(secret), msg_id, stamp, body),
            "User-Agent": "broker",
        }
        tls = None
        if urlsplit(cfg.webhook_url).scheme.lower() == "https":
            try:
                tls = self._context(cfg.webhook_ca_file)
            except (OSError, ValueError) as exc:
                return f"cannot use notify.webhook_ca_file: {describe(exc)}"
        timeout = cfg.webhook_timeout.total_seconds()
        return post(cfg.webhook_url, body, headers, timeout=timeout, tls=tls)

    @property
    def _svc(self) -> str:
        return self._settings.broker.service_user

    def _mail(self, notice: Notice, now: datetime) -> str | None:
        cfg = self._cfg
        assert cfg.smtp_host is not None and cfg.smtp_from is not None
        password = None
        if cfg.smtp_password_file is not None:
            password = load_secret(
                cfg.smtp_password_file, service_user=self._svc, what="SMTP password"
            ).decode()
        message = EmailMessage()
        message["From"] = cfg.smtp_from
        message["To"] = notice.recipient
        message["Subject"] = notice.subject
        message["Date"] = formatdate(now.timestamp(), usegmt=True)
        message["Message-ID"] = make_msgid(f"notice{notice.id}", cfg.smtp_from.split("@")[1])
        message.set_content(notice.text)
        try:
            tls = self._context(cfg.smtp_ca_file)
            with smtplib.SMTP(
                cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout.total_seconds()
            ) as smtp:
                smtp.starttls(context=tls)  # raises when the server does not offer it
                if cfg.smtp_username is not None and password is not None:
                    smtp.login(cfg.smtp_username, password)
                smtp.send_message(message, cfg.smtp_from, [notice.recipient])
        except smtplib.SMTPNotSupportedError:
            return f"{cfg.smtp_host} does not offer STARTTLS (mail is never sent in clear)"
        except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
            return f"smtp {cfg.smtp_host}:{cfg.smtp_port}: {describe(exc)}"
        return None

    def _record(self, notice: Notice, error: str | None, permanent: bool, now: datetime) -> str:
        """Store the outcome of one try; returns the notice's new state."""
        tries = notice.attempts + 1
        with self._store.transaction() as conn:
            if error is None:
                state, changed = "sent", outbox.sent(conn, notice, now)
            elif permanent or tries >= self._cfg.attempts:
                state, changed = "failed", outbox.failed(conn, notice, error)
                if changed:
                    writer.record(conn, _failed_event(notice, tries, error), now)
            else:
                delay = min(self._cfg.backoff * (2 ** min(notice.attempts, 30)), MAX_BACKOFF)
                state, changed = "pending", outbox.retry(conn, notice, error, now + delay)
        if not changed:
            return "raced"
        if error is not None:
            level = logging.ERROR if state == "failed" else logging.WARNING
            log.log(
                level, "request %s: %s notice %d (try %d) not sent%s: %s",
                notice.request_id, notice.channel, notice.id, tries,
                ", given up" if state == "failed" else ", will retry", error,
            )  # fmt: skip
        return state


def _failed_event(notice: Notice, tries: int, error: str) -> writer.EventInput:
    """The audit event of a notice given up for good."""
    return writer.EventInput(
        "broker",
        "notify.delivery.failed",
        notice.request_id,
        "failed",
        {
            "notice": notice.id,
            "kind": notice.kind,
            "channel": notice.channel,
            "attempts": tries,
            "error": error,
        },
    )
