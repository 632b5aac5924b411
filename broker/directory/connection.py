"""Connections to Active Directory: LDAPS or StartTLS, verified against a CA file.

The default is SASL GSSAPI with the broker's own keytab (credential store
extension: no kinit, no password anywhere). A simple bind reads its password
from a 0600 file and is only ever sent over TLS. DCs are tried in order.
Native errors (ldap3, GSSAPI, TLS) are translated here into one line that
names the DC, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import gssapi
import gssapi.raw
import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from broker.config.settings import DirectorySection
from broker.core.errors import UnavailableError
from broker.store.files import check_private_file


@dataclass(frozen=True)
class BindInfo:
    """Who the DC says we are, and over what."""

    uri: str
    identity: str
    tls: str
    elapsed_ms: float


@dataclass(frozen=True)
class DcStatus:
    uri: str
    ok: bool
    detail: str
    elapsed_ms: float


def _server(uri: str, cfg: DirectorySection) -> ldap3.Server:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    use_ssl = parts.scheme == "ldaps"
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=str(cfg.ca_file),
        sni=host,
    )
    return ldap3.Server(
        host,
        port=parts.port or (636 if use_ssl else 389),
        use_ssl=use_ssl,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=max(1, int(cfg.timeout.total_seconds())),
    )


def _connection(uri: str, cfg: DirectorySection, writable: bool = False) -> ldap3.Connection:
    server = _server(uri, cfg)
    timeout = max(1, int(cfg.timeout.total_seconds()))
    if cfg.auth == "gssapi":
        assert cfg.principal is not None and cfg.keytab is not None
        return ldap3.Connection(
            server,
            user=cfg.principal,
            authentication=ldap3.SASL,
            sasl_mechanism=ldap3.KERBEROS,
            sasl_credentials=(server.host,),
            cred_store={"client_keytab": str(cfg.keytab), "ccache": _ccache_name(cfg)},
            receive_timeout=timeout,
            raise_exceptions=False,
            read_only=not writable,
            # Ranged retrieval is done by the sync, which checks every range; with auto_range off,
            # ldap3 must not invent empty attributes either (it then drops the ranged one).
            auto_range=False,
            auto_referrals=False,  # never follow a referral to a server the config does not name
            check_names=False,  # the sync reads raw bytes; skip ldap3's schema formatting
            return_empty_attributes=False,
        )
    assert cfg.bind_dn is not None and cfg.password_file is not None
    return ldap3.Connection(
        server,
        user=cfg.bind_dn,
        password=_read_password(cfg),
        authentication=ldap3.SIMPLE,
        receive_timeout=timeout,
        raise_exceptions=False,
        read_only=not writable,
        auto_range=False,
        auto_referrals=False,
        check_names=False,
        return_empty_attributes=False,
    )


def _ccache_name(cfg: DirectorySection) -> str:
    """An in-memory ticket cache per (keytab, principal): tickets are reused between binds,
    but never across a change of keytab or principal."""
    key = hashlib.sha256(f"{cfg.keytab}\0{cfg.principal}".encode()).hexdigest()[:16]
    return f"MEMORY:broker-directory-{key}"


def _read_password(cfg: DirectorySection) -> str:
    assert cfg.password_file is not None
    try:
        check_private_file(cfg.password_file, 0o600)
        return cfg.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise UnavailableError(
            f"directory password file {cfg.password_file} does not exist",
            fix="create it (mode 0600) or switch to auth = 'gssapi'",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UnavailableError(
            f"cannot read the directory password file {cfg.password_file} ({exc})",
            fix="it must be readable by the broker (mode 0600, owned by its user)",
        ) from None


def _bind(
    uri: str, cfg: DirectorySection, writable: bool = False
) -> tuple[ldap3.Connection, BindInfo]:
    started = time.monotonic()
    try:
        conn = _connection(uri, cfg, writable)
    except ldap_errors.LDAPException as exc:  # e.g. an unreadable or invalid CA file
        raise UnavailableError(
            f"{uri}: cannot set up TLS with {cfg.ca_file} ({_short(str(exc))})",
            fix="point directory.ca_file at a readable PEM file with the DC's CA",
        ) from None
    try:
        conn.open()
        if urlsplit(uri).scheme.lower() == "ldap" and not conn.start_tls():
            raise UnavailableError(f"{uri}: StartTLS failed ({conn.result.get('description')})")
        if not conn.bind():
            raise UnavailableError(_bind_failure(uri, cfg, conn))
        identity = _identity(conn, cfg)
    except UnavailableError:
        discard(conn)
        raise
    except ldap_errors.LDAPException as exc:
        discard(conn)
        raise UnavailableError(_ldap_failure(uri, cfg, exc)) from None
    except gssapi.raw.GSSError as exc:
        discard(conn)
        raise UnavailableError(_gss_failure(uri, cfg, exc)) from None
    tls = conn.socket.version() if isinstance(conn.socket, ssl.SSLSocket) else "none"
    elapsed = (time.monotonic() - started) * 1000
    return conn, BindInfo(uri, identity, str(tls), elapsed)


def discard(conn: ldap3.Connection) -> None:
    """Close a failed connection; ldap3 leaves the socket of a refused open behind."""
    with contextlib.suppress(ldap_errors.LDAPException):
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.close()


def _identity(conn: ldap3.Connection, cfg: DirectorySection) -> str:
    """Who the DC thinks we are: WhoAmI where supported (Windows), else our own account's DN.

    Samba does not implement WhoAmI; finding our own entry also proves the bind can read.
    """
    who = conn.extend.standard.who_am_i()
    if who:
        return str(who).removeprefix("u:")
    if cfg.auth == "simple":
        return str(cfg.bind_dn)
    account = str(cfg.principal).split("@", 1)[0]
    query = f"(&(objectClass=user)(sAMAccountName={escape_filter_chars(account)}))"
    if (
        not conn.search(cfg.base_dn, query, attributes=["sAMAccountName"], size_limit=1)
        or not conn.entries
    ):
        raise UnavailableError(
            f"{conn.server.host}: bound as {cfg.principal} but cannot find that account under {cfg.base_dn}",
            fix="check directory.base_dn",
        )
    return str(conn.entries[0].entry_dn)


def bind_to(uri: str, cfg: DirectorySection) -> tuple[ldap3.Connection, BindInfo]:
    """Bind to one named DC (no failover): for more connections to a DC already chosen."""
    return _bind(uri, cfg)


def connect(cfg: DirectorySection, *, writable: bool = False) -> tuple[ldap3.Connection, BindInfo]:
    """Bind to the first DC that works; if none does, say why for each. `writable` is for
    keytab rotation only (password resets); everything else reads."""
    failures: list[str] = []
    for uri in cfg.uris:
        try:
            return _bind(uri, cfg, writable)
        except UnavailableError as exc:
            failures.append(exc.one_line())
    raise UnavailableError("no domain controller could be used: " + " | ".join(failures))


def ping(cfg: DirectorySection) -> list[DcStatus]:
    """Try every configured DC (not just the first that works), for `broker directory ping`."""
    results = []
    for uri in cfg.uris:
        started = time.monotonic()
        try:
            conn, info = _bind(uri, cfg)
        except UnavailableError as exc:
            elapsed = (time.monotonic() - started) * 1000
            results.append(DcStatus(uri, False, exc.one_line(), elapsed))
        else:
            conn.unbind()
            results.append(
                DcStatus(uri, True, f"bound as {info.identity} over {info.tls}", info.elapsed_ms)
            )
    return results


def _bind_failure(uri: str, cfg: DirectorySection, conn: ldap3.Connection) -> str:
    desc = str(conn.result.get("description", "bind failed"))
    message = str(conn.result.get("message", "")).strip()
    if cfg.auth == "simple":
        return (
            f"{uri}: simple bind as {cfg.bind_dn} refused ({desc}); "
            f"check the DN and the password in {cfg.password_file}"
        )
    detail = f"{desc}: {message}" if message else desc
    return f"{uri}: SASL GSSAPI bind refused ({detail}); check the DC accepts SASL over TLS"


def _ldap_failure(uri: str, cfg: DirectorySection, exc: ldap_errors.LDAPException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"{uri}: the DC's TLS certificate is not trusted by {cfg.ca_file}; "
            "point directory.ca_file at the CA that issued the DC certificate"
        )
    if "hostname" in text.lower() and "match" in text.lower():
        return f"{uri}: the DC's certificate does not name this host; use the DC name the certificate carries"
    if "GSSError" in text or "gss" in text.lower():
        return _gss_text(uri, cfg, text)
    if "timed out" in text or "timeout" in text.lower():
        return f"{uri}: the DC did not answer within {cfg.timeout}; check it is up and reachable"
    if "refused" in text.lower() or "unreachable" in text.lower() or "socket" in text.lower():
        return f"{uri}: cannot connect ({_short(text)}); check the DC is up and the port is open"
    return f"{uri}: {_short(text)}"


def _gss_failure(uri: str, cfg: DirectorySection, exc: gssapi.raw.GSSError) -> str:
    return _gss_text(uri, cfg, exc.gen_message())


def _gss_text(uri: str, cfg: DirectorySection, text: str) -> str:
    lowered = text.lower()
    if "skew" in lowered:
        fix = "synchronise this host's clock with the DC (chrony/NTP)"
    elif "find kdc" in lowered or "contact any kdc" in lowered or "resolve" in lowered:
        fix = "the realm's KDC is unknown or unreachable; check kerberos.krb5_conf (or /etc/krb5.conf)"
    elif any(
        w in lowered
        for w in ("keytab", "key table", "no key", "no credentials", "credentials cache")
    ):
        fix = f"check {cfg.keytab} exists, is readable by the broker and holds keys for {cfg.principal}"
    elif "expired" in lowered:
        fix = f"the key or password of {cfg.principal} has expired; rotate its keytab"
    elif "preauthentication" in lowered or "integrity" in lowered or "decrypt" in lowered:
        fix = f"{cfg.keytab} holds an old key for {cfg.principal}; re-export it"
    else:
        fix = "check the KDC is reachable and KRB5_CONFIG/kerberos.krb5_conf names the realm"
    return f"{uri}: Kerberos authentication as {cfg.principal} failed ({_short(text)}); {fix}"


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 200 else flat[:197] + "..."
