"""Who exists in the directory, as the rest of the broker sees it. Pure types and rules, no I/O.

The directory adapter fills these from Active Directory; the policy engine,
`broker accounts` and (later) grants only ever read them. Account state is
computed from the raw AD attributes and a point in time, because an account
can expire or leave lockout without anything changing in the directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

AccountState = Literal["enabled", "disabled", "expired", "locked", "deleted"]
STATES: tuple[AccountState, ...] = ("enabled", "disabled", "expired", "locked", "deleted")

UF_ACCOUNTDISABLE = 0x0002
# accountExpires: 0 and 0x7FFFFFFFFFFFFFFF both mean "never".
NEVER = 0x7FFFFFFFFFFFFFFF
_NT_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)

# sAMAccountName as the broker accepts it for a cluster account: it becomes a Unix
# user name in sudoers and paths, so the allow-list is the POSIX portable one.
ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# AD group names as policy may name them: no spaces, commas or quotes, because they
# are written into sudoers comments, audit targets and LDAP filters (escaped there too).
GROUP_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.-]{0,62}[A-Za-z0-9_.-])?$")


def nt_time_to_datetime(value: int) -> datetime | None:
    """AD's 100 ns ticks since 1601 (FILETIME) as UTC; None for 0 and 'never'."""
    if value <= 0 or value >= NEVER:
        return None
    try:
        return _NT_EPOCH + timedelta(microseconds=value // 10)
    except OverflowError:
        return None


def datetime_to_nt_time(moment: datetime) -> int:
    return int((moment - _NT_EPOCH) / timedelta(microseconds=1)) * 10


def account_state(
    *,
    user_account_control: int,
    expires_at: datetime | None,
    locked_until: datetime | None,
    deleted: bool,
    now: datetime,
) -> AccountState:
    """The one state that decides eligibility; the most severe wins."""
    if deleted:
        return "deleted"
    if user_account_control & UF_ACCOUNTDISABLE:
        return "disabled"
    if expires_at is not None and expires_at <= now:
        return "expired"
    if locked_until is not None and locked_until > now:
        return "locked"
    return "enabled"


def lockout_end(lockout_time: datetime | None, duration: timedelta | None) -> datetime | None:
    """When a lockout ends; `duration` None means until an administrator unlocks it."""
    if lockout_time is None:
        return None
    if duration is None:
        return datetime.max.replace(tzinfo=UTC)
    return lockout_time + duration


@dataclass(frozen=True)
class Account:
    """One directory user as the snapshot holds it."""

    name: str  # sAMAccountName, lower-cased
    upn: str | None
    sid: str
    dn: str
    uid: int  # -1 when it cannot be mapped (then `problem` says why)
    gid: int
    # Group names (sAMAccountName) lower-cased, since AD compares them case-insensitively:
    groups: frozenset[str]  # every group the account is in, transitively
    direct_groups: frozenset[str]
    state: AccountState
    last_logon: datetime | None
    created: datetime | None
    expires_at: datetime | None = None
    locked_until: datetime | None = None
    service_principals: tuple[str, ...] = field(default=())
    problem: str | None = None  # why the account can never be a cluster account

    @property
    def eligible(self) -> bool:
        """Only an enabled account that can be a Unix user may hold or use any right."""
        return self.state == "enabled" and self.problem is None

    def stale(self, now: datetime, after: timedelta) -> bool:
        """No logon in `after` (an account never used counts from its creation)."""
        seen = self.last_logon or self.created
        return seen is None or now - seen > after


@dataclass(frozen=True)
class Group:
    name: str  # as AD spells it; looked up case-insensitively
    sid: str
    dn: str
    gid: int
    members: int  # how many accounts are in it, transitively


class Snapshot(Protocol):
    """What the directory snapshot offers to policy, accounts and grants."""

    def account(self, name: str) -> Account | None: ...

    def accounts(self) -> Iterable[Account]: ...

    def group(self, name: str) -> Group | None: ...

    def groups(self) -> Iterable[Group]: ...


@dataclass(frozen=True)
class MemorySnapshot:
    """A snapshot held in memory: for pure tests and for plans against a fixed view."""

    by_name: dict[str, Account]
    group_by_name: dict[str, Group]

    @classmethod
    def of(cls, accounts: Iterable[Account], groups: Iterable[Group] = ()) -> MemorySnapshot:
        return cls({a.name: a for a in accounts}, {g.name.lower(): g for g in groups})

    def account(self, name: str) -> Account | None:
        return self.by_name.get(normalise_account_name(name))

    def accounts(self) -> Iterable[Account]:
        return self.by_name.values()

    def group(self, name: str) -> Group | None:
        return self.group_by_name.get(name.lower())

    def groups(self) -> Iterable[Group]:
        return self.group_by_name.values()


def fold_name(name: str) -> str:
    """Lower-case an ASCII name, as AD compares them; leave any other name exactly as it is.

    Unicode lower-casing maps look-alikes onto ASCII (KELVIN SIGN -> k), which would
    let `\u212a8s-admins` pass for `k8s-admins`; allow-lists are ASCII, so an unfolded
    non-ASCII name simply never matches one.
    """
    return name.lower() if name.isascii() else name


def normalise_account_name(text: str) -> str:
    """`Alice`, `HPC\\alice` and `alice@HPC.TEST` all name the account `alice`."""
    name = text.strip()
    if "\\" in name:
        name = name.split("\\", 1)[1]
    if "@" in name:
        name = name.split("@", 1)[0]
    return fold_name(name)


ChangeKind = Literal[
    "user.added",
    "user.deleted",
    "user.renamed",
    "user.state",
    "membership.added",
    "membership.removed",
]


@dataclass(frozen=True)
class AccessChange:
    """A directory change that can alter who may hold which right (grants subscribe to these)."""

    kind: ChangeKind
    user: str  # the account name (after the change, or the last known one)
    user_sid: str
    group: str | None = None
    before: str | None = None
    after: str | None = None

    @property
    def action(self) -> str:
        return f"directory.{self.kind}"

    @property
    def revokes(self) -> bool:
        """True when rights may have been lost: grants of this user must be re-checked."""
        if self.kind in ("user.deleted", "membership.removed", "user.renamed"):
            return True
        return self.kind == "user.state" and self.after != "enabled"
