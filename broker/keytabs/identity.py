"""The broker's own Kerberos identity, which keytab rotation needs before anything else.

Rotation binds to AD and checks new keys with tickets of its own, so it needs the
gssapi directory settings; the realm defaults to the one the base DN names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.settings import DirectorySection
from broker.core.errors import UnavailableError


def realm_of(base_dn: str) -> str:
    """DC=hpc,DC=example,DC=org -> HPC.EXAMPLE.ORG (the default Kerberos realm)."""
    return ".".join(part.split("=", 1)[1] for part in base_dn.split(",")).upper()


@dataclass(frozen=True)
class BrokerKerberos:
    principal: str
    keytab: Path
    realm: str


def broker_kerberos(directory: DirectorySection, realm: str | None) -> BrokerKerberos:
    """The principal, keytab and realm rotation runs as; refuses without gssapi settings."""
    if directory.auth != "gssapi" or directory.keytab is None or directory.principal is None:
        raise UnavailableError(
            "keytab rotation needs the broker's own Kerberos keys",
            fix="set directory.auth = 'gssapi' with directory.principal and directory.keytab",
        )
    return BrokerKerberos(
        directory.principal, directory.keytab, realm or realm_of(directory.base_dn)
    )
