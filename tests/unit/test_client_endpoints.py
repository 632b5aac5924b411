"""A CLI that knows several brokers (daemon.endpoints, --broker a,b): it moves to the next
only when no connection could be made, never after a request was sent."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import daemon_socket_of, run_broker


def _with_endpoints(config: Path, endpoints: list[str]) -> Path:
    """The daemon's own config with a [daemon] endpoints list added (same state dir)."""
    text = config.read_text().replace(
        "[daemon]\n", "[daemon]\nendpoints = " + json.dumps(endpoints) + "\n", 1
    )
    other = config.with_name("endpoints.toml")
    other.write_text(text)
    return other


@pytest.fixture
def fake_broker(tmp_path: Path) -> Iterator[tuple[Path, list[bytes], list[str]]]:
    """A Unix socket that answers every request with `answers[0]` (b"" = close without a
    word) and keeps each request line it got."""
    path = tmp_path / "fake.sock"
    answers: list[bytes] = []
    seen: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                data = conn.recv(65536)
                seen.append(data.split(b"\r\n", 1)[0].decode("ascii", "replace"))
                if answers[0]:
                    conn.sendall(answers[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers, seen
    stop.set()
    thread.join()
    server.close()


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": {"kind": "refused", "message": message}}).encode()
    return (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def test_a_broker_nobody_listens_on_is_skipped(daemon: Path, tmp_path: Path) -> None:
    live = daemon_socket_of(daemon)
    config = _with_endpoints(daemon, [f"unix:{tmp_path / 'gone.sock'}", f"unix:{live}"])
    result = run_broker("whoami", "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["operator"] is True


def test_none_reachable_names_each_one_and_exits_3(broker_config: Path, tmp_path: Path) -> None:
    config = _with_endpoints(
        broker_config, [f"unix:{tmp_path / 'a.sock'}", f"unix:{tmp_path / 'b.sock'}"]
    )
    result = run_broker("whoami", config=config)
    assert result.returncode == 3, result.stderr
    first = result.stderr.splitlines()[0]
    assert "no broker daemon could be reached" in first
    assert "a.sock" in first and "b.sock" in first


def test_a_refusal_is_the_answer_the_next_broker_is_not_asked(
    daemon: Path, fake_broker: tuple[Path, list[bytes], list[str]]
) -> None:
    path, answers, seen = fake_broker
    answers.append(_refusal("you may not do that here"))
    config = _with_endpoints(daemon, [f"unix:{path}", f"unix:{daemon_socket_of(daemon)}"])
    result = run_broker("whoami", config=config)
    # Had it asked the live daemon after the refusal, whoami would have succeeded.
    assert result.returncode == 1, result.stderr
    assert "you may not do that here" in result.stderr
    assert seen == ["GET /v1/whoami HTTP/1.1"]


def test_a_request_lost_after_sending_is_not_sent_again_elsewhere(
    daemon: Path, fake_broker: tuple[Path, list[bytes], list[str]]
) -> None:
    path, answers, seen = fake_broker
    answers.append(b"")  # takes the request, closes without an answer
    config = _with_endpoints(daemon, [f"unix:{path}", f"unix:{daemon_socket_of(daemon)}"])
    result = run_broker("audit", "seal", config=config)
    assert result.returncode == 3, result.stderr
    assert "closed the connection" in result.stderr
    assert seen == ["POST /v1/audit/seal HTTP/1.1"]


def test_broker_option_takes_a_list(daemon: Path, tmp_path: Path) -> None:
    live = f"unix:{daemon_socket_of(daemon)}"
    ok = run_broker("--broker", f"unix:{tmp_path / 'gone.sock'},{live}", "whoami", config=daemon)
    assert ok.returncode == 0, ok.stderr
    twice = run_broker("--broker", f"{live},{live}", "whoami", config=daemon)
    assert twice.returncode == 2 and "listed twice" in twice.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "http://broker1:8443",
        "unix:relative.sock",
        "https://user@broker1",
        "unix:/a/../b",
        "https://broker1:99999",
        "https://broker1:8443/path",
    ],
)
def test_a_bad_endpoint_in_the_config_is_a_usage_error(broker_config: Path, bad: str) -> None:
    config = _with_endpoints(broker_config, [bad])
    result = run_broker("whoami", config=config)
    assert result.returncode == 2, result.stderr
    assert "endpoints" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:s3cret@broker1:8443",
        "https://broker1:99999",
        "https://broker1:8443/?s3cret=1",
        "https://broker1:8443#s3cret",
    ],
)
def test_a_bad_broker_url_is_refused_without_echoing_it(url: str) -> None:
    result = run_broker("--broker", url, "whoami")
    assert result.returncode == 2, result.stderr
    assert "s3cret" not in result.stderr and "99999" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
