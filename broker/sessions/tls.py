"""The session CA: mutual TLS between each node's tunnel and the log server's tunnel.

A private CA only for this carrier: the server certificate names the address
nodes connect to, each node's certificate names the node. Node keys are made
in memory and sent over the pinned SSH connection at bootstrap; they never
touch the broker's disk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: every OpenSSL stunnel links against negotiates it (Ed25519 certificates not always).
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hpc-access-broker"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def new_ca(now: datetime) -> Issued:
    key = _key()
    name = _name("broker session recording CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca: Issued,
    common: str,
    hosts: list[str],
    *,
    server: bool,
    client: bool | None = None,
    now: datetime,
) -> Issued:
    """A leaf certificate for a server (the log server's tunnel), a client (a node), or
    both (a relay: nodes connect to it, it connects to the broker host)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the session CA key is not an EC key")
    key = _key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client if client is not None else not server:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise ValueError("a leaf certificate serves as a server, a client or both")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def cert_names(cert_pem: bytes) -> tuple[str, list[str], datetime]:
    """Common name, alternative names and expiry of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in alt.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return (str(common[0].value) if common else ""), names, cert.not_valid_after_utc


def valid_leaf(
    ca_pem: bytes,
    cert_pem: bytes,
    name: str,
    until: datetime,
    *,
    hosts: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
) -> bool:
    """Signed by this CA, for `name` (and every one of `hosts`), still valid at `until`,
    and good for the server and client ends asked for."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if (server and ExtendedKeyUsageOID.SERVER_AUTH not in usage) or (
        client and ExtendedKeyUsageOID.CLIENT_AUTH not in usage
    ):
        return False
    common, names, expires = cert_names(cert_pem)
    return common == name and all(h in names for h in (name, *hosts)) and expires > until


CRL_DAYS = 7  # nextUpdate: a CRL past it makes stunnel refuse every node, so it is renewed daily


def serial_of(cert_pem: bytes) -> int:
    """The serial number the CRL names a certificate by."""
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def issued_by(ca_pem: bytes, cert_pem: bytes) -> bool:
    """Whether a certificate (a node's, so untrusted bytes) carries this CA's signature."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def build_crl(ca: Issued, revoked: Sequence[tuple[int, datetime]], now: datetime) -> bytes:
    """A PEM CRL signed by the session CA listing `revoked` (serial, when), valid CRL_DAYS.

    The CRL number is the issue time in seconds, so a later CRL always has a higher number
    without keeping a counter."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the session CA key is not an EC key")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CrlView:
    serials: frozenset[int]
    next_update: datetime


def read_crl(ca_pem: bytes, crl_pem: bytes) -> CrlView | None:
    """The serials and nextUpdate of a CRL this CA signed; None for anything else."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        return None
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        return None
    if crl.next_update_utc is None:
        return None
    return CrlView(frozenset(r.serial_number for r in crl), crl.next_update_utc)
