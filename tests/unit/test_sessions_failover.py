"""Recordings reach whichever broker is up: a node's tunnel (and a relay's way out) lists
every broker's log server, in order, with stunnel's `failover = prio`; one log server gives
the same text as before. The last test runs Debian's stunnel on the text bootstrap writes,
with the first log server down, and sees the bytes arrive at the second."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.config.loader import load_settings
from broker.config.settings import Settings
from broker.core.errors import UsageError
from broker.sessions import carrier, tls
from tests.helpers import write_config


def settings_for(tmp_path: Path, sessions: str = "") -> Settings:
    extra = (
        "[sessions]\n"
        f'conf_dir = "{tmp_path / "etc-sessions"}"\n'
        'tunnel_connect = "logs-a.cluster.example:30344"\n' + sessions
    )
    return load_settings(write_config(tmp_path, extra))


def service_lines(text: str, section: str) -> list[str]:
    """The lines of one [section], in order (an INI reader would fold repeated keys)."""
    lines = text.splitlines()
    start = lines.index(f"[{section}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    return lines[start:end]


def test_one_log_server_writes_the_single_connect_of_before(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    text = carrier.stunnel_node_conf(("127.0.0.1", 30343), carrier.node_connects(settings, None))
    lines = service_lines(text, "broker-logsrv")
    assert [line for line in lines if line.startswith("connect")] == [
        "connect = logs-a.cluster.example:30344"
    ]
    assert "failover" not in text and lines.count("checkHost = logs-a.cluster.example") == 1


def test_the_node_tunnel_lists_every_broker_in_order_with_priority_failover(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        tmp_path, 'failover_connect = ["logs-b.cluster.example:30344", "logs-c:4711"]\n'
    )
    assert carrier.node_connects(settings, None) == [
        ("logs-a.cluster.example", 30344),
        ("logs-b.cluster.example", 30344),
        ("logs-c", 4711),
    ]
    text = carrier.stunnel_node_conf(("127.0.0.1", 30343), carrier.node_connects(settings, None))
    lines = service_lines(text, "broker-logsrv")
    assert [line for line in lines if line.startswith(("connect", "failover", "check"))] == [
        "connect = logs-a.cluster.example:30344",
        "connect = logs-b.cluster.example:30344",
        "connect = logs-c:4711",
        "failover = prio",
        "checkHost = logs-a.cluster.example",
        "checkHost = logs-b.cluster.example",
        "checkHost = logs-c",
    ]


def test_a_relay_forwards_to_whichever_broker_is_up(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        'failover_connect = ["logs-b.cluster.example:30344"]\n'
        '[sessions.relays]\nsouth = "relay-s:30344"\n',
    )
    assert carrier.node_connects(settings, "south") == [("relay-s", 30344)]  # the relay only
    text = carrier.relay_tunnel_conf(settings, "10.0.0.9", ("relay-s", 30344))
    out = service_lines(text, "relay-out")
    assert out[2:5] == [
        "connect = logs-a.cluster.example:30344",
        "connect = logs-b.cluster.example:30344",
        "failover = prio",
    ]
    assert "checkHost = logs-b.cluster.example" in out
    assert not any(line.startswith("connect") for line in service_lines(text, "relay-in")[2:])


@pytest.mark.parametrize(
    ("failover", "message"),
    [
        ('["logs-a.cluster.example:30344"]', "repeats an endpoint"),
        ('["logs-b:1", "logs-b:1"]', "repeats an endpoint"),
        ('["10.0.0.2:30344"]', "all host names or all IPv4"),
        ('["logs-b"]', "host:port"),
        ('["logs-b:30344\\naccept = 0.0.0.0:1"]', "host:port"),
        ('["' + '", "'.join(f"l{n}:1" for n in range(8)) + '"]', "at most 7"),
    ],
)
def test_a_failover_list_that_cannot_work_is_refused(
    tmp_path: Path, failover: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        settings_for(tmp_path, f"failover_connect = {failover}\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        assert proc.poll() is None, f"stunnel4 exited {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _connect_when_listening(port: int, proc: subprocess.Popen[bytes]) -> socket.socket:
    for _ in range(100):
        assert proc.poll() is None, f"stunnel4 exited {proc.returncode}"
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _sink(server: socket.socket, got: list[bytes]) -> None:
    conn, _ = server.accept()
    with conn:
        got.append(conn.recv(100))


@pytest.mark.skipif(shutil.which("stunnel4") is None, reason="Debian's stunnel4 is not installed")
def test_stunnel_reaches_the_second_log_server_when_the_first_is_down(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = tls.new_ca(now)
    server_leaf = tls.issue(ca, "127.0.0.1", ["127.0.0.1"], server=True, now=now)
    node_leaf = tls.issue(ca, "gpu01", ["gpu01"], server=False, now=now)
    files = {"ca.pem": ca.cert_pem, "node.pem": node_leaf.cert_pem, "node.key": node_leaf.key_pem}
    files |= {"server.pem": server_leaf.cert_pem, "server.key": server_leaf.key_pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)
    logsrvd = socket.create_server(("127.0.0.1", 0))
    up, down, listen = _free_port(), _free_port(), _free_port()
    (tmp_path / "server.conf").write_text(
        f"foreground = yes\npid =\n[in]\naccept = 127.0.0.1:{up}\n"
        f"connect = 127.0.0.1:{logsrvd.getsockname()[1]}\ncert = {tmp_path}/server.pem\n"
        f"key = {tmp_path}/server.key\nCAfile = {tmp_path}/ca.pem\n"
        "requireCert = yes\nverifyChain = yes\n"
    )
    node = carrier.stunnel_node_conf(
        ("127.0.0.1", listen), [("127.0.0.1", down), ("127.0.0.1", up)]
    )
    node = node.replace("syslog = yes\n", "").replace(carrier.NODE_DIR, str(tmp_path))
    (tmp_path / "node.conf").write_text(node)
    got: list[bytes] = []
    sink = threading.Thread(target=_sink, args=(logsrvd, got), daemon=True)
    sink.start()
    procs = [
        subprocess.Popen(["stunnel4", str(tmp_path / f"{n}.conf")], stderr=subprocess.DEVNULL)
        for n in ("server", "node")
    ]
    try:
        _wait_port(up, procs[0])  # a bare probe: it fails TLS and never reaches the sink
        with _connect_when_listening(listen, procs[1]) as sudo:
            sudo.sendall(b"a recording")
            sink.join(timeout=10)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        logsrvd.close()
    assert got == [b"a recording"]
