"""TOTP second factor: enroll, activate, verify, status, and the operator's reset.

Every counter is keyed by the caller's objectSid, whatever name form reached
the daemon. Codes travel only in request bodies: the dispatcher refuses a
query string on any POST, and logs never carry one.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from broker.core.errors import RefusedError
from broker.core.identity import normalise_account_name
from broker.daemon.api.names import UserText
from broker.daemon.caller import Access, Caller
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.mfa.model import MfaIdentity
from broker.wire.base import from_domain
from broker.wire.mfa import (
    ActivateOut,
    EnrollOut,
    ResetOut,
    StatusOut,
    VerifyOut,
)

# The shape is checked by broker.mfa (six ASCII digits, nothing normalised); here only the size.
CodeText = Annotated[str, Field(min_length=1, max_length=64)]


class CodeIn(Body):
    code: CodeText


class VerifyIn(Body):
    code: CodeText | None = None
    recovery_code: CodeText | None = None

    @model_validator(mode="after")
    def _one(self) -> VerifyIn:
        if (self.code is None) == (self.recovery_code is None):
            raise ValueError("give exactly one of code and recovery_code")
        return self


class StatusQuery(Body):
    user: UserText | None = None


class ResetIn(Body):
    user: UserText


def own_identity(caller: Caller) -> MfaIdentity:
    if caller.account is None:
        raise RefusedError(
            f"{caller.display} has no directory account to hold a second factor",
            fix="MFA belongs to Active Directory accounts",
        )
    return MfaIdentity(sid=caller.account.sid, name=caller.account.name)


def named_identity(ctx: Context[StatusQuery] | Context[ResetIn], name: str) -> MfaIdentity:
    """A factor belongs to a directory account: resolved by the snapshot only."""
    user = ctx.app.directory().resolve_user(name, ctx.now)
    assert user.sid is not None  # no records fallback: a resolved user is a directory account
    return MfaIdentity(sid=user.sid, name=user.name)


@REGISTRY.add(
    "POST",
    "/v1/mfa/enroll",
    response=EnrollOut,
    access=Access.USER,
    summary="Start enrolling a TOTP factor for yourself: a new secret, pending until activated",
)
def enroll(ctx: Context[Empty]) -> EnrollOut:
    ident = own_identity(ctx.caller)
    mfa = ctx.app.mfa()
    started = mfa.begin_enrollment(ident, actor=ctx.caller.actor, now=ctx.now)
    return EnrollOut(
        account=ident.name, issuer=mfa.rules.issuer, secret=started.secret, uri=started.uri
    )


@REGISTRY.add(
    "POST",
    "/v1/mfa/activate",
    request=CodeIn,
    response=ActivateOut,
    access=Access.USER,
    summary="Activate the pending factor with a valid code; returns 10 recovery codes, once",
)
def activate(ctx: Context[CodeIn]) -> ActivateOut:
    ident = own_identity(ctx.caller)
    codes = ctx.app.mfa().activate(ident, ctx.params.code, actor=ctx.caller.actor, now=ctx.now)
    return ActivateOut(account=ident.name, recovery_codes=codes)


@REGISTRY.add(
    "POST",
    "/v1/mfa/verify",
    request=VerifyIn,
    response=VerifyOut,
    access=Access.USER,
    summary="Check a TOTP code (or use a recovery code); replays and lockout apply",
)
def verify(ctx: Context[VerifyIn]) -> VerifyOut:
    ident = own_identity(ctx.caller)
    mfa = ctx.app.mfa()
    if ctx.params.recovery_code is not None:
        left = mfa.use_recovery_code(
            ident, ctx.params.recovery_code, actor=ctx.caller.actor, now=ctx.now, purpose="check"
        )
        return VerifyOut(account=ident.name, method="recovery", recovery_codes_left=left)
    assert ctx.params.code is not None
    mfa.verify(ident, ctx.params.code, actor=ctx.caller.actor, now=ctx.now, purpose="check")
    return VerifyOut(account=ident.name, method="totp", recovery_codes_left=None)


@REGISTRY.add(
    "GET",
    "/v1/mfa/status",
    request=StatusQuery,
    response=StatusOut,
    access=Access.SELF_OR_OPERATOR,
    summary="Enrollment, lockout and recovery codes left (users: self; operators: anyone)",
)
def status(ctx: Context[StatusQuery]) -> StatusOut:
    if ctx.params.user is None:
        ident = own_identity(ctx.caller)
    elif ctx.caller.operator:
        ident = named_identity(ctx, ctx.params.user)
    else:
        # Decided before any lookup, with one text, so users cannot probe which names exist.
        own = ctx.caller.account
        if own is None or normalise_account_name(ctx.params.user) != own.name:
            raise RefusedError(
                f"{ctx.caller.display} may only see their own MFA status",
                fix="ask a broker operator",
            )
        ident = own_identity(ctx.caller)
    state = ctx.app.mfa().status(ident, ctx.now)
    return from_domain(StatusOut, state, account=ident.name)


@REGISTRY.add(
    "POST",
    "/v1/mfa/reset",
    request=ResetIn,
    response=ResetOut,
    access=Access.OPERATOR,
    summary="Remove a user's factor, recovery codes and lockout (audited)",
)
def reset(ctx: Context[ResetIn]) -> ResetOut:
    ident = named_identity(ctx, ctx.params.user)
    done = ctx.app.mfa().reset(ident, actor=ctx.caller.actor, now=ctx.now)
    return ResetOut(account=ident.name, reset=done)
