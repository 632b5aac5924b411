"""mfa: the response records of /v1/mfa routes, read by the daemon and the client."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from broker.wire.base import Out


class EnrollOut(Out):
    account: str
    issuer: str
    secret: str
    uri: str


class ActivateOut(Out):
    account: str
    recovery_codes: list[str]


class VerifyOut(Out):
    account: str
    method: Literal["totp", "recovery"]
    recovery_codes_left: int | None


class StatusOut(Out):
    account: str
    enrolled: bool
    pending: bool
    activated_at: datetime | None
    last_used_at: datetime | None
    recovery_codes_left: int
    locked_until: datetime | None
    recent_failures: int

    @property
    def shown_state(self) -> str:
        """One word for a person: active, pending (enrolled, not yet activated), not enrolled."""
        return "active" if self.enrolled else ("pending" if self.pending else "not enrolled")


class ResetOut(Out):
    account: str
    reset: bool
