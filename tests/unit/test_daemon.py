"""The daemon over a real Unix socket: identity from SO_PEERCRED, strict requests, no crashes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.client.transport import UnixConnection
from broker.config.loader import load_settings
from broker.config.settings import Settings
from broker.core.errors import UnavailableError
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Context, Empty, Registry
from broker.daemon.server import running
from broker.wire.base import Out
from tests.helpers import REPO, run_broker, write_config


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="broker-daemon-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def settings(shared_dir: Path) -> Settings:
    config = write_config(shared_dir)
    config.chmod(0o644)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    return load_settings(config)


@pytest.fixture
def daemon(settings: Settings) -> Iterator[Path]:
    with running(settings):
        yield settings.daemon.socket


def request(
    sock: Path,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn = UnixConnection(sock, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, json.loads(raw)


def post_json(sock: Path, path: str, data: Any) -> tuple[int, Any]:
    return request(
        sock, "POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"}
    )


def assert_error(status: int, body: Any, want_status: int, kind: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"}
    assert body["error"]["kind"] == kind
    assert "Traceback" not in body["error"]["message"]


def test_root_is_an_operator_identified_by_the_kernel(daemon: Path) -> None:
    status, body = request(daemon, "GET", "/v1/whoami")
    assert status == 200
    assert body["actor"] == "unix:root"
    assert body["uid"] == 0
    assert body["operator"] is True
    assert body["directory_user"] is False  # no snapshot: root is not an AD account


def test_socket_is_reachable_by_everyone_and_identifies_them(
    daemon: Path, shared_dir: Path
) -> None:
    assert stat.S_IMODE(daemon.stat().st_mode) == 0o666
    assert stat.S_ISSOCK(daemon.stat().st_mode)
    config = shared_dir / "broker.toml"
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    broker = str(Path(sys.executable).parent / "broker")
    who = subprocess.run(
        [*as_nobody, broker, "--config", str(config), "whoami", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert who.returncode == 0, who.stderr
    data = json.loads(who.stdout)
    assert data["actor"] == "unix:nobody"
    assert data["operator"] is False
    admin = subprocess.run(
        [*as_nobody, broker, "--config", str(config), "db", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert admin.returncode == 1
    assert admin.stderr.strip() == (
        "broker: error: nobody is not a broker operator; run it as root or as a member of "
        "daemon.operator_group"
    )
    user = subprocess.run(
        [*as_nobody, broker, "--config", str(config), "mfa", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert user.returncode == 1
    assert "nobody is not a usable directory account" in user.stderr


def test_operator_group_members_are_operators(settings: Settings, shared_dir: Path) -> None:
    group = subprocess.run(["id", "-gn", "nobody"], capture_output=True, text=True, check=True)
    config = shared_dir / "broker.toml"
    config.write_text(
        config.read_text().replace(
            "[daemon]\n", f'[daemon]\noperator_group = "{group.stdout.strip()}"\n'
        )
    )
    broker = str(Path(sys.executable).parent / "broker")
    with running(load_settings(config)):
        result = subprocess.run(
            [
                "setpriv",
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--init-groups",
                broker,
                "--config",
                str(config),
                "db",
                "status",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema"] >= 4


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "kind"),
    [
        ("GET", "/v1/nothing-here", None, {}, 404, "not_found"),
        ("DELETE", "/v1/whoami", None, {}, 405, "method"),
        (
            "POST",
            "/v1/directory/sync",
            b"{not json",
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b"[1, 2]",
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b'{"full": true, "full": false}',
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b'{"full": NaN}',
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b'{"fulll": true}',
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b'{"full": true}',
            {"Content-Type": "text/plain"},
            415,
            "media_type",
        ),
        (
            "POST",
            "/v1/directory/sync",
            b"\xff\xfe{}",
            {"Content-Type": "application/json"},
            400,
            "usage",
        ),
        ("GET", "/v1/accounts?group=a&group=b", None, {}, 400, "usage"),
        ("GET", "/v1/accounts?stale=maybe", None, {}, 400, "usage"),
        ("GET", "/v1/accounts/al%0Aice", None, {}, 400, "usage"),
    ],
)
def test_malformed_requests_get_one_clear_error(
    daemon: Path,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    kind: str,
) -> None:
    got_status, got = request(daemon, method, path, body, headers)
    assert_error(got_status, got, status, kind)
    assert "\n" not in got["error"]["message"]
    assert request(daemon, "GET", "/v1/health")[0] == 200


def test_oversized_and_chunked_bodies_are_refused_unread(daemon: Path, settings: Settings) -> None:
    big = b'{"full": "' + b"x" * settings.daemon.max_body + b'"}'
    status, body = request(
        daemon, "POST", "/v1/directory/sync", big, {"Content-Type": "application/json"}
    )
    assert_error(status, body, 413, "too_large")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(daemon))
        raw.sendall(
            b"POST /v1/directory/sync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411 ")
    assert_error(411, json.loads(body), 411, "length")


def test_a_client_that_stalls_is_dropped_and_others_are_served(settings: Settings) -> None:
    fast = settings.model_copy(
        update={
            "daemon": settings.daemon.model_copy(update={"request_timeout": timedelta(seconds=0.5)})
        }
    )
    with running(fast), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(settings.daemon.socket))
        stalled.sendall(b"POST /v1/directory/sync HTTP/1.1\r\nContent-Length: 100\r\n")
        assert request(settings.daemon.socket, "GET", "/v1/health")[0] == 200
        stalled.settimeout(5)
        assert stalled.recv(100) == b""  # closed by the daemon after request_timeout


def test_an_internal_error_is_a_500_with_an_incident_not_a_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    registry.routes = list(REGISTRY.routes)

    class Nothing(Out):
        pass

    @registry.add("GET", "/v1/test/boom", response=Nothing, access=Access.ANYONE, summary="x")
    def boom(ctx: Context[Empty]) -> Nothing:
        raise ZeroDivisionError("secret detail in a traceback")

    with running(settings, registry=registry):
        status, body = request(settings.daemon.socket, "GET", "/v1/test/boom")
        assert_error(status, body, 500, "internal")
        assert "secret detail" not in json.dumps(body)
        assert "incident" in body["error"]["message"]
        assert request(settings.daemon.socket, "GET", "/v1/health")[0] == 200
    assert "secret detail" in caplog.text  # the log keeps the cause for the operator


def test_two_hundred_concurrent_clients_all_get_answers(daemon: Path) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status, _ = request(daemon, "GET", "/v1/whoami")
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 200


def test_a_second_daemon_on_the_same_socket_is_refused(daemon: Path, settings: Settings) -> None:
    with pytest.raises(UnavailableError, match="already serving"), running(settings):
        pass
    assert request(daemon, "GET", "/v1/health")[0] == 200


def test_a_stale_socket_left_by_a_dead_daemon_is_replaced(settings: Settings) -> None:
    path = settings.daemon.socket
    path.parent.mkdir(exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    with running(settings):
        assert request(path, "GET", "/v1/health")[0] == 200
    assert not path.exists()


def test_cli_says_the_daemon_is_down_in_one_line_exit_3(shared_dir: Path) -> None:
    config = write_config(shared_dir)
    result = run_broker("accounts", "list", config=config)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "the broker daemon is not running" in lines[0]
    assert "systemctl start broker" in lines[0]


def test_serve_refuses_to_start_before_init(shared_dir: Path) -> None:
    config = write_config(shared_dir)
    result = run_broker("serve", config=config, timeout=30)
    assert result.returncode == 3
    assert "run `broker init`" in result.stderr


def test_openapi_document_is_current_and_valid() -> None:
    from openapi_spec_validator import validate

    from broker.daemon.openapi import document, render

    validate(document())
    committed = (REPO / "docs" / "openapi.json").read_text()
    assert committed == render(), (
        "docs/openapi.json is stale: run `broker api-schema > docs/openapi.json`"
    )
    paths = document()["paths"]
    for route in REGISTRY.routes:
        assert route.method.lower() in paths[route.path]


def test_serve_in_a_subprocess_stops_cleanly_on_sigterm(
    settings: Settings, shared_dir: Path
) -> None:
    from tests.helpers import serving

    with serving(shared_dir / "broker.toml") as proc:
        assert request(settings.daemon.socket, "GET", "/v1/health")[0] == 200
    assert proc.returncode == 0
    assert not settings.daemon.socket.exists()


def test_parallel_store_reads_through_many_workers(daemon: Path) -> None:
    # Many parallel reads of the store through different workers must all succeed.
    errors: list[Any] = []

    def one() -> None:
        status, body = request(daemon, "GET", "/v1/db/status")
        if status != 200:
            errors.append(body)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_client_that_drips_bytes_is_dropped_at_the_request_deadline(
    settings: Settings,
) -> None:
    """A per-read timeout alone never fires for a client sending a byte every 0.3 s."""
    quick = settings.model_copy(
        update={
            "daemon": settings.daemon.model_copy(update={"request_timeout": timedelta(seconds=1)})
        }
    )
    with running(quick), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as drip:
        drip.connect(str(settings.daemon.socket))
        started = time.monotonic()
        closed = False
        for byte in b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                drip.send(bytes([byte]))
            except OSError:
                closed = True
                break
            drip.settimeout(0.3)
            try:
                if drip.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
        assert time.monotonic() - started < 3


def test_one_user_cannot_take_every_worker_from_root(daemon: Path) -> None:
    hog = (
        "import socket, sys, time\n"
        "held = []\n"
        "for _ in range(60):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        f"    s.connect({str(daemon)!r})\n"
        "    s.send(b'GET /v1/health HTTP/1.1\\r\\n')\n"
        "    held.append(s)\n"
        "print('holding', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            sys.executable,
            "-c",
            hog,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        started = time.monotonic()
        status, body = request(daemon, "GET", "/v1/whoami")
        assert status == 200 and body["actor"] == "unix:root"
        assert time.monotonic() - started < 2
    finally:
        proc.kill()
        proc.communicate()


def test_parameters_of_a_post_in_the_url_are_refused(daemon: Path) -> None:
    status, body = request(
        daemon,
        "POST",
        "/v1/mfa/verify?code=123456",
        b"{}",
        {"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "usage")
    assert "not in the URL" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "content_type", "status", "kind"),
    [
        ("/v1/directory/sync", "text/plain", 415, "media_type"),
        ("/v1/mfa/verify?code=1", "application/json", 400, "usage"),
        ("/v1/no-such-route", "application/json", 404, "not_found"),
    ],
)
def test_a_refused_body_sent_late_still_gets_its_answer(
    daemon: Path, path: str, content_type: str, status: int, kind: str
) -> None:
    """A client that sends its headers, then its body a moment later (as http.client
    does), reads the refusal instead of a broken pipe: the daemon drains what it refuses."""
    body = b'{"full": true}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(daemon))
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: broker\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        time.sleep(0.5)
        conn.sendall(body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head
    assert json.loads(payload)["error"]["kind"] == kind


def test_serve_refuses_a_checkpoint_copy_it_cannot_write(shared_dir: Path) -> None:
    locked = shared_dir / "worm"
    locked.mkdir()
    config = write_config(shared_dir, f'checkpoint_copy = "{locked / "copy.jsonl"}"')
    assert run_broker("init", config=config).returncode == 0
    # root can write anywhere, so test as the broker would run: a user without the right.
    shared_dir.chmod(0o777)
    for path in shared_dir.rglob("*"):
        os.chown(path, 65534, 65534)
    os.chown(shared_dir, 65534, 65534)
    for path in (locked, *locked.iterdir()):
        os.chown(path, 0, 0)
    locked.chmod(0o755)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            str(Path(sys.executable).parent / "broker"),
            "--config",
            str(config),
            "serve",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert f"audit.checkpoint_copy {locked / 'copy.jsonl'}" in result.stderr
    assert "ReadWritePaths=" in result.stderr
