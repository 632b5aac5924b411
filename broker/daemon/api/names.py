"""Allow-listed text types shared by request models: nothing unchecked reaches a lookup."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictStr

from broker.core.timeutil import from_text, to_text
from broker.core.users import USER_SPELLING, USER_SPELLING_MAX

# alice, HPC\alice, alice@HPC.TEST: letters, digits and the few marks AD names use.
# What AD allows in a sAMAccountName (no control characters, none of "/[]:;|=,+*?<>),
# plus the backslash and @ of the DOMAIN\name and name@REALM forms. Only ever a bound SQL value.
AccountName = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r'^[^\x00-\x1f\x7f"/\[\]:;|=,+*?<>]+$')
]
# A user on the paths that resolve one (revoke, grants, sessions, MFA): the allow-list of
# broker.core.users, checked again there; the daemon resolves it against the snapshot.
UserText = Annotated[
    str, Field(min_length=1, max_length=USER_SPELLING_MAX, pattern=f"^{USER_SPELLING.pattern}$")
]
GroupName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
RoleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
DurationText = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9a-z]+$")]
HostlistText = Annotated[
    str, Field(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9.,\[\]-]+$")
]


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must be printable text (no control or format characters)")
    return text


def _moment(value: str) -> str:
    """A real moment, in the store's own text form (so text comparison is time order)."""
    try:
        return to_text(from_text(value))
    except ValueError:
        raise ValueError("not a valid UTC time") from None


# Time filters: a UTC timestamp (the CLI turns `2h` into one), rewritten as the store writes
# its times, so `2026-12-07T10:00:00Z` and `...00.5Z` compare with stored text as times do.
UtcTimeText = Annotated[
    str,
    Field(
        min_length=20,
        max_length=27,
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z$",
    ),
    AfterValidator(_moment),
]
# An SQLite GLOB over dotted lower-case action names: `store.*`, `policy.appl?`, `mfa.[a-f]*`.
ActionGlob = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.*?\[\]^-]+$")]
# unix:root, unix:1234, krb:alice@HPC.TEST, daemon.
AuditActor = Annotated[
    str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._@:/\\$+-]+$")
]
# Where a policy text came from (a file name on the caller's side): shown, stored, never opened.
SourceText = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_printable)]
# A policy file's text; the daemon's max_body bounds the whole request as well.
POLICY_TEXT_MAX = 1_048_576
PolicyText = Annotated[StrictStr, Field(min_length=0, max_length=POLICY_TEXT_MAX)]
