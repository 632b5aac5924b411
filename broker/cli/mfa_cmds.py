"""`broker mfa`: your TOTP second factor (enroll, verify, status) and an operator's reset.

Codes are always prompted for (hidden), never taken from the command line,
where `ps` and shell history would keep them.
"""

from __future__ import annotations

import sys

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.errors import RefusedError
from broker.wire.mfa import ActivateOut, EnrollOut, ResetOut, StatusOut, VerifyOut

app = typer.Typer(help="TOTP multi-factor authentication.", no_args_is_help=True)

ATTEMPTS = 3


def _prompt(label: str) -> str:
    """One line from the terminal (hidden) or from stdin when it is not a terminal."""
    if sys.stdin.isatty():
        return str(typer.prompt(label, hide_input=True, err=True))
    output.err().print(f"{label}: ", end="")
    line = sys.stdin.readline()
    if not line:
        raise RefusedError("no code was entered", fix="run the command again and type the code")
    return line.rstrip("\n")


def _show_qr(uri: str) -> None:
    import segno

    qr = segno.make(uri, error="m")
    qr.terminal(out=sys.stdout, compact=True)


@app.command()
def enroll(ctx: typer.Context) -> None:
    """Enroll a TOTP authenticator for yourself: scan the QR code, then type a code to
    activate it. Prints 10 one-time recovery codes, once: store them offline.
    """
    api = client(ctx)
    started = api.post("/v1/mfa/enroll", None, EnrollOut)
    output.say(f"Scan this with your authenticator app ({started.issuer}: {started.account}):")
    _show_qr(started.uri)
    output.say(f"or add it by hand: {started.uri}")
    result: ActivateOut | None = None
    for attempt in range(1, ATTEMPTS + 1):
        code = _prompt("Code from the authenticator (6 digits)")
        try:
            result = api.post("/v1/mfa/activate", {"code": code}, ActivateOut)
            break
        except RefusedError as exc:
            if attempt == ATTEMPTS or "locked" in exc.message:
                raise
            output.warn(f"{exc.message}; try again")
    assert result is not None
    output.say(f"MFA is active for {result.account}.")
    output.say("Recovery codes (each works once; they are not shown again):")
    for code in result.recovery_codes:
        output.say(f"  {code}")


@app.command()
def verify(
    ctx: typer.Context,
    recovery: bool = typer.Option(
        False, "--recovery", help="Use a one-time recovery code instead of a TOTP code."
    ),
) -> None:
    """Check that your authenticator works (a code is used up, as in a real elevation).

    Exit 0 when accepted, 1 when refused (wrong, reused, malformed, locked).
    """
    if recovery:
        code = _prompt("Recovery code")
        result = client(ctx).post("/v1/mfa/verify", {"recovery_code": code}, VerifyOut)
        output.say(
            f"recovery code accepted for {result.account}; {result.recovery_codes_left} left"
        )
        return
    code = _prompt("Code from the authenticator (6 digits)")
    result = client(ctx).post("/v1/mfa/verify", {"code": code}, VerifyOut)
    output.say(f"code accepted for {result.account}")


@app.command()
def status(
    ctx: typer.Context,
    user: str | None = typer.Argument(None, help="Another account (operators only)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Whether MFA is enrolled, when it was last used, lockout, recovery codes left."""
    data = client(ctx).get("/v1/mfa/status", StatusOut, user=user)
    if json_out:
        output.print_json(data)
        return
    rows: list[list[object]] = [
        ["account", data.account],
        ["mfa", data.shown_state],
        ["activated", output.when(data.activated_at)],
        ["last used", output.when(data.last_used_at)],
        ["recovery codes left", data.recovery_codes_left],
        ["failures (window)", data.recent_failures],
        ["locked until", output.when(data.locked_until)],
    ]
    output.table(None, ["", "MFA"], rows)


@app.command()
def reset(
    ctx: typer.Context,
    user: str = typer.Argument(..., help="The account: alice, HPC\\alice or alice@REALM."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove USER's factor, recovery codes and lockout so they can enroll again (operators;
    audited). Do it only after confirming who is asking, out of band.
    """
    if not yes and not typer.confirm(f"Reset MFA for {user}?", err=True):
        raise typer.Exit(1)
    result = client(ctx).post("/v1/mfa/reset", {"user": user}, ResetOut)
    if result.reset:
        output.say(f"MFA reset for {result.account}; they must run `broker mfa enroll`")
    else:
        output.say(f"{result.account} had no MFA enrolled; nothing to reset")
