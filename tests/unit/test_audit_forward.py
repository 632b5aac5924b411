"""Live audit forwarding against a real rsyslogd started by the test: its own config under
tmp_path (imuxsock on a socket there, imtcp on 127.0.0.1 and a free port, omfile to a file
there), no /dev/log, nothing of the host's syslog touched. The events arrive as RFC 5424
with structured data that re-hashes to the chain; a receiver that is down loses nothing
and gets nothing twice; the cursor outlives the daemon."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from broker.audit import forward, rfc5424, writer
from broker.audit.chain import AuditEvent, event_hash
from broker.audit.forward import Forwarder
from broker.config.settings import AuditSection, Settings
from broker.core.storeurl import parse_store_url
from broker.store.db import Store
from broker.store.migrations import MIGRATIONS, apply
from tests.helpers import run_broker, serving, write_config

RSYSLOGD = shutil.which("rsyslogd") or (
    "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
)
needs_rsyslog = pytest.mark.skipif(
    RSYSLOGD is None, reason="rsyslogd is not installed (deploy/install-deps.sh installs it)"
)
# One line per message: what a SIEM parses (header fields, structured data, details).
TEMPLATE = "%app-name%|%msgid%|%syslogseverity-text%|%structured-data%|%msg%\\n"
_PARAM = re.compile(r'([a-z]+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Rsyslog:
    """rsyslogd in the foreground with its own config, stoppable and restartable."""

    def __init__(self, directory: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.dir = directory
        self.port = free_port()
        self.sock = directory / "log.sock"
        self.out = directory / "received.log"
        self.conf = directory / "rsyslog.conf"
        tcp = 'module(load="imtcp")\n'
        if tls is not None:  # imtcp over TLS (rsyslog-openssl), the server's key and chain
            ca, cert, key = tls
            tcp = (
                f'global(DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile='
                f'"{cert}" DefaultNetstreamDriverKeyFile="{key}")\n'
                'module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"'
                ' StreamDriver.AuthMode="anon")\n'
            )
        self.conf.write_text(
            f'global(workDirectory="{directory}")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            f"{tcp}"
            f'input(type="imuxsock" Socket="{self.sock}" UseSpecialParser="off"'
            ' ParseHostname="on" RateLimit.Interval="0")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            f'template(name="siem" type="string" string="{TEMPLATE}")\n'
            f'action(type="omfile" file="{self.out}" template="siem")\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert RSYSLOGD is not None
        with (self.dir / "rsyslogd.err").open("ab") as err:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "rsyslogd.err").read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                if self.sock.exists():
                    return
            time.sleep(0.05)
        raise AssertionError("rsyslogd did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def seqs(self) -> list[int]:
        return [int(dict(_PARAM.findall(line.split("|")[3]))["seq"]) for line in self.lines()]

    def wait_for(self, count: int, timeout: float = 20) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.lines()) < count:
            time.sleep(0.05)
        return self.seqs()


@pytest.fixture
def rsyslog() -> Iterator[Rsyslog]:
    # A short directory of its own: a Unix socket path must stay under 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    receiver = Rsyslog(directory)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
        shutil.rmtree(directory, ignore_errors=True)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test SIEM CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def tls_rsyslog() -> Iterator[tuple[Rsyslog, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    pki = make_pki(directory)
    receiver = Rsyslog(directory, tls=pki)
    receiver.start()
    try:
        yield receiver, pki[0]
    finally:
        receiver.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path, engine_url: str | None) -> Iterator[Store]:
    """The migrated store on each engine (SQLite, and a fresh PostgreSQL database)."""
    url = parse_store_url(engine_url) if engine_url else None
    opened = Store.open(tmp_path / "state" / "broker.db", owner=None, url=url)
    with opened.transaction() as conn:
        for migration in MIGRATIONS:
            apply(conn, migration, "2026-01-01T00:00:00.000000Z")
    yield opened
    opened.close()


def add_events(store: Store, count: int, target: str = "node01") -> None:
    with store.transaction() as conn:
        for n in range(count):
            writer.record(
                conn, writer.EventInput("user:alice", "grant.issue", target, "ok", {"n": n})
            )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def audit(forward_to: str, **extra: object) -> AuditSection:
    return Settings.model_validate({"audit": {"forward": forward_to, **extra}}).audit


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    return {s.name: s.value for family in families for s in family.samples if not s.labels}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


# --- the message ------------------------------------------------------------------------------


def _event(details: str = '{"a":1}', target: str = "node01") -> AuditEvent:
    return AuditEvent(7, "2026-11-22T13:45:01.000123Z", "unix:root", "grant.issue", target,
                      "refused", details, "0" * 64, "ab" * 32)  # fmt: skip


def test_sd_values_are_escaped_and_control_characters_never_pass() -> None:
    frame = rfc5424.message(
        _event(target='a"b]c\\d\ne'), facility="authpriv", app_name="broker-audit",
        hostname="h", procid=1, max_bytes=8192,
    )  # fmt: skip
    text = frame.decode()
    assert text.startswith("<84>1 2026-11-22T13:45:01.000123Z h broker-audit 1 grant.issue [")
    assert 'target="a\\"b\\]c\\\\d?e"' in text
    assert "\n" not in text


def test_a_message_over_the_limit_is_cut_and_says_so() -> None:
    details = json.dumps({"x": "y" * 5000})
    frame = rfc5424.message(_event(details), facility="auth", app_name="a", hostname="h",
                            procid=1, max_bytes=2048)  # fmt: skip
    assert len(frame) == 2048
    assert b'truncated="true"' in frame and frame.endswith(b"...")
    assert b'hash="' + b"ab" * 32 + b'"' in frame


# --- against rsyslogd -------------------------------------------------------------------------


@needs_rsyslog
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_events_arrive_with_structured_data_that_rehashes(
    rsyslog: Rsyslog, store: Store, transport: str
) -> None:
    add_events(store, 3)
    target = f"unix:{rsyslog.sock}" if transport == "unix" else f"tcp://127.0.0.1:{rsyslog.port}"
    report = Forwarder(store, audit(target)).run_once()
    head = 3
    assert report.error is None and report.sent == head and report.backlog == 0
    assert rsyslog.wait_for(head) == [1, 2, 3]
    for line in rsyslog.lines():
        app, msgid, severity, sd, msg = line.split("|", 4)
        assert (app, msgid, severity) == ("broker-audit", "grant.issue", "info")
        assert sd.startswith("[audit@32473 ")
        p = {k: unescape(v) for k, v in _PARAM.findall(sd)}
        digest = event_hash(int(p["seq"]), p["ts"], p["actor"], p["action"], p["target"],
                            p["outcome"], msg, p["prev"])  # fmt: skip
        assert digest == p["hash"]
        assert json.loads(msg)["n"] == int(p["seq"]) - 1


@needs_rsyslog
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_receiver_that_was_down_gets_every_event_once_in_order(
    rsyslog: Rsyslog, store: Store, transport: str
) -> None:
    target = f"unix:{rsyslog.sock}" if transport == "unix" else f"tcp://127.0.0.1:{rsyslog.port}"
    clock = Clock()
    forwarder = Forwarder(store, audit(target, forward_batch=4), clock=clock)
    add_events(store, 2)
    assert forwarder.run_once().sent == 2
    assert rsyslog.wait_for(2) == [1, 2]
    rsyslog.stop()
    add_events(store, 9)
    down = forwarder.run_once()
    assert down.error is not None and down.sent == 0 and down.backlog == 9
    assert forward.backlog(store.conn, audit(target)) == 9
    assert forwarder.run_once().waiting  # backing off: not tried again at once
    rsyslog.start()
    clock.now += 1.0  # forward_backoff (1s) has passed
    sent = [forwarder.run_once().sent for _ in range(4)]
    assert sent == [4, 4, 1, 0]  # batches of at most forward_batch, then nothing left
    assert rsyslog.wait_for(11) == list(range(1, 12))
    time.sleep(0.5)
    assert rsyslog.seqs() == list(range(1, 12))  # and nothing twice


needs_tls_rsyslog = pytest.mark.skipif(
    RSYSLOGD is None or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so")),
    reason="rsyslogd or its TLS driver is not installed (deploy/install-deps.sh installs"
    " rsyslog and rsyslog-openssl)",
)


@needs_tls_rsyslog
def test_tls_checks_the_receivers_certificate_and_delivers(
    tls_rsyslog: tuple[Rsyslog, Path], store: Store, tmp_path: Path
) -> None:
    receiver, ca = tls_rsyslog
    add_events(store, 3)
    target = f"tls://127.0.0.1:{receiver.port}"
    other = make_pki(tmp_path)[0]  # a CA that did not sign the receiver's certificate
    refused = Forwarder(store, audit(target, forward_ca_file=str(other))).run_once()
    assert refused.error is not None and "certificate" in refused.error and refused.sent == 0
    report = Forwarder(store, audit(target, forward_ca_file=str(ca))).run_once()
    assert report.error is None and report.sent == 3 and report.backlog == 0
    assert receiver.wait_for(3) == [1, 2, 3]
    time.sleep(0.3)
    assert receiver.seqs() == [1, 2, 3]


def test_a_stopped_receiver_is_an_error_and_the_cursor_stays(store: Store, tmp_path: Path) -> None:
    add_events(store, 2)
    report = Forwarder(store, audit(f"tcp://127.0.0.1:{free_port()}")).run_once()
    assert report.error == "connection refused" and report.sent == 0 and report.backlog == 2
    report = Forwarder(store, audit(f"unix:{tmp_path}/none.sock")).run_once()
    assert report.error is not None and "no socket there" in report.error


def test_forwarding_off_has_no_backlog(store: Store) -> None:
    assert forward.backlog(store.conn, Settings().audit) is None


@needs_rsyslog
def test_the_daemon_forwards_and_its_cursor_survives_a_restart(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        f'forward = "tcp://127.0.0.1:{rsyslog.port}"\nforward_backoff = "1s"\n',
    )
    metrics = free_port()
    text = config.read_text().replace(
        "[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
    )
    config.write_text(text)
    assert run_broker("init", config=config).returncode == 0
    db = tmp_path / "state" / "broker.db"

    def head() -> int:
        opened = Store.open(db, owner=None)
        try:
            return int(opened.conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0])
        finally:
            opened.close()

    with serving(config):
        first = head()
        assert rsyslog.wait_for(first) == list(range(1, first + 1))
        rsyslog.stop()
        time.sleep(1.0)  # the daemon tries, fails and backs off
        extra = Store.open(db, owner=None)
        add_events(extra, 5)  # written by another process while the receiver is down
        extra.close()
        assert scrape(metrics)["broker_audit_forward_backlog"] == 5.0
        rsyslog.start()
        assert rsyslog.wait_for(first + 5, timeout=30) == list(range(1, first + 6))
    time.sleep(0.5)
    with serving(config):
        extra = Store.open(db, owner=None)
        add_events(extra, 1)
        extra.close()
        total = head()
        assert rsyslog.wait_for(total, timeout=30) == list(range(1, total + 1))
        time.sleep(1.5)
        assert scrape(metrics)["broker_audit_forward_backlog"] == 0.0
    assert rsyslog.seqs() == list(range(1, total + 1))  # the restart resent nothing


def test_a_stream_socket_at_the_unix_path_gets_octet_counted_frames(
    store: Store, tmp_path: Path
) -> None:
    """syslog-ng's unix-stream(): the datagram send is refused by the socket type, the
    same batch goes out framed on a stream, and only the receiver's close ends it."""
    path = Path(tempfile.mkdtemp(prefix="us-", dir="/tmp")) / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.append(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    add_events(store, 2)
    report = Forwarder(store, audit(f"unix:{path}")).run_once()
    thread.join(5)
    listener.close()
    shutil.rmtree(path.parent)
    assert report.error is None and report.sent == 2
    data, frames = b"".join(received), []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    assert [f.split(b" ")[5] for f in frames] == [b"grant.issue", b"grant.issue"]
    assert b'seq="2"' in frames[1]


def test_the_examples_forward_keys_are_valid_and_a_ca_file_needs_tls() -> None:
    keys = {"forward": "tls://siem.example.org:6514", "forward_ca_file": "/etc/broker/ca.pem",
            "forward_batch": 500, "forward_timeout": "5s", "forward_backoff": "1s"}  # fmt: skip
    assert str(Settings.model_validate({"audit": keys}).audit.forward_target) == keys["forward"]
    with pytest.raises(ValueError, match="only used with forward"):
        Settings.model_validate({"audit": {**keys, "forward": "tcp://siem:514"}})
    for bad in ("udp://siem:514", "tcp://siem", "tcp://si em:1", "unix:rel", "unix:/a/../b"):
        with pytest.raises(ValueError, match=r"audit\.forward must be"):
            Settings.model_validate({"audit": {"forward": bad}})
