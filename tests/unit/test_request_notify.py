"""Approvers and requesters hear about requests: real receivers on this host (an aiosmtpd
SMTP server that insists on STARTTLS and a login, an http.server webhook), the real grant
flows over a real store, and the notifier's delivery pass driven with `now`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from broker.app import App
from broker.config.loader import settings_from_dict
from broker.config.settings import Settings
from broker.core.errors import ConfigError
from broker.notify import outbox
from broker.notify.deliver import NoticeDeliverer
from broker.notify.notices import RequestNotices
from tests.unit.policy_samples import NOW
from tests.unit.test_alert_notify import make_tls, webhook
from tests.unit.test_grants_service import ALICE, FRANK, GRACE, World

SECRET = b"whsec_" + base64.b64encode(b"request-notice-signing-key-32-bytes!")
PASSWORD = "s3cret-smtp-pass"


@dataclass
class Mailbox:
    """What the SMTP server received, and whether each message came over TLS."""

    messages: list[tuple[list[str], bytes, bool]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((list(envelope.rcpt_tos), envelope.content, session.ssl is not None))
        return "250 OK"

    def auth(self, server: Any, session: Session, envelope: Envelope, mechanism: str,
             auth_data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == PASSWORD.encode()
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def smtp_server(tls: ssl.SSLContext) -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
        authenticator=box.auth, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def private(path: Path, data: bytes) -> Path:
    path.write_bytes(data + b"\n")
    path.chmod(0o600)
    return path


def notify_settings(tmp_path: Path, **notify: Any) -> Settings:
    return settings_from_dict(
        {
            "broker": {"state_dir": str(tmp_path / "state"), "service_user": "root"},
            "notify": notify,
        },
        source="broker.toml",
    )


def world_with(broker_app: App, tmp_path: Path, settings: Settings) -> World:
    return World(broker_app, tmp_path, RequestNotices(settings.notify))


def verify(headers: dict[str, str], body: bytes) -> None:
    """The receiver's side of Standard Webhooks: recompute and compare the v1 signature."""
    key = base64.b64decode(SECRET.removeprefix(b"whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in headers["webhook-signature"].split(" "))
    assert hmac.compare_digest(versions["v1"], expected)
    assert int(headers["webhook-timestamp"]) == int(NOW.timestamp())


def test_a_new_request_mails_each_approver_the_approve_command_over_starttls(
    broker_app: App, tmp_path: Path
) -> None:
    server_tls, ca_file = make_tls(tmp_path)
    with smtp_server(server_tls) as (box, port):
        settings = notify_settings(
            tmp_path, smtp_host="127.0.0.1", smtp_port=port, smtp_from="broker@hpc.test",
            smtp_ca_file=str(ca_file), smtp_username="broker",
            smtp_password_file=str(private(tmp_path / "smtp.pw", PASSWORD.encode())),
            email_from="domain", email_domain="hpc.test", email_addresses={"grace": "g@ops.test"},
        )  # fmt: skip
        world = world_with(broker_app, tmp_path, settings)
        request_id = world.request()
        report = NoticeDeliverer(world.store, settings).run_once(NOW)
    assert report.sent == 2 and report.retried == 0
    by_rcpt = {tuple(rcpt): (message_from_bytes(raw), tls) for rcpt, raw, tls in box.messages}
    assert set(by_rcpt) == {("frank@hpc.test",), ("g@ops.test",)}  # approvers, not alice
    mail, over_tls = by_rcpt[("frank@hpc.test",)]
    assert over_tls and box.logins == ["broker", "broker"]
    assert mail["From"] == "broker@hpc.test" and request_id in mail["Subject"]
    text = mail.get_payload(decode=True).decode()
    assert f"broker approve {request_id}" in text and "INC-1" in text
    assert PASSWORD not in text


def test_a_server_without_starttls_gets_no_mail_and_the_notice_waits(
    broker_app: App, tmp_path: Path
) -> None:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)  # no STARTTLS offered
    controller.start()
    try:
        settings = notify_settings(
            tmp_path, smtp_host="127.0.0.1", smtp_port=port, smtp_from="broker@hpc.test"
        )
        world = world_with(broker_app, tmp_path, settings)
        request_id = world.request()
        report = NoticeDeliverer(world.store, settings).run_once(NOW)
    finally:
        controller.stop()
    assert box.messages == []
    assert report.sent == 0 and report.retried == 1 and report.deferred == 1
    assert {s for *_, s in outbox.states(world.store.conn, request_id)} == {"pending"}


def test_the_webhook_gets_a_standard_webhooks_signed_event(broker_app: App, tmp_path: Path) -> None:
    secret = private(tmp_path / "hook.key", SECRET)
    with webhook([204]) as receiver:
        settings = notify_settings(tmp_path, webhook_url=receiver.url,
                                   webhook_secret_file=str(secret))  # fmt: skip
        world = world_with(broker_app, tmp_path, settings)
        request_id = world.request()
        assert NoticeDeliverer(world.store, settings).run_once(NOW).sent == 1
    (got,) = receiver.requests
    headers = {k.lower(): v for k, v in got.headers.items()}
    verify(headers, got.body)
    event = json.loads(got.body)
    assert event["type"] == "request.requested"
    assert event["data"]["approve_command"] == f"broker approve {request_id}"
    assert event["data"]["notify"] == ["frank", "grace"]
    tampered = got.body.replace(b"alice", b"mallo")
    with pytest.raises(AssertionError):
        verify(headers, tampered)


def test_the_slack_payload_is_a_signed_text_message(broker_app: App, tmp_path: Path) -> None:
    secret = private(tmp_path / "hook.key", SECRET)
    with webhook([200]) as receiver:
        settings = notify_settings(
            tmp_path, webhook_url=receiver.url, webhook_secret_file=str(secret),
            webhook_format="slack",
        )  # fmt: skip
        world = world_with(broker_app, tmp_path, settings)
        request_id = world.request()
        NoticeDeliverer(world.store, settings).run_once(NOW)
    (got,) = receiver.requests
    verify({k.lower(): v for k, v in got.headers.items()}, got.body)
    body = json.loads(got.body)
    assert list(body) == ["text"] and f"broker approve {request_id}" in body["text"]


def test_a_receiver_that_was_down_gets_the_notice_when_it_is_back(
    broker_app: App, tmp_path: Path
) -> None:
    secret = private(tmp_path / "hook.key", SECRET)
    with webhook([204]) as receiver:
        url = receiver.url
    # The receiver is gone; the request is stored and answered all the same.
    settings = notify_settings(tmp_path, webhook_url=url, webhook_secret_file=str(secret))
    world = world_with(broker_app, tmp_path, settings)
    request_id = world.request()
    assert world.service.request(request_id).state == "pending"
    deliverer = NoticeDeliverer(world.store, settings)
    assert deliverer.run_once(NOW).retried == 1
    assert deliverer.run_once(NOW + timedelta(seconds=1)).retried == 0  # backoff: not due yet
    port = int(url.split(":")[2].split("/")[0])
    with webhook_on(port) as back:
        assert deliverer.run_once(NOW + timedelta(seconds=6)).sent == 1
    assert len(back.requests) == 1 and request_id.encode() in back.requests[0].body
    assert outbox.states(world.store.conn, request_id)[0][3] == "sent"


@contextlib.contextmanager
def webhook_on(port: int) -> Iterator[Any]:
    """The test webhook again, on the port the broker was configured with."""
    from http.server import ThreadingHTTPServer

    original = ThreadingHTTPServer.__init__

    def bind_port(self: Any, address: Any, handler: Any, *rest: Any) -> None:
        original(self, ("127.0.0.1", port), handler, *rest)

    ThreadingHTTPServer.__init__ = bind_port  # type: ignore[method-assign]
    try:
        with webhook([204]) as receiver:
            ThreadingHTTPServer.__init__ = original  # type: ignore[method-assign]
            yield receiver
    finally:
        ThreadingHTTPServer.__init__ = original  # type: ignore[method-assign]


def test_decisions_and_expiry_notify_the_requester(broker_app: App, tmp_path: Path) -> None:
    secret = private(tmp_path / "hook.key", SECRET)
    settings = notify_settings(
        tmp_path, webhook_url="http://127.0.0.1:9/hook", webhook_secret_file=str(secret),
        smtp_host="127.0.0.1", smtp_from="broker@hpc.test",
    )  # fmt: skip
    world = world_with(broker_app, tmp_path, settings)
    approved = world.request()
    world.service.approve(approved, FRANK, code="1", actor="unix:frank", now=NOW)
    denied = world.request()
    world.service.deny(denied, GRACE, reason="not now", code="1", actor="unix:grace", now=NOW)
    expired = world.request()
    world.service.reap(NOW + timedelta(hours=2))
    conn = world.store.conn
    for request_id, kind in ((approved, "approved"), (denied, "denied"), (expired, "expired")):
        later = [row for row in outbox.states(conn, request_id) if row[0] == kind]
        assert sorted(row[1:3] for row in later) == [
            ("email", "alice@HPC.TEST"),
            ("webhook", ""),
        ], kind
    text = conn.execute(
        "SELECT body FROM request_notices WHERE request_id = ? AND kind = 'denied'", (denied,)
    ).fetchone()[0]
    assert "grace denied your request: not now" in text
    assert ALICE.name in text


def test_notify_settings_refuse_incomplete_or_unsafe_values(tmp_path: Path) -> None:
    cases = [
        ({"webhook_url": "https://hooks.example/x"}, "webhook_secret_file"),
        ({"webhook_url": "https://hooks.example/x?token=abc"}, "query"),
        ({"smtp_host": "mail.example"}, "smtp_from"),
        ({"smtp_host": "mail.example", "smtp_from": "a@b.example", "smtp_username": "u"},
         "go together"),
        ({"email_addresses": {"frank": "frank@x.test\r\nBcc: evil@x.test"}}, "plain address"),
        ({"email_from": "domain"}, "email_domain"),
    ]  # fmt: skip
    for notify, expected in cases:
        with pytest.raises(ConfigError) as exc:
            notify_settings(tmp_path, **notify)
        assert expected in exc.value.one_line()
        assert "token=abc" not in exc.value.one_line()
