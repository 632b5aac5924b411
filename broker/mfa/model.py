"""What the MFA flows take and give: identities, rules, status, a new enrollment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.config.settings import MfaSection


@dataclass(frozen=True)
class MfaIdentity:
    """The directory account behind a caller; every counter is keyed by its objectSid."""

    sid: str
    name: str


@dataclass(frozen=True)
class MfaRules:
    issuer: str = "HPC Broker"
    window_steps: int = 1
    max_failures: int = 5
    failure_window: timedelta = timedelta(minutes=15)
    lockout: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, section: MfaSection) -> MfaRules:
        return cls(
            issuer=section.issuer,
            window_steps=section.window_steps,
            max_failures=section.max_failures,
            failure_window=section.failure_window,
            lockout=section.lockout,
        )


@dataclass(frozen=True)
class MfaStatus:
    enrolled: bool
    pending: bool
    activated_at: datetime | None
    last_used_at: datetime | None
    recovery_codes_left: int
    locked_until: datetime | None
    recent_failures: int


@dataclass(frozen=True)
class Enrollment:
    """A new secret and its otpauth:// URI, shown to the user once."""

    secret: str
    uri: str

    def __repr__(self) -> str:
        return "Enrollment(secret=<hidden>, uri=<hidden>)"
