"""TLS channel binding for Kerberos over HTTPS (RFC 5929 `tls-server-end-point`).

Both ends bind the Negotiate token to the server certificate's hash, so a
token captured by a TLS-terminating middlebox is useless against the real
broker: its certificate, and so the binding, differs.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

PREFIX = b"tls-server-end-point:"


def end_point_binding(cert_der: bytes) -> bytes:
    """The application data of the binding: the prefix and the certificate's hash, hashed with
    its signature algorithm's hash (SHA-256 when that is MD5, SHA-1 or unknown)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return PREFIX + digest.finalize()
