"""`Client`: one request per connection, JSON in and out, daemon errors re-raised as ours.

A client may know several brokers (`daemon.endpoints`, or a comma-separated `--broker`):
it tries them in order and moves to the next only when no connection could be made to one
(nothing listens, the host is unreachable, the connection or TLS handshake timed out or
failed). Once a request has been sent it never tries another broker: an answer, a refusal
included, is the answer, and a request lost after sending may have been carried out, so
sending it again elsewhere could do it twice.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import ssl
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, TypeAdapter, ValidationError

from broker.client.errors import from_response
from broker.client.transport import Target
from broker.core.errors import FailedError, UnavailableError

START_HINT = "start it with `systemctl start broker` (or `broker serve` in a terminal)"
# How long a connection (and TLS handshake) to one broker may take before the next one is
# tried; the answer itself may take the request's whole timeout.
CONNECT_TIMEOUT_S = 10.0

ModelT = TypeVar("ModelT", bound=BaseModel)


class NotConnectedError(UnavailableError):
    """No connection could be made to one broker: nothing was sent, another may be tried."""


class Client:
    def __init__(self, target: Target | Sequence[Target], timeout: float = 600.0) -> None:
        self.targets = [target] if isinstance(target, Target) else list(target)
        if not self.targets:
            raise ValueError("a client needs at least one broker to talk to")
        self.timeout = timeout

    def get(self, path: str, answer: type[ModelT], **query: Any) -> ModelT:
        """GET, the answer validated into the record the route returns (broker.wire)."""
        return _typed(answer, self.get_raw(path, **query), path)

    def get_list(self, path: str, item: type[ModelT], **query: Any) -> list[ModelT]:
        return _typed_list(item, self.get_raw(path, **query), path)

    def post(self, path: str, body: dict[str, Any] | None, answer: type[ModelT]) -> ModelT:
        return _typed(answer, self.post_raw(path, body), path)

    def post_list(self, path: str, body: dict[str, Any] | None, item: type[ModelT]) -> list[ModelT]:
        return _typed_list(item, self.post_raw(path, body), path)

    def get_raw(self, path: str, **query: Any) -> Any:
        """GET, the answer as parsed JSON (tests that probe the daemon's refusals)."""
        items = {k: _query_value(v) for k, v in query.items() if v is not None and v is not False}
        return self.call("GET", path + ("?" + urlencode(items) if items else ""), None)

    def post_raw(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, {} if body is None else body)

    def get_health(self, path: str, answer: type[ModelT]) -> tuple[bool, ModelT]:
        """GET a route that answers 503 with its own record when degraded (/v1/health): the
        record either way and whether it came with 200; an error body is raised as usual."""
        status, data = self._call_status("GET", path, None)
        if status == 200 or (status == 503 and isinstance(data, dict) and "error" not in data):
            return status == 200, _typed(answer, data, path)
        raise from_response(status, data)

    def call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        status, data = self._call_status(method, path, body)
        if status != 200:
            raise from_response(status, data)
        return data

    def _call_status(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(method, path, payload, headers)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise FailedError(
                f"the broker daemon answered HTTP {status} with a body that is not JSON"
            ) from None
        return status, data

    def _exchange(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One request, to the first broker a connection can be made to (which is then
        tried first for the rest of this client's requests)."""
        missed: list[NotConnectedError] = []
        for index, target in enumerate(self.targets):
            try:
                answer = _exchange_with(target, self.timeout, method, path, payload, headers)
            except NotConnectedError as exc:
                missed.append(exc)
                continue
            if index:
                self.targets.insert(0, self.targets.pop(index))
            return answer
        if len(missed) == 1:
            raise missed[0]
        raise UnavailableError(
            "no broker daemon could be reached: " + "; ".join(e.message for e in missed),
            fix="check that at least one of them is running and reachable from here",
        )


def _connect(target: Target, conn: http.client.HTTPConnection) -> None:
    """Open the connection within CONNECT_TIMEOUT_S; any failure is NotConnectedError
    (nothing has been sent). The answer is then waited for up to the request's timeout."""
    answer_timeout = conn.timeout
    if isinstance(answer_timeout, float | int):
        conn.timeout = min(float(answer_timeout), CONNECT_TIMEOUT_S)
    try:
        conn.connect()
        if conn.sock is not None and isinstance(answer_timeout, float | int):
            conn.sock.settimeout(answer_timeout)
    except ssl.SSLError as exc:
        raise NotConnectedError(
            f"TLS to the broker at {target.describe()} failed: {exc.reason}",
            fix="check the URL and --ca-file",
        ) from exc
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotConnectedError(
            f"the broker daemon is not running (nothing listens on {target.describe()})",
            fix=START_HINT,
        ) from None
    except PermissionError:
        raise NotConnectedError(
            f"permission denied on the daemon socket {target.describe()}",
            fix="check the socket's mode (0666) and its directory (0755)",
        ) from None
    except TimeoutError:
        raise NotConnectedError(
            f"the broker daemon at {target.describe()} did not accept a connection in time"
        ) from None
    except OSError as exc:
        raise NotConnectedError(
            f"cannot reach the broker daemon at {target.describe()}: {exc.strerror or exc}",
            fix=START_HINT,
        ) from exc


def _exchange_with(
    target: Target,
    timeout: float,
    method: str,
    path: str,
    payload: bytes | None,
    headers: dict[str, str],
) -> tuple[int, bytes]:
    """One request on a fresh connection to one broker: the answer's status and body, or our
    error saying why it could not be reached (NotConnectedError when nothing was sent)."""
    negotiator = target.negotiator()
    conn = target.connection(timeout)
    try:
        _connect(target, conn)
        sent = dict(headers)
        try:
            if negotiator is not None:
                # The Kerberos token is bound to this TLS channel.
                sent["Authorization"] = negotiator.header(conn)
            # The daemon may refuse before reading everything; its answer is still there.
            with contextlib.suppress(BrokenPipeError):
                conn.request(method, path, body=payload, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            if negotiator is not None and response.status != 401:
                negotiator.confirm(response.getheader("WWW-Authenticate"))
        except ssl.SSLError as exc:
            raise UnavailableError(
                f"TLS to the broker at {target.describe()} failed: {exc.reason}",
                fix="check the URL and --ca-file",
            ) from exc
        except http.client.RemoteDisconnected:
            raise UnavailableError(
                f"the broker daemon at {target.describe()} closed the connection without an answer",
                fix="see its log (journalctl -u broker)",
            ) from None
        except TimeoutError:
            raise UnavailableError(
                f"the broker daemon at {target.describe()} did not answer in time"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise UnavailableError(
                    f"the broker daemon at {target.describe()} closed the connection"
                ) from exc
            raise UnavailableError(
                f"cannot reach the broker daemon at {target.describe()}: {exc.strerror}",
                fix=START_HINT,
            ) from exc
    finally:
        conn.close()
    return response.status, raw


def _typed(answer: type[ModelT], data: Any, path: str) -> ModelT:
    try:
        return answer.model_validate(data)
    except ValidationError as exc:
        raise _mismatch(path, exc) from exc


def _typed_list(item: type[ModelT], data: Any, path: str) -> list[ModelT]:
    try:
        return TypeAdapter(list[item]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise _mismatch(path, exc) from exc


def _mismatch(path: str, exc: ValidationError) -> FailedError:
    """A daemon of another version answers in a shape this client does not know."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the answer"
    return FailedError(
        f"the broker daemon's answer to {path} does not match this client: {where}: {first['msg']}",
        fix="run the CLI of the daemon's version",
    )


def _query_value(value: Any) -> str:
    if value is True:
        return "true"
    return str(value)
