"""One rule for every operator path that names a user: which account `--user TEXT` means.

`broker revoke --user ALICE` once matched nothing and answered "nothing active" while
alice kept root: a spelling the grants table does not hold is not a user without grants.
So every path that names a user (revoke, grants list, sessions list and search, MFA
status and reset) resolves the text here, on the daemon, the same way `broker accounts
show` does, and an unknown user is an error, never an empty answer.

The rule:

1. The text must pass an allow-list (`USER_SPELLING`) before anything reads it.
2. Case, a `DOMAIN\\` prefix and an `@REALM` suffix are folded (`normalise_account_name`),
   so `ALICE`, `HPC\\alice` and `alice@HPC.TEST` all name `alice`; a prefix or suffix
   naming another domain (`LAB\\alice`, `alice@OTHER.ORG`) is refused, since folding it
   away would answer for this domain's alice.
3. An account in the directory snapshot wins: the user is that account (its objectSid and
   its cluster account name), whatever name its old grants were issued under.
4. Otherwise, where the path allows it, a user who has left the directory is found by the
   folded name exactly as the broker's own records (grants, sessions) hold it, so the
   grants of an account already deleted from AD can still be revoked and its sessions
   listed. Names in those records are cluster account names, lower-case, so folding
   cannot reach a different user than the exact name would.
5. Anything else is refused with one line naming how to find the right name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from broker.core.errors import BadRequestError, RefusedError
from broker.core.identity import Snapshot, normalise_account_name

# An optional NetBIOS domain and backslash, the cluster account name (POSIX portable,
# any case: it is folded), an optional @realm. Only these ever reach a lookup.
USER_SPELLING = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,62}\\)?"
    r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"
    r"(?:@[A-Za-z0-9][A-Za-z0-9.-]{0,252})?"
)
USER_SPELLING_MAX = 64 + 32 + 254


@dataclass(frozen=True)
class Domain:
    """The directory's own names, which a `DOMAIN\\` prefix and an `@REALM` suffix must
    match (ignoring case)."""

    netbios: str  # HPC
    realm: str  # HPC.TEST

    def require_own(self, text: str) -> None:
        """Refuse a spelling whose prefix or suffix names another domain."""
        prefix, _, rest = text.rpartition("\\")
        suffix = rest.partition("@")[2]
        for given, own in ((prefix, self.netbios), (suffix, self.realm)):
            if given and given.upper() != own.upper():
                raise RefusedError(
                    f"{text[:100]!r} names an account of domain {given[:64]!r}; this broker's directory"
                    f" is {self.netbios} ({self.realm})",
                    fix=f"name the user as alice, {self.netbios}\\alice or alice@{self.realm}",
                )


@dataclass(frozen=True)
class NamedUser:
    """The user an operator named: a directory account, or a departed user's recorded name."""

    name: str  # the cluster account name (grants, sessions and sudo know users by it)
    sid: str | None = None  # objectSid; None when only the broker's records know the name

    @property
    def in_directory(self) -> bool:
        return self.sid is not None


def check_spelling(text: str) -> str:
    """The text if the allow-list admits it; refused (exit 1) before any lookup otherwise."""
    if len(text) > USER_SPELLING_MAX or not USER_SPELLING.fullmatch(text):
        raise BadRequestError(
            "a user is named as alice, HPC\\alice or alice@HPC.TEST (letters, digits, . _ -)",
            fix="see `broker accounts list` for the account names",
        )
    return text


def resolve_user(
    text: str,
    snapshot: Snapshot,
    recorded: Callable[[str], bool] | None = None,
    domain: Domain | None = None,
) -> NamedUser:
    """The account `text` names (see the module's rule); `recorded` says whether the broker's
    own records hold a name, for users who have left the directory (None: directory only)."""
    check_spelling(text)
    if domain is not None:
        domain.require_own(text)
    name = normalise_account_name(text)
    account = snapshot.account(name)
    if account is not None:
        return NamedUser(account.name, account.sid)
    if recorded is not None and recorded(name):
        return NamedUser(name)
    where = "the directory snapshot" + ("" if recorded is None else " or the broker's records")
    raise RefusedError(
        f"no user {text!r} in {where}",
        fix="find the account name with `broker accounts list`, "
        "or run `broker sync` if the account is new in Active Directory",
    )
