"""Sending over the network for every notifier (detection alerts, request notices): an
HTTP POST with a hard deadline, short printable failure reasons, and the private key file
that signs what is sent. Nothing here logs a body, a key or a password."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from broker.core import syslog
from broker.core.errors import RefusedError, UnavailableError
from broker.store.files import check_private_file, service_ids

MAX_SECRET_BYTES: Final = 4096
_MAX_ERROR = 300


def load_secret(path: Path, *, service_user: str, what: str = "webhook secret") -> bytes:
    """The webhook HMAC key from `path` (trailing newline dropped), after refusing a link, a
    file readable or writable by group or others, one owned by anyone but root, the service
    user or this process's user, an empty file, and one over 4 KiB. Errors name the file,
    never its content."""
    ids = service_ids(service_user)
    owners = {0, os.geteuid(), *([ids[0]] if ids else [])}
    try:
        check_private_file(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnavailableError(
            f"no {what} file at {path}",
            fix=f"create it with mode 0600, owned by root or {service_user}",
        ) from None
    except OSError as exc:
        raise UnavailableError(
            f"cannot read the {what} file {path} ({exc.strerror or type(exc).__name__})"
        ) from exc
    try:
        info = os.fstat(fd)
        if stat.S_IMODE(info.st_mode) & 0o077 or not stat.S_ISREG(info.st_mode):
            raise RefusedError(f"{path} is not a private regular file", fix=f"chmod 600 {path}")
        if info.st_uid not in owners:
            raise RefusedError(
                f"{path} is owned by uid {info.st_uid}, not by root or {service_user}",
                fix=f"chown root {path}",
            )
        data = os.read(fd, MAX_SECRET_BYTES + 2)
    finally:
        os.close(fd)
    secret = data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")
    if len(secret) > MAX_SECRET_BYTES:
        raise RefusedError(f"the {what} in {path} is longer than {MAX_SECRET_BYTES} bytes")
    if not secret.strip():
        raise RefusedError(
            f"the {what} file {path} is empty",
            fix="put a long random key in it, e.g. `openssl rand -hex 32`",
        )
    return secret


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> str | None:
    """POST `body`; None on any 2xx answer, else why not. Redirects are not followed, and
    the whole exchange ends after `timeout` seconds even against a server that trickles
    (a watchdog shuts the socket down); only name resolution is outside that bound."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    target = parts.path or "/"
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            # The plain socket's shutdown: wakes a blocked read in the sending thread
            # without touching the TLS object it is using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target, body=body, headers=dict(headers))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return f"no answer within {timeout:g}s"
        return describe(exc)
    finally:
        watchdog.cancel()
        conn.close()
    if expired.is_set():  # a cut-off header block parses as complete: never trust it
        return f"no answer within {timeout:g}s"
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status} (redirects are not followed; point webhook_url at the final URL)"
    return f"HTTP {status}"


def describe(exc: BaseException) -> str:
    """A short, one-line, printable reason for a failed send (no payload, no secret)."""
    return syslog.failure(exc, _MAX_ERROR)
