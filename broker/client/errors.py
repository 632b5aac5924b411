"""Turn the daemon's error bodies back into the broker's own exceptions (and exit codes)."""

from __future__ import annotations

from typing import Any

from broker.core.errors import (
    BadRequestError,
    BrokerError,
    ConfigError,
    FailedError,
    RefusedError,
    TooLargeError,
    UnavailableError,
)

_KINDS: dict[str, type[BrokerError]] = {
    "usage": BadRequestError,
    "config": ConfigError,
    "refused": RefusedError,
    "unauthorized": RefusedError,
    "not_found": BadRequestError,
    "method": BadRequestError,
    "length": BadRequestError,
    "too_large": TooLargeError,
    "media_type": BadRequestError,
    "failed": FailedError,
    "internal": FailedError,
    "unavailable": UnavailableError,
}


def from_response(status: int, data: Any) -> BrokerError:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return FailedError(f"the broker daemon answered HTTP {status} without an error body")
    kind = error.get("kind")
    cls = _KINDS.get(kind, FailedError) if isinstance(kind, str) else FailedError
    fix = error.get("fix")
    return cls(error["message"], fix=fix if isinstance(fix, str) else None)
