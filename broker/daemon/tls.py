"""The optional TCP listener: TLS, and callers authenticated with Kerberos (SPNEGO/Negotiate).

Off unless `daemon.listen` is set. The daemon accepts with its HTTP/ keytab
through the GSSAPI credential store, so no ticket or key leaves that file;
one round trip only (Kerberos inside SPNEGO needs no more), and the realm
of the initiator must be the broker's own.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import socketserver
import ssl
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import gssapi
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.config.settings import Settings
from broker.core.channel import end_point_binding
from broker.core.timeutil import utcnow
from broker.daemon import errors
from broker.daemon.admission import Admission
from broker.daemon.caller import Caller, kerberos_caller
from broker.daemon.http import RequestHandler, Service
from broker.daemon.pooled import PooledServer
from broker.daemon.routing import REGISTRY

if TYPE_CHECKING:
    from broker.daemon.admission import Deadlines
    from broker.daemon.workers import Workers

log = logging.getLogger("broker.daemon")

MAX_TOKEN = 48 * 1024


class TlsServer(PooledServer, socketserver.TCPServer):
    """TLS is negotiated on the worker thread, so a slow handshake never blocks accept();
    the handshake counts against the request's deadline."""

    context: ssl.SSLContext
    handshake_timeout: float

    def peer_key(self, request: Any, client_address: Any) -> Hashable:
        return ("ip", client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.handshake_timeout)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(wrapped, client_address, self)  # type: ignore[arg-type]
        finally:
            wrapped.close()


def server_context(settings: Settings) -> ssl.SSLContext:
    daemon = settings.daemon
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(daemon.tls_cert), str(daemon.tls_key))
    return context


def acceptor_credentials(settings: Settings) -> gssapi.Credentials:
    daemon = settings.daemon
    name = (
        gssapi.Name(daemon.http_principal, gssapi.NameType.kerberos_principal)
        if daemon.http_principal
        else None
    )
    return gssapi.Credentials(name=name, usage="accept", store={"keytab": str(daemon.http_keytab)})


def certificate_binding(settings: Settings) -> bytes:
    """The channel-binding data of our own certificate (the first one in tls_cert)."""
    assert settings.daemon.tls_cert is not None
    pem = settings.daemon.tls_cert.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    return end_point_binding(cert.public_bytes(serialization.Encoding.DER))


def negotiate(header: str | None, settings: Settings, binding: bytes) -> tuple[str, bytes | None]:
    """The initiator's principal from an `Authorization: Negotiate` header, bound to our TLS
    certificate, and the reply token that proves us to the client (mutual authentication)."""
    if header is None or not header.startswith("Negotiate "):
        raise errors.HttpError(
            "unauthorized",
            "this listener needs Kerberos authentication (Negotiate)",
            fix="run `kinit` and use `broker --broker https://...`",
        )
    encoded = header[len("Negotiate ") :].strip()
    if len(encoded) > MAX_TOKEN:
        raise errors.HttpError("unauthorized", "the Negotiate token is too large")
    try:
        token = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise errors.HttpError("unauthorized", "the Negotiate token is not base64") from None
    try:
        context = gssapi.SecurityContext(
            creds=acceptor_credentials(settings),
            usage="accept",
            channel_bindings=gssapi.raw.ChannelBindings(application_data=binding),
        )
        reply = context.step(token)
    except gssapi.raw.GSSError as exc:
        log.info("Kerberos authentication refused: %s", " ".join(str(exc).split())[:300])
        raise errors.HttpError(
            "unauthorized",
            "Kerberos authentication failed",
            fix="renew your ticket with `kinit` and check the URL's host name",
        ) from exc
    if not context.complete:
        raise errors.HttpError("unauthorized", "Kerberos authentication needs more than one step")
    return str(context.initiator_name), reply


def identify_kerberos(settings: Settings, workers: Workers) -> Any:
    realm = settings.daemon.realm or ""
    binding = certificate_binding(settings)

    def identify(handler: RequestHandler) -> Caller:
        principal, reply = negotiate(handler.headers.get("Authorization"), settings, binding)
        handler.auth_reply = reply
        now = utcnow()
        return kerberos_caller(principal, realm, workers.app().directory().snapshot(now))

    return identify


def tls_server(settings: Settings, workers: Workers, deadlines: Deadlines) -> TlsServer:
    daemon = settings.daemon
    assert daemon.listen is not None
    host, _, port = daemon.listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    TlsServer.address_family = family
    server = TlsServer((host, int(port)), RequestHandler, bind_and_activate=True)
    server.context = server_context(settings)
    server.handshake_timeout = daemon.request_timeout.total_seconds()
    # Its own, smaller pool: network clients never take the workers the local socket needs.
    size = max(2, daemon.workers // 2)
    server.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="broker-tls")
    server.deadlines = deadlines
    server.admission = Admission(total=size * 4, per_peer=4, exempt=frozenset())
    server.service = Service(
        REGISTRY,
        max_body=daemon.max_body,
        request_timeout=daemon.request_timeout.total_seconds(),
        identify=identify_kerberos(settings, workers),
        app_for_thread=workers.app,
    )
    # Fail at start, not at the first request, when the keytab cannot be used.
    acceptor_credentials(settings)
    return server
