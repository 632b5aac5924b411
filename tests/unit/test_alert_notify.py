"""Alert delivery against real receivers: an HTTP(S) server and a syslog datagram socket
on this host, a real store; `now` is driven forward to walk through the retries."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.config.loader import settings_from_dict
from broker.config.settings import Settings
from broker.core.errors import ConfigError, RefusedError
from broker.detect import notify
from broker.store.db import Store
from broker.store.migrations import MIGRATIONS, apply

T0 = datetime(2026, 11, 22, 13, 0, 0, tzinfo=UTC)
SECRET = b"0f1e2d3c4b5a69788796a5b4c3d2e1f0-alert-hmac"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state" / "broker.db", owner=None)
    with opened.transaction() as conn:
        for migration in MIGRATIONS:
            apply(conn, migration, "2026-01-01T00:00:00.000000Z")
    yield opened
    opened.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.key"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def settings_with(tmp_path: Path, **alerts: Any) -> Settings:
    return settings_from_dict(
        {
            "broker": {"state_dir": str(tmp_path / "state"), "service_user": "root"},
            "alerts": alerts,
        },
        source="broker.toml",
    )


def add_alert(store: Store, settings: Settings, now: datetime = T0, **fields: Any) -> int:
    """Insert an alert and queue its deliveries in one transaction, as the detector does."""
    row = {
        "created_at": "2026-11-22T13:00:00.000000Z",
        "event_at": "2026-11-22T12:59:58.000000Z",
        "rule": "mfa_failures",
        "severity": "high",
        "user": "alice",
        "node": "gpu01",
        "grant_id": "g-42",
        "recording_id": "000001",
        "message": "5 failed MFA codes in 10m",
        "details": json.dumps({"failures": 5, "window": "10m"}),
        "actions": json.dumps(["alert", "lock_mfa"]),
        "source": "detector",
        **fields,
    }
    with store.transaction() as conn:
        cursor = conn.execute(
            f"INSERT INTO alerts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        alert_id = int(cursor.lastrowid or 0)
        notify.enqueue(conn, alert_id, now, settings)
    return alert_id


def delivery(store: Store, alert_id: int, channel: str) -> dict[str, Any]:
    row = store.conn.execute(
        "SELECT state, attempts, next_at, last_error, sent_at FROM alert_deliveries"
        " WHERE alert_id = ? AND channel = ?",
        (alert_id, channel),
    ).fetchone()
    assert row is not None
    return dict(zip(("state", "attempts", "next_at", "last_error", "sent_at"), row, strict=True))


def at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the test webhook answers (one status per request, the last one repeated), and
    what it got."""

    statuses: list[int]
    requests: list[Received] = field(default_factory=list)
    db_path: Path | None = None
    store_writable: list[bool] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def webhook(
    statuses: list[int], *, tls: ssl.SSLContext | None = None, db_path: Path | None = None
) -> Iterator[Receiver]:
    receiver = Receiver(statuses=list(statuses), db_path=db_path)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            if receiver.db_path is not None:
                receiver.store_writable.append(can_write(receiver.db_path))
            index = min(len(receiver.requests), len(receiver.statuses)) - 1
            status = receiver.statuses[index]
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere?token=leak")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hooks/broker"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def can_write(path: Path) -> bool:
    """Whether another connection could take the store's write lock right now."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


# --- webhook: retries, signature, timeouts ----------------------------------------------------


def test_a_refused_webhook_is_retried_with_doubling_backoff_and_the_body_is_signed(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    with webhook([500, 500, 204], db_path=store.path) as hook:
        settings = settings_with(
            tmp_path,
            syslog=False,
            webhook_url=hook.url,
            webhook_secret_file=str(secret_file),
            webhook_backoff="5s",
        )
        alert_id = add_alert(store, settings)
        deliverer = notify.Deliverer(store, settings)

        assert deliverer.run_once(T0) == notify.DeliveryReport(retried=1)
        first = delivery(store, alert_id, "webhook")
        assert first["state"] == "pending" and first["attempts"] == 1
        assert first["next_at"] == at(T0 + timedelta(seconds=5))
        assert first["last_error"] == "HTTP 500"

        assert deliverer.run_once(T0 + timedelta(seconds=4)) == notify.DeliveryReport()
        assert len(hook.requests) == 1
        assert deliverer.run_once(T0 + timedelta(seconds=5)).retried == 1
        assert delivery(store, alert_id, "webhook")["next_at"] == at(T0 + timedelta(seconds=15))
        assert deliverer.run_once(T0 + timedelta(seconds=14)) == notify.DeliveryReport()

        done_at = T0 + timedelta(seconds=15)
        assert deliverer.run_once(done_at) == notify.DeliveryReport(sent=1)
        assert deliverer.run_once(done_at + timedelta(hours=1)) == notify.DeliveryReport()

    assert len(hook.requests) == 3
    final = delivery(store, alert_id, "webhook")
    assert final["state"] == "sent" and final["attempts"] == 3
    assert final["sent_at"] == at(done_at) and final["last_error"] is None
    # The store was never locked while the broker waited for the receiver.
    assert hook.store_writable == [True, True, True]

    got = hook.requests[-1]
    assert got.path == "/hooks/broker"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Broker-Alert-Id"] == str(alert_id)
    assert got.headers["User-Agent"] == "broker"
    signature = got.headers["X-Broker-Signature"]
    now = int(done_at.timestamp())
    assert signature.startswith(f"t={now},v1=")
    assert notify.verify_signature(SECRET, signature, got.body, now)
    assert not notify.verify_signature(b"another secret", signature, got.body, now)
    assert not notify.verify_signature(SECRET, signature, got.body.replace(b"gpu01", b"gpu02"), now)
    assert not notify.verify_signature(SECRET, signature, got.body, now + 301)

    body = json.loads(got.body)
    assert body["id"] == alert_id and body["severity"] == "high" and body["user"] == "alice"
    assert body["details"] == {"failures": 5, "window": "10m"}
    assert body["actions"] == ["alert", "lock_mfa"]
    assert set(body) == set(notify.COLUMNS)
    assert got.body == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def test_a_webhook_that_never_answers_costs_one_timeout(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts the connection; nobody ever reads or answers
        settings = settings_with(
            tmp_path,
            syslog=False,
            webhook_url=f"http://127.0.0.1:{silent.getsockname()[1]}/",
            webhook_secret_file=str(secret_file),
            webhook_timeout="1s",
        )
        alert_id = add_alert(store, settings)
        queued = [add_alert(store, settings) for _ in range(3)]
        started = time.monotonic()
        report = notify.Deliverer(store, settings).run_once(T0)
        took = time.monotonic() - started
    # One timeout for the pass, not one per queued alert: the others wait for the next.
    assert report == notify.DeliveryReport(retried=1, deferred=3)
    assert 0.9 < took < 1.8
    assert delivery(store, alert_id, "webhook")["last_error"] == "no answer within 1s"
    assert [delivery(store, q, "webhook")["attempts"] for q in queued] == [0, 0, 0]


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeout(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    stop = threading.Event()

    def trickle(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"X")  # one header byte at a time, forever
                except OSError:
                    return

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        thread = threading.Thread(target=trickle, args=(listener,), daemon=True)
        thread.start()
        settings = settings_with(
            tmp_path,
            syslog=False,
            webhook_url=f"http://127.0.0.1:{listener.getsockname()[1]}/",
            webhook_secret_file=str(secret_file),
            webhook_timeout="1s",
        )
        alert_id = add_alert(store, settings)
        started = time.monotonic()
        report = notify.Deliverer(store, settings).run_once(T0)
        took = time.monotonic() - started
        stop.set()
        thread.join(5)
    assert report.retried == 1 and took < 1.8
    assert delivery(store, alert_id, "webhook")["last_error"] == "no answer within 1s"


def test_after_the_last_attempt_the_delivery_fails_and_is_audited(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    with webhook([503]) as hook:
        settings = settings_with(
            tmp_path,
            syslog=False,
            webhook_url=hook.url,
            webhook_secret_file=str(secret_file),
            webhook_attempts=3,
            webhook_backoff="1m",
        )
        alert_id = add_alert(store, settings)
        deliverer = notify.Deliverer(store, settings)
        reports = [deliverer.run_once(T0 + timedelta(hours=n)) for n in range(5)]
    assert [r.retried for r in reports] == [1, 1, 0, 0, 0]
    assert [r.failed for r in reports] == [0, 0, 1, 0, 0]
    assert len(hook.requests) == 3
    final = delivery(store, alert_id, "webhook")
    assert (final["state"], final["attempts"], final["last_error"]) == ("failed", 3, "HTTP 503")

    events = store.conn.execute(
        "SELECT actor, target, outcome, details FROM audit_events"
        " WHERE action = 'alert.delivery.failed'"
    ).fetchall()
    assert len(events) == 1
    actor, target, outcome, details = events[0]
    assert (actor, target, outcome) == ("broker", f"alert:{alert_id}", "failed")
    assert json.loads(details) == {
        "alert_id": alert_id,
        "channel": "webhook",
        "attempts": 3,
        "error": "HTTP 503",
    }
    assert SECRET.decode() not in details and "127.0.0.1" not in details


def test_backoff_doubles_up_to_fifteen_minutes(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, webhook_backoff="5s")
    waits = [notify.backoff(settings, n).total_seconds() for n in (0, 1, 2, 7, 8, 999)]
    assert waits == [5, 10, 20, 640, 900, 900]


def test_a_redirect_is_not_followed(tmp_path: Path, store: Store, secret_file: Path) -> None:
    with webhook([302]) as hook:
        settings = settings_with(
            tmp_path, syslog=False, webhook_url=hook.url, webhook_secret_file=str(secret_file)
        )
        alert_id = add_alert(store, settings)
        assert notify.Deliverer(store, settings).run_once(T0).retried == 1
    assert len(hook.requests) == 1
    error = delivery(store, alert_id, "webhook")["last_error"]
    assert error.startswith("HTTP 302 (redirects are not followed") and "leak" not in error


# --- https --------------------------------------------------------------------------------------


def make_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 with a certificate from a fresh CA; the CA's file."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test alert CA")])
    start = datetime.now(UTC) - timedelta(minutes=5)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return context, ca_file


def test_https_checks_the_certificate_against_the_configured_ca(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    server_tls, ca_file = make_tls(tmp_path)
    with webhook([200], tls=server_tls) as hook:
        common = {"syslog": False, "webhook_url": hook.url, "webhook_secret_file": str(secret_file)}
        untrusting = settings_with(tmp_path, **common)
        alert_id = add_alert(store, untrusting)
        assert notify.Deliverer(store, untrusting).run_once(T0).retried == 1
        error = delivery(store, alert_id, "webhook")["last_error"]
        assert error.startswith("TLS certificate not accepted")
        assert hook.requests == []

        trusting = settings_with(tmp_path, **common, webhook_ca_file=str(ca_file))
        assert notify.Deliverer(store, trusting).run_once(T0 + timedelta(minutes=1)).sent == 1
    assert len(hook.requests) == 1
    got = hook.requests[0]
    assert notify.verify_signature(
        SECRET, got.headers["X-Broker-Signature"], got.body, int(T0.timestamp()) + 60
    )


# --- syslog -------------------------------------------------------------------------------------


def test_syslog_gets_one_clean_line_with_the_mapped_priority(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        settings = settings_with(tmp_path, syslog_socket=str(path), syslog_facility="local3")
        alert_id = add_alert(
            store,
            settings,
            severity="critical",
            user="mal lory\nfake",
            node="gpu01",
            grant_id=None,
            recording_id=None,
            message="typed\n\x1b[31mrm -rf / ;\r\nalert 99 info forged: é",
        )
        assert notify.Deliverer(store, settings).run_once(T0) == notify.DeliveryReport(sent=1)
        line = listener.recv(8192).decode("ascii")
    prefix, _, text = line.partition("]: ")
    assert prefix.startswith(f"<{19 * 8 + 2}>broker-alert[")  # local3.crit
    assert text == (
        f"alert {alert_id} critical mfa_failures user=mal?lory?fake node=gpu01 grant=- "
        "session=-: typed??[31mrm -rf / ;??alert 99 info forged: ?"
    )
    assert delivery(store, alert_id, "syslog")["state"] == "sent"


@pytest.mark.parametrize(
    ("severity", "pri"), [("high", 10 * 8 + 3), ("medium", 84), ("low", 85), ("info", 86)]
)
def test_each_severity_has_its_syslog_priority(
    tmp_path: Path, store: Store, severity: str, pri: int
) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        settings = settings_with(tmp_path, syslog_socket=str(path))  # authpriv by default
        add_alert(store, settings, severity=severity)
        notify.Deliverer(store, settings).run_once(T0)
        assert listener.recv(8192).decode().startswith(f"<{pri}>broker-alert[")


def test_a_missing_syslog_socket_is_retried(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "absent.sock"
    settings = settings_with(tmp_path, syslog_socket=str(path))
    alert_id = add_alert(store, settings)
    deliverer = notify.Deliverer(store, settings)
    assert deliverer.run_once(T0).retried == 1
    assert delivery(store, alert_id, "syslog")["last_error"].startswith(f"syslog at {path}: ")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        assert deliverer.run_once(T0 + timedelta(seconds=5)).sent == 1


def test_enqueue_queues_each_configured_channel(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    both = settings_with(
        tmp_path, webhook_url="https://soc.example.org/hook", webhook_secret_file=str(secret_file)
    )
    first = add_alert(store, both)
    second = add_alert(store, settings_with(tmp_path, syslog=False))
    rows = store.conn.execute(
        "SELECT alert_id, channel, state, attempts, next_at FROM alert_deliveries ORDER BY 1, 2"
    ).fetchall()
    assert rows == [
        (first, "syslog", "pending", 0, at(T0)),
        (first, "webhook", "pending", 0, at(T0)),
    ]
    assert second not in {r[0] for r in rows}


# --- secret file and settings -------------------------------------------------------------------


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path, secret_file: Path) -> None:
    assert notify.load_secret(secret_file, service_user="root") == SECRET
    secret_file.chmod(0o644)
    with pytest.raises(RefusedError) as info:
        notify.load_secret(secret_file, service_user="root")
    assert "0644" in info.value.one_line() and SECRET.decode() not in info.value.one_line()
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n")
    empty.chmod(0o600)
    with pytest.raises(RefusedError, match="is empty"):
        notify.load_secret(empty, service_user="root")


def test_a_loose_secret_file_stops_the_webhook_and_is_named(
    tmp_path: Path, store: Store, secret_file: Path
) -> None:
    secret_file.chmod(0o640)
    with webhook([200]) as hook:
        settings = settings_with(
            tmp_path, syslog=False, webhook_url=hook.url, webhook_secret_file=str(secret_file)
        )
        alert_id = add_alert(store, settings)
        assert notify.Deliverer(store, settings).run_once(T0).retried == 1
    assert hook.requests == []
    error = delivery(store, alert_id, "webhook")["last_error"]
    assert error.startswith("webhook secret unusable: ") and "0640" in error
    assert SECRET.decode() not in error


def config_error(tmp_path: Path, **alerts: Any) -> str:
    with pytest.raises(ConfigError) as info:
        settings_with(tmp_path, **alerts)
    message = info.value.one_line()
    assert "\n" not in info.value.message
    return message


def test_webhook_settings_errors_are_clear_one_liners(tmp_path: Path) -> None:
    assert config_error(tmp_path, webhook_url="ftp://soc.example.org/hook") == (
        "broker.toml: alerts: webhook_url must be an http://HOST[:PORT]/PATH"
        " or https://HOST[:PORT]/PATH URL"
    )
    assert config_error(tmp_path, webhook_url="https://soc.example.org/hook") == (
        "broker.toml: alerts: alerts.webhook_url needs alerts.webhook_secret_file"
        " (the HMAC key that signs every alert, mode 0600)"
    )
    for url in ("https://bot:hunter2@soc.example.org/", "https://soc.example.org/h?token=hunter2"):
        message = config_error(tmp_path, webhook_url=url, webhook_secret_file="/etc/k")
        assert "hunter2" not in message and "webhook_secret_file" in message
    assert "between 1s and 5m" in config_error(tmp_path, webhook_timeout="10m")
    assert "webhook_attempts" in config_error(tmp_path, webhook_attempts=0)
    assert "local7" in config_error(tmp_path, syslog_facility="mail")


def test_alerts_defaults(tmp_path: Path) -> None:
    alerts = settings_with(tmp_path).alerts
    assert alerts.syslog and alerts.syslog_socket == Path("/dev/log")
    assert alerts.syslog_facility == "authpriv" and alerts.webhook_url is None
    assert alerts.webhook_timeout == timedelta(seconds=5) and alerts.webhook_attempts == 12
    assert alerts.webhook_backoff == timedelta(seconds=5)


# --- signatures ---------------------------------------------------------------------------------


def test_signature_format_and_verification() -> None:
    body = b'{"id":1}'
    header = notify.sign(SECRET, 1_700_000_000, body)
    # The documented construction, recomputed independently.
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert notify.verify_signature(SECRET, header, body, 1_700_000_299)
    assert not notify.verify_signature(SECRET, header, body, 1_700_000_301)
    assert notify.verify_signature(SECRET, f"{header},v1=00", body, 1_700_000_000)
    for bad in (
        "",
        "t=1700000000",
        f"v1={expected}",
        "t=x,v1=00",
        f"t=1,t=1700000000,v1={expected}",
    ):
        assert not notify.verify_signature(SECRET, bad, body, 1_700_000_000)
