"""From kernel or Kerberos identity to the caller the daemon acts for.

A Unix caller is the user whose uid the kernel reports; it counts as a
directory user only when an account of that name exists in the snapshot with
the same uid, so a local account that merely shares an AD name gets nothing.
Kerberos callers are matched by principal within the configured realm.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from broker.core.errors import RefusedError
from broker.core.identity import Account, Snapshot, fold_name

log = logging.getLogger("broker.daemon")

# A sAMAccountName as it appears in a principal: no instance, escape, realm or control mark.
_PRINCIPAL_USER = re.compile(r'^[^\x00-\x1f\x7f\\\\@/"\[\]:;|=,+*?<>]{1,256}$')


class Access(Enum):
    """Who may call a route."""

    ANYONE = "anyone"  # any caller the daemon could identify (health, whoami)
    USER = "user"  # an eligible directory account (self-service: MFA)
    SELF_OR_OPERATOR = "self-or-operator"  # a directory user about themselves, or an operator
    OPERATOR = "operator"  # root or a member of daemon.operator_group


@dataclass(frozen=True)
class Caller:
    """The identified caller of one request."""

    actor: str  # the audit actor: unix:NAME or krb:PRINCIPAL
    unix_name: str | None
    uid: int | None
    principal: str | None
    account: Account | None
    operator: bool
    problem: str | None  # why the caller is not a directory user, when it is not

    @property
    def display(self) -> str:
        return self.actor.split(":", 1)[1]

    def require(self, access: Access) -> None:
        """Refuse a caller that may not use a route of this access level."""
        if access is Access.ANYONE:
            return
        if access is Access.OPERATOR:
            if not self.operator:
                raise RefusedError(
                    f"{self.display} is not a broker operator",
                    fix="run it as root or as a member of daemon.operator_group",
                )
            return
        if access is Access.SELF_OR_OPERATOR and self.operator:
            return
        if self.account is None:
            raise RefusedError(
                f"{self.display} is not a usable directory account: {self.problem}",
                fix="callers must be enabled Active Directory accounts known to `broker sync`",
            )


def unix_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def in_operator_group(name: str | None, uid: int, group: str | None) -> bool:
    """Root and the daemon's own service user always; otherwise members (primary or
    supplementary) of the configured group. The name must resolve back to the same uid:
    when a local and a directory account share a name, neither borrows the other's groups."""
    if uid in (0, os.getuid()):
        return True
    if group is None or name is None:
        return False
    try:
        gid = grp.getgrnam(group).gr_gid
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    if entry.pw_uid != uid:
        return False
    return gid in os.getgrouplist(name, entry.pw_gid)


def directory_account(
    snapshot: Snapshot, name: str, *, uid: int | None
) -> tuple[Account | None, str | None]:
    """The eligible account called `name` (and owning `uid` when given), or why there is none."""
    account = snapshot.account(name)
    if account is None:
        return None, f"no account {name!r} in the directory snapshot"
    if uid is not None and account.uid != uid:
        # Said only in the daemon's log: the caller learns no other account's uid.
        log.info("uid %d uses the name of directory account %s (uid %d)", uid, name, account.uid)
        return None, "the local account is not the directory account of that name"
    if not account.eligible:
        why = account.problem or account.state
        return None, f"the account {account.name} is {why}"
    return account, None


def unix_caller(
    uid: int, snapshot: Snapshot | None, operator_group: str | None, now: datetime
) -> Caller:
    """The caller behind a Unix-socket connection (now is kept for symmetry with state)."""
    del now
    name = unix_name(uid)
    account: Account | None = None
    problem: str | None
    if name is None:
        problem = f"uid {uid} has no user name"
    elif snapshot is None:
        problem = "there is no directory snapshot yet"
    else:
        account, problem = directory_account(snapshot, name, uid=uid)
    return Caller(
        actor=f"unix:{name if name is not None else uid}",
        unix_name=name,
        uid=uid,
        principal=None,
        account=account,
        operator=in_operator_group(name, uid, operator_group),
        problem=problem,
    )


def kerberos_caller(principal: str, realm: str, snapshot: Snapshot | None) -> Caller:
    """The caller behind a SPNEGO-authenticated request; only the broker's own realm counts."""
    user, _, principal_realm = principal.rpartition("@")
    account: Account | None = None
    problem: str | None
    if principal_realm != realm or not _PRINCIPAL_USER.fullmatch(user):
        # Instances (a/b), escaped characters (a backslash, \@, \t) and enterprise names are
        # not users: the exact name is compared, never a normalised form of it.
        problem = f"the principal {principal!r} is not a user of the realm {realm}"
    elif snapshot is None:
        problem = "there is no directory snapshot yet"
    else:
        account, problem = directory_account(snapshot, fold_name(user), uid=None)
    return Caller(
        actor=f"krb:{principal}",
        unix_name=None,
        uid=None,
        principal=principal,
        account=account,
        operator=False,
        problem=problem,
    )
