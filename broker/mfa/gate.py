"""The MFA service as the daemon and the other services see it: the flows of service.py
over one store, the sealing key and the configured rules, so no caller carries the key
or the rules around. The key is loaded on first use: status and reset never need it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.core.errors import RefusedError
from broker.core.identity import Account
from broker.core.timeutil import utcnow
from broker.mfa import service
from broker.mfa.model import Enrollment, MfaIdentity, MfaRules, MfaStatus
from broker.store.db import Store


class MfaService:
    def __init__(self, store: Store, key: Callable[[], bytes], rules: MfaRules) -> None:
        self._store = store
        self._key = key
        self.rules = rules

    def begin_enrollment(self, ident: MfaIdentity, *, actor: str, now: datetime) -> Enrollment:
        return service.begin_enrollment(
            self._store, key=self._key(), ident=ident, rules=self.rules, actor=actor, now=now
        )

    def activate(self, ident: MfaIdentity, code: str, *, actor: str, now: datetime) -> list[str]:
        return service.activate(
            self._store,
            key=self._key(),
            ident=ident,
            code=code,
            rules=self.rules,
            actor=actor,
            now=now,
        )

    def verify(
        self, ident: MfaIdentity, code: str, *, actor: str, now: datetime, purpose: str
    ) -> int:
        return service.verify(
            self._store,
            key=self._key(),
            ident=ident,
            code=code,
            rules=self.rules,
            actor=actor,
            now=now,
            purpose=purpose,
        )

    def use_recovery_code(
        self, ident: MfaIdentity, code: str, *, actor: str, now: datetime, purpose: str
    ) -> int:
        return service.use_recovery_code(
            self._store,
            ident=ident,
            code=code,
            rules=self.rules,
            actor=actor,
            now=now,
            purpose=purpose,
        )

    def status(self, ident: MfaIdentity, now: datetime) -> MfaStatus:
        return service.status(self._store.conn, ident=ident, now=now, rules=self.rules)

    def reset(self, ident: MfaIdentity, *, actor: str, now: datetime) -> bool:
        return service.reset(self._store, ident=ident, actor=actor, now=now)

    def require(self, account: Account, code: str | None, purpose: str, actor: str) -> None:
        """Accept a TOTP code of `account` once, or refuse (counted, audited, maybe locking):
        the second factor grants, approvals and quarantine ask for."""
        if code is None:
            raise RefusedError(
                f"{purpose} needs a TOTP code from {account.name}",
                fix="enter the current code of your authenticator (enroll: `broker mfa enroll`)",
            )
        self.verify(
            MfaIdentity(sid=account.sid, name=account.name),
            code,
            actor=actor,
            now=utcnow(),
            purpose=purpose,
        )
