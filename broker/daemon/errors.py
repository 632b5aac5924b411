"""Errors on the wire: one JSON shape, one HTTP status per kind, never a traceback."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from broker.core.errors import (
    BrokerError,
    ConfigError,
    FailedError,
    RefusedError,
    UnavailableError,
    UsageError,
)

# kind -> HTTP status; the client turns the kind back into the same exception class.
STATUS = {
    "usage": 400,
    "config": 400,
    "unauthorized": 401,
    "refused": 403,
    "not_found": 404,
    "method": 405,
    "length": 411,
    "too_large": 413,
    "media_type": 415,
    "failed": 409,
    "internal": 500,
    "unavailable": 503,
}


class HttpError(Exception):
    """A protocol-level problem with a request (before any handler runs)."""

    def __init__(self, kind: str, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fix = fix


def kind_of(exc: BrokerError) -> str:
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, UsageError):
        return "usage"
    if isinstance(exc, UnavailableError):
        return "unavailable"
    if isinstance(exc, FailedError):
        return "failed"
    if isinstance(exc, RefusedError):
        return "refused"
    return "failed"


def body(kind: str, message: str, fix: str | None) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message, "fix": fix}}


def describe_validation(exc: ValidationError) -> str:
    """One line naming each bad field and what it needs, never the value that was sent."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    return "invalid request: " + "; ".join(parts)
