"""Service tickets for verification: the broker asks the KDC, as itself, for a ticket to
each principal and hands the initiator token to the node, which must accept it with its
keytab. A fresh in-memory ticket cache per check, so a ticket cached under the previous
key version is never what gets verified."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import gssapi
import gssapi.raw

from broker.core.errors import UnavailableError


def tokens_for(principals: Sequence[str], *, client: str, keytab: Path) -> dict[str, str | None]:
    """principal -> base64 initiator token (None when the KDC would not issue a ticket).

    Raises UnavailableError when the broker cannot get its own credentials (KDC down,
    keytab unreadable)."""
    ccache = f"MEMORY:broker-keytab-verify-{secrets.token_hex(8)}"
    try:
        creds = gssapi.Credentials(
            name=gssapi.Name(client, gssapi.NameType.kerberos_principal),
            usage="initiate",
            store={"client_keytab": str(keytab), "ccache": ccache},
        )
        creds.lifetime  # noqa: B018  (acquires the TGT now: KDC problems surface here)
    except gssapi.raw.GSSError as exc:
        raise UnavailableError(
            f"cannot get the broker's Kerberos credentials as {client} ({_text(exc)})",
            fix="check the KDC is reachable and directory.keytab holds the broker's keys",
        ) from None
    tokens: dict[str, str | None] = {}
    for principal in principals:
        try:
            context = gssapi.SecurityContext(
                name=gssapi.Name(principal, gssapi.NameType.kerberos_principal),
                creds=creds,
                usage="initiate",
                mech=gssapi.MechType.kerberos,
            )
            token = context.step()
        except gssapi.raw.GSSError:
            tokens[principal] = None
            continue
        tokens[principal] = base64.b64encode(token or b"").decode("ascii")
    return tokens


def _text(exc: gssapi.raw.GSSError) -> str:
    return " ".join(exc.gen_message().split())[:200]


# principals -> a base64 GSS-API token for each (None: the KDC issued none)
TokenSource = Callable[[Sequence[str]], Mapping[str, str | None]]


def verify_tokens_source(client: str, keytab: Path) -> TokenSource:
    """The real token source: the broker's own credentials from its keytab."""

    def source(principals: Sequence[str]) -> Mapping[str, str | None]:
        return tokens_for(principals, client=client, keytab=keytab)

    return source
