"""HTTP/1.1 over a Unix socket (and, optionally, TLS): parse, identify, validate, dispatch.

Each connection carries one request (`Connection: close`), so a client that
goes idle never holds a worker. Bodies need a Content-Length no larger than
`daemon.max_body`; JSON with duplicate keys or NaN is refused. Anything that
goes wrong inside a handler that is not a BrokerError becomes a 500 with an
incident number; the traceback goes to the daemon's log only.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ValidationError

from broker.core import strictjson
from broker.core.errors import BrokerError, RefusedError
from broker.core.timeutil import utcnow
from broker.daemon import errors
from broker.daemon.caller import Caller
from broker.daemon.routing import Context, Registry, Route, path_value
from broker.store.db import StoreUnavailableError, store_unavailable

if TYPE_CHECKING:
    from broker.app import App

log = logging.getLogger("broker.daemon")


class Service:
    """What every connection of one listener shares: routes, limits, how callers are known."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_body: int,
        request_timeout: float,
        identify: Callable[[RequestHandler], Caller],
        app_for_thread: Callable[[], App],
    ) -> None:
        self.registry = registry
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.identify = identify
        self.app_for_thread = app_for_thread


DRAIN_LIMIT = 64 * 1024 * 1024


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object, strictly: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        text = raw.decode("utf-8")
        value = strictjson.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, strictjson.StrictJsonError) else "malformed JSON"
        raise errors.HttpError("usage", f"the request body is not valid JSON ({detail})") from exc
    if not isinstance(value, dict):
        raise errors.HttpError("usage", "the request body must be a JSON object")
    return value


def parse_query(query: str) -> dict[str, Any]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=50)
    except ValueError:
        raise errors.HttpError("usage", "malformed query string") from None
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise errors.HttpError("usage", f"query parameter {key[:40]!r} given twice")
        result[key] = value
    return result


def encode(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json", by_alias=True)
    elif isinstance(data, list):
        data = [
            d.model_dump(mode="json", by_alias=True) if isinstance(d, BaseModel) else d
            for d in data
        ]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class RequestHandler(BaseHTTPRequestHandler):
    """One connection, one request. Configured by the server attributes below."""

    protocol_version = "HTTP/1.1"
    server_version = "broker"
    sys_version = ""

    auth_reply: bytes | None = None  # the Kerberos acceptor's reply token (TLS listener)
    _body_read = False  # set once the request body has been (or is being) read

    def setup(self) -> None:
        self.service: Service = getattr(self.server, "service")  # noqa: B009 (set by the server)
        # A client that stalls mid-request is dropped after this long (no slowloris).
        self.request.settimeout(self.service.request_timeout)
        super().setup()

    # Logs never carry the request line or the query string: they could hold a secret.
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", getattr(self, "command", "-"), self._where())

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", getattr(self, "command", "-"), self._where(), code)

    def log_error(self, format: str, *args: Any) -> None:
        log.info("malformed HTTP request refused (%s)", self._where() or "no path")

    def _where(self) -> str:
        return urlsplit(getattr(self, "path", "") or "").path[:200]

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        self.close_connection = True
        self._body_read = False
        commits = self._commits()
        try:
            status, payload = self._dispatch(method)
        except errors.HttpError as exc:
            status, payload = errors.STATUS[exc.kind], errors.body(exc.kind, exc.message, exc.fix)
        except StoreUnavailableError as exc:
            done = self._commits() > commits
            status, payload = self._refusal(exc.partly_done() if done else exc)
        except BrokerError as exc:
            status, payload = self._refusal(exc)
        except sqlite3.Error as exc:
            status, payload = self._store_failure(exc, method, self._commits() > commits)
        # The daemon keeps serving; the client learns only an incident id (logged there).
        except Exception:  # noqa: BLE001
            status, payload = self._incident(method)
        if not self._body_read:
            # Refused before the body was read (bad path, URL parameters, identity): drain
            # it, so the client finishes sending and reads the answer, not a broken pipe.
            length = self.headers.get("Content-Length") or ""
            if length.isascii() and length.isdigit() and len(length) <= 12:
                self._discard(int(length))
        self._send(status, payload)

    @staticmethod
    def _refusal(exc: BrokerError) -> tuple[int, Any]:
        kind = errors.kind_of(exc)
        return errors.STATUS[kind], errors.body(kind, exc.message, exc.fix)

    def _commits(self) -> int:
        try:
            return self.service.app_for_thread().commits()
        except Exception:  # noqa: BLE001 - a count for a message, never a reason to fail
            return 0

    def _store_failure(self, exc: sqlite3.Error, method: str, done: bool) -> tuple[int, Any]:
        """A store that is full, read-only, locked or failing outside a transaction (a read)
        is a 503 with one line, like one inside it; any other SQLite error is a bug."""
        unavailable = store_unavailable(exc, self.service.app_for_thread().settings.db_path)
        if unavailable is None:
            return self._incident(method)
        if done:
            unavailable = unavailable.partly_done()
        log.error("%s %s: %s", method, self._where(), unavailable.one_line())
        return self._refusal(unavailable)

    def _incident(self, method: str) -> tuple[int, Any]:
        """Called from an except block: the traceback goes to the log under a fresh id."""
        incident = secrets.token_hex(4)
        log.exception("incident %s: %s %s failed", incident, method, self._where())
        return 500, errors.body(
            "internal",
            f"internal error in the broker daemon (incident {incident})",
            "the daemon's log (journalctl -u broker) has the details",
        )

    def _send(self, status: int, payload: Any) -> None:
        data = encode(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            if status == 401:
                self.send_header("WWW-Authenticate", "Negotiate")
            elif self.auth_reply:
                reply = base64.b64encode(self.auth_reply).decode("ascii")
                self.send_header("WWW-Authenticate", f"Negotiate {reply}")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("client went away before the response was written")

    def _read_body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding") is not None:
            self._body_read = True  # a chunked body cannot be drained by length
            raise errors.HttpError("length", "chunked bodies are not accepted; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return {}
        if not length_text.isascii() or not length_text.isdigit() or len(length_text) > 12:
            raise errors.HttpError("usage", "Content-Length must be a decimal number")
        length = int(length_text)
        if length > self.service.max_body:
            self._body_read = True
            self._discard(length)
            raise errors.HttpError(
                "too_large", f"the request body exceeds {self.service.max_body} bytes"
            )
        if length == 0:
            return {}
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise errors.HttpError("media_type", "send the body as application/json")
        self._body_read = True
        raw = self.rfile.read(length)
        if len(raw) != length:
            raise errors.HttpError("usage", "the request body is shorter than its Content-Length")
        return parse_json(raw)

    def _discard(self, length: int) -> None:
        """Read and drop an oversized body (up to DRAIN_LIMIT), so the client can finish
        sending and read the 413 instead of a broken pipe; nothing of it is parsed."""
        left = min(length, DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except (TimeoutError, OSError):
            return

    def _audit_refusal(
        self, caller: Caller, route: Route, params: BaseModel, exc: RefusedError
    ) -> None:
        """A caller refused at the door of an audited route (elevate, approve): the refusal
        goes into the chain as the handler's own refusals do (audit/refusals.py)."""
        target = getattr(params, "nodes", None) or getattr(params, "id", None) or "-"
        try:
            recorder = self.service.app_for_thread().refusals()
        except BrokerError as error:  # no usable store: the refusal still answers
            log.error("refusal of %s not audited: %s", caller.actor, error)
            return
        recorder.record(
            actor=caller.actor,
            action=route.refusal or "-",
            target=str(target),
            reason=exc.one_line(),
            now=utcnow(),
            details={"route": f"{route.method} {route.path}"},
        )

    def _dispatch(self, method: str) -> tuple[int, Any]:
        if len(self.path) > 2048:
            raise errors.HttpError("usage", "the request path is too long")
        caller = self.service.identify(self)
        split = urlsplit(self.path)
        route, path_params, known = self.service.registry.find(method, split.path)
        if route is None:
            if known:
                raise errors.HttpError("method", f"{method} is not allowed on {split.path[:200]}")
            raise errors.HttpError("not_found", f"no API endpoint {split.path[:200]}")
        if split.query and method != "GET":
            raise errors.HttpError(
                "usage", "parameters of this request go in its JSON body, not in the URL"
            )
        data = parse_query(split.query) if split.query else {}
        body = self._read_body()
        # The whole request has arrived: from here the handler's own work sets the pace.
        deadlines = getattr(self.server, "deadlines", None)
        if deadlines is not None:
            deadlines.release()
        if body:
            if data:
                raise errors.HttpError(
                    "usage", "send parameters in the query or the body, not both"
                )
            data = body
        for name, value in path_params.items():
            if name in data:
                raise errors.HttpError("usage", f"{name} is given in the path already")
            try:
                data[name] = path_value(value)
            except UnicodeDecodeError:
                raise errors.HttpError(
                    "usage", f"{name}: not UTF-8 after percent-decoding"
                ) from None
        try:
            params = route.request.model_validate(data)
        except ValidationError as exc:
            raise errors.HttpError("usage", errors.describe_validation(exc)) from exc
        try:
            caller.require(route.access)
        except RefusedError as exc:
            if route.refusal is not None:
                self._audit_refusal(caller, route, params, exc)
            raise
        context = Context(
            caller=caller, app=self.service.app_for_thread(), params=params, now=utcnow()
        )
        answer = route.handler(context)
        return (200 if route.status is None else route.status(answer)), answer
