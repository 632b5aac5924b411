"""HTTP connections to the daemon: its Unix socket, or TLS with Kerberos (SPNEGO)."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.core.errors import UnavailableError, UsageError

SPNEGO_OID = "1.3.6.1.5.5.2"


class UnixConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX; the kernel tells the daemon who we are."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Target:
    """Where the daemon is and how to open a connection to it."""

    def __init__(
        self, socket_path: Path | None = None, url: str | None = None, ca_file: Path | None = None
    ) -> None:
        self.socket_path = socket_path
        self.url = url
        self.ca_file = ca_file
        self.host = ""
        self.port = 443
        if url is not None:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if (
                parts.scheme != "https"
                or not parts.hostname
                or parts.path not in ("", "/")
                or "@" in parts.netloc
                or parts.query
                or parts.fragment
                or "?" in url
                or "#" in url
                or port == -1
                or port == 0
            ):
                # Not echoed: a mistyped URL may hold a password.
                raise UsageError(
                    "a broker URL is not https://HOST[:PORT] (no user, path, query or fragment;"
                    " port 1-65535)",
                    fix="use e.g. --broker https://broker.hpc.example.org:8443",
                )
            self.host = parts.hostname
            self.port = port or 443

    def describe(self) -> str:
        return self.url if self.url is not None else str(self.socket_path)

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.url is None:
            assert self.socket_path is not None
            return UnixConnection(self.socket_path, timeout)
        context = self._tls_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)

    def _tls_context(self) -> ssl.SSLContext:
        """The system's trust store, or only the CA file given (--ca-file, BROKER_CA_FILE);
        a CA file that cannot be read or parsed is a usage error naming it, not a traceback."""
        cafile = str(self.ca_file) if self.ca_file is not None else None
        try:
            return ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(
                f"cannot use the CA file {cafile}: {reason}",
                fix="point --ca-file or BROKER_CA_FILE at the PEM bundle that signed the "
                "daemon's certificate",
            ) from None

    def negotiator(self) -> Negotiator | None:
        """Kerberos for a TLS target (None on the Unix socket, where the kernel vouches)."""
        return None if self.url is None else Negotiator(self.host)


MAX_ENDPOINTS = 16


def endpoint_target(text: str, ca_file: Path | None = None) -> Target:
    """One broker a client may use: `unix:/absolute/socket` or `https://HOST[:PORT]`."""
    if text.startswith("unix:"):
        path = Path(text[len("unix:") :])
        if not path.is_absolute() or ".." in path.parts or "\0" in text:
            raise UsageError(
                f"endpoint {text!r} does not name an absolute socket path",
                fix="write it as unix:/run/broker/broker.sock",
            )
        return Target(socket_path=path)
    return Target(url=text, ca_file=ca_file)


def endpoint_targets(texts: list[str], ca_file: Path | None = None) -> list[Target]:
    """The brokers to try, in order (at most MAX_ENDPOINTS, none twice)."""
    items = [t.strip() for t in texts if t.strip()]
    if not items or len(items) > MAX_ENDPOINTS or len(set(items)) != len(items):
        raise UsageError(
            f"expected 1 to {MAX_ENDPOINTS} different broker endpoints, got {len(items)}"
            + (" (one is listed twice)" if len(set(items)) != len(items) else ""),
            fix="list each broker once, e.g. https://broker1:8443,https://broker2:8443",
        )
    return [endpoint_target(t, ca_file) for t in items]


class Negotiator:
    """One SPNEGO exchange with the caller's own ticket, bound to the TLS channel, and the
    check that the broker's reply proves it holds the HTTP/ key (mutual authentication)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._context: Any = None

    def header(self, conn: http.client.HTTPConnection) -> str:
        import gssapi

        sock = conn.sock
        if not isinstance(sock, ssl.SSLSocket):
            raise UnavailableError("Kerberos to the broker needs its TLS connection first")
        cert = sock.getpeercert(binary_form=True)
        if cert is None:
            raise UnavailableError("the broker presented no TLS certificate")
        try:
            name = gssapi.Name(f"HTTP@{self.host}", gssapi.NameType.hostbased_service)
            self._context = gssapi.SecurityContext(
                name=name,
                usage="initiate",
                mech=gssapi.OID.from_int_seq(SPNEGO_OID),
                flags=gssapi.RequirementFlag.mutual_authentication
                | gssapi.RequirementFlag.out_of_sequence_detection,
                channel_bindings=gssapi.raw.ChannelBindings(application_data=_binding(cert)),
            )
            token = self._context.step()
        except gssapi.raw.GSSError as exc:
            raise UnavailableError(
                f"no Kerberos ticket for HTTP/{self.host}: {_gss_text(exc)}",
                fix="run `kinit` first, and check that the broker's HTTP/ principal exists",
            ) from exc
        if token is None:
            raise UnavailableError("Kerberos produced no token for the broker")
        return "Negotiate " + base64.b64encode(token).decode("ascii")

    def confirm(self, header: str | None) -> None:
        """Refuse an answer from a server that did not prove it is the broker."""
        import gssapi

        if header is None or not header.startswith("Negotiate ") or self._context is None:
            raise UnavailableError(
                f"the server at {self.host} did not prove it is the broker "
                "(no Kerberos reply to mutual authentication)",
                fix="check the URL; this may not be the broker",
            )
        try:
            self._context.step(base64.b64decode(header[len("Negotiate ") :], validate=True))
        except (gssapi.raw.GSSError, ValueError):
            raise UnavailableError(
                f"the server at {self.host} failed Kerberos mutual authentication",
                fix="check the URL; this may not be the broker",
            ) from None
        if not self._context.complete:
            raise UnavailableError(
                f"Kerberos mutual authentication with {self.host} did not finish"
            )


def _gss_text(exc: Exception) -> str:
    text = "".join(ch for ch in str(exc) if (ch.isascii() and ch.isprintable()) or ch == " ")
    return " ".join(text.split())[:300]


def _binding(cert: bytes) -> bytes:
    """tls-server-end-point channel binding; cryptography is imported only for TLS, so a
    CLI call over the Unix socket does not pay for it."""
    from broker.core.channel import end_point_binding

    return end_point_binding(cert)
