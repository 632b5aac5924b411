"""Active Directory side of rotation, over LDAPS with the broker's own credentials.

Reads an account's DN, key version (msDS-KeyVersionNumber), UPN and SPNs; resets
its password (`unicodePwd`, which AD accepts only over an encrypted connection);
creates an account with its SPNs. LDAP results are translated here into one line
that never carries the password: ldap3 runs with raise_exceptions=False and only
the DC's result code, description and message are read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from broker.config.settings import DirectorySection
from broker.core.errors import RefusedError, UnavailableError
from broker.directory import connection
from broker.keytabs.keys import Secret

UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
UF_DONT_EXPIRE_PASSWD = 0x10000
AES_ONLY = 0x18  # msDS-SupportedEncryptionTypes: AES128 | AES256
_PASSWORD_RESULTS = {19: "constraint violation", 53: "unwilling to perform"}
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,19}$")  # sAMAccountName: 20 at most
_OU = re.compile(
    r"^(?:(?:OU|CN)=[A-Za-z0-9 ._-]{1,64},)+(?:DC=[A-Za-z0-9-]{1,63},)*DC=[A-Za-z0-9-]{1,63}$"
)


@dataclass(frozen=True)
class AdAccount:
    dn: str
    account: str
    kvno: int
    upn: str | None
    spns: tuple[str, ...]
    disabled: bool


class PasswordNotSet(RefusedError):
    """AD answered the password change with an error: it is certainly not applied (unlike
    a connection lost mid-request, which leaves the outcome unknown)."""


class PasswordRefused(PasswordNotSet):
    """AD refused the new password (length, complexity, history, minimum age)."""


class Directory(Protocol):
    """What rotation needs from AD; `LdapDirectory` is the real one, tests use fakes."""

    def lookup(self, account: str) -> AdAccount | None: ...

    def set_password(self, account: AdAccount, password: Secret) -> None: ...

    def create(self, account: str, spns: Sequence[str], ou: str, password: Secret) -> AdAccount: ...

    def close(self) -> None: ...


def check_account(name: str) -> str:
    if not _ACCOUNT.fullmatch(name):
        raise RefusedError(
            f"{name[:40]!r} is not a sAMAccountName (letters, digits, ._-; 20 at most)"
        )
    return name


def check_ou(dn: str) -> str:
    if not _OU.fullmatch(dn):
        raise RefusedError(
            f"keytabs.accounts_ou {dn[:80]!r} is not an OU DN such as OU=Services,DC=hpc,DC=example"
        )
    return dn


class LdapDirectory:
    """One writable LDAPS (or StartTLS) connection, bound with the broker's keytab."""

    def __init__(self, cfg: DirectorySection) -> None:
        self._cfg = cfg
        self._conn: ldap3.Connection | None = None

    def _connection(self) -> ldap3.Connection:
        if self._conn is None:
            self._conn, _info = connection.connect(self._cfg, writable=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            connection.discard(self._conn)
            self._conn = None

    def _result(self, what: str) -> tuple[int, str]:
        conn = self._connection()
        result = conn.result or {}
        code = int(result.get("result", -1))
        text = " ".join(f"{result.get('description', '')}: {result.get('message', '')}".split())
        return code, f"{what}: {text[:200]}"

    def lookup(self, account: str) -> AdAccount | None:
        check_account(account)
        conn = self._connection()
        query = f"(&(objectClass=user)(sAMAccountName={escape_filter_chars(account)}))"
        try:
            ok = conn.search(
                self._cfg.base_dn,
                query,
                attributes=[
                    "sAMAccountName",
                    "msDS-KeyVersionNumber",
                    "userPrincipalName",
                    "servicePrincipalName",
                    "userAccountControl",
                ],
                size_limit=2,
            )
        except ldap_errors.LDAPException as exc:
            self.close()
            raise UnavailableError(f"AD: cannot look up {account} ({type(exc).__name__})") from None
        if not ok:
            code, text = self._result(f"looking up {account}")
            if code in (0, 32):
                return None
            self.close()
            raise UnavailableError(f"AD {text}")
        entries = conn.response or []
        found = [e for e in entries if e.get("type") == "searchResEntry"]
        if not found:
            return None
        if len(found) > 1:
            raise RefusedError(f"AD has two accounts named {account}")
        attrs: dict[str, Any] = found[0]["attributes"]
        uac = int(_one(attrs.get("userAccountControl")) or 0)
        kvno = _one(attrs.get("msDS-KeyVersionNumber"))
        if kvno is None:
            raise RefusedError(
                f"cannot read msDS-KeyVersionNumber of {account}",
                fix="the broker's account must be able to read it (Authenticated Users can by default)",
            )
        upn = _one(attrs.get("userPrincipalName"))
        spns = attrs.get("servicePrincipalName") or []
        if isinstance(spns, str | bytes):
            spns = [spns]
        spns = [s.decode("utf-8", "replace") if isinstance(s, bytes) else s for s in spns]
        return AdAccount(
            dn=str(found[0]["dn"]),
            account=str(_one(attrs.get("sAMAccountName")) or account),
            kvno=int(kvno),
            upn=str(upn) if upn else None,
            spns=tuple(str(s) for s in spns),
            disabled=bool(uac & UF_ACCOUNTDISABLE),
        )

    def set_password(self, account: AdAccount, password: Secret) -> None:
        """Reset the password (`unicodePwd` replace, quoted UTF-16LE)."""
        conn = self._connection()
        value = f'"{password.reveal()}"'.encode("utf-16-le")
        try:
            ok = conn.modify(account.dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]})
        except ldap_errors.LDAPException as exc:
            self.close()
            raise UnavailableError(
                f"AD: the password change of {account.account} was not confirmed "
                f"({type(exc).__name__})"
            ) from None
        finally:
            del value
        if ok:
            return
        code, text = self._result(f"setting the password of {account.account}")
        if code in _PASSWORD_RESULTS:
            raise PasswordRefused(
                f"AD refused the new password ({text})",
                fix="check the domain's password policy (length, history, minimum age) for the account",
            )
        if code == 50:
            raise PasswordNotSet(
                f"AD {text}",
                fix="delegate Reset Password on the account's OU to the broker's account",
            )
        raise PasswordNotSet(f"AD {text}", fix="retried with backoff; see `broker keytab status`")

    def create(self, account: str, spns: Sequence[str], ou: str, password: Secret) -> AdAccount:
        """A new, enabled AES-only account with its SPNs and `password`."""
        check_account(account)
        dn = f"CN={escape_rdn(account)},{check_ou(ou)}"
        conn = self._connection()
        attrs: dict[str, str | list[str]] = {
            "sAMAccountName": account,
            "userAccountControl": str(
                UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE | UF_DONT_EXPIRE_PASSWD
            ),
            "msDS-SupportedEncryptionTypes": str(AES_ONLY),
        }
        if spns:
            attrs["servicePrincipalName"] = list(spns)
        if not conn.add(dn, ["top", "person", "organizationalPerson", "user"], attrs):
            code, text = self._result(f"creating {account}")
            if code == 50:
                raise RefusedError(
                    f"AD {text}",
                    fix=f"delegate creating user objects in {ou} to the broker's account",
                )
            raise RefusedError(f"AD {text}")
        created = AdAccount(dn, account, 0, None, tuple(spns), True)
        self.set_password(created, password)
        enabled = str(UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD)
        if not conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [enabled])]}):
            _code, text = self._result(f"enabling {account}")
            raise RefusedError(f"AD {text}")
        found = self.lookup(account)
        if found is None:
            raise UnavailableError(f"AD: {account} was created but cannot be read back")
        return found


def _one(value: object) -> Any:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
