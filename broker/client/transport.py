"""HTTP connections to the daemon: its Unix socket, or TLS with Kerberos (SPNEGO)."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from pathlib import Path
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
            if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
                raise UsageError(
                    f"--broker {url!r} is not an https://HOST[:PORT] URL",
                    fix="use e.g. --broker https://broker.hpc.example.org:8443",
                )
            self.host = parts.hostname
            self.port = parts.port or 443

    def describe(self) -> str:
        return self.url if self.url is not None else str(self.socket_path)

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.url is None:
            assert self.socket_path is not None
            return UnixConnection(self.socket_path, timeout)
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)

    def auth_header(self) -> str | None:
        """`Negotiate <token>` from the caller's own Kerberos ticket (TLS targets only)."""
        if self.url is None:
            return None
        import gssapi

        try:
            name = gssapi.Name(f"HTTP@{self.host}", gssapi.NameType.hostbased_service)
            context = gssapi.SecurityContext(
                name=name, usage="initiate", mech=gssapi.OID.from_int_seq(SPNEGO_OID)
            )
            token = context.step()
        except gssapi.raw.GSSError as exc:
            raise UnavailableError(
                f"no Kerberos ticket for HTTP/{self.host}: {_gss_text(exc)}",
                fix="run `kinit` first, and check that the broker's HTTP/ principal exists",
            ) from None
        if token is None:
            raise UnavailableError("Kerberos produced no token for the broker")
        return "Negotiate " + base64.b64encode(token).decode("ascii")


def _gss_text(exc: Exception) -> str:
    text = "".join(ch for ch in str(exc) if (ch.isascii() and ch.isprintable()) or ch == " ")
    return " ".join(text.split())[:300]
