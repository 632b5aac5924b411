"""Field types and checks the configuration sections share (settings.py, notify.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from broker.core.durations import parse_duration
from broker.core.errors import UsageError


class Section(BaseModel):
    """A configuration section: unknown keys are refused (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a duration string such as 10s, 30m, 1h30m")
    try:
        return parse_duration(value)
    except UsageError as exc:
        raise ValueError(exc.one_line()) from exc


def _within(low: timedelta, high: timedelta, words: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if not low <= value <= high:
            raise ValueError(f"must be between {words}")
        return value

    return AfterValidator(check)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
# A network wait (connect, send, the peer's answer): long enough for a slow receiver, short
# enough that a dead one never stalls the thread that sends.
Timeout = Annotated[
    timedelta,
    BeforeValidator(_duration),
    _within(timedelta(seconds=1), timedelta(minutes=5), "1s and 5m"),
]
# The first wait before a retry (it doubles with every attempt).
Backoff = Annotated[
    timedelta,
    BeforeValidator(_duration),
    _within(timedelta(seconds=1), timedelta(minutes=15), "1s and 15m"),
]
AbsPath = Annotated[Path, BeforeValidator(lambda v: _absolute_path(v))]


def _absolute_path(value: object) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("expected an absolute path")
    path = Path(value)
    if not path.is_absolute() or "\x00" in str(value):
        raise ValueError("expected an absolute path")
    return path


def webhook_url_problem(value: str) -> str | None:
    """Why `value` is no acceptable webhook URL, in words that never repeat the URL itself
    (it could carry a password or token, and errors end up in logs)."""
    if not value.isascii() or not value.isprintable() or " " in value:
        return "webhook_url must be a plain ASCII URL without spaces or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "webhook_url is not a valid URL (check the host and port)"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "webhook_url must be an http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return (
            "webhook_url must not carry a user name or password; "
            "the webhook is authenticated by the HMAC key in webhook_secret_file"
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return (
            "webhook_url must not carry a query or fragment (tokens there leak into logs); "
            "the webhook is authenticated by the HMAC key in webhook_secret_file"
        )
    if port == 0:
        return "webhook_url has port 0"
    return None


def refuse_webhook_url(data: object) -> object:
    """A section's raw `webhook_url` checked before parsing, so that a refused URL (it may
    carry a token) is never echoed in the configuration error (the loader names the section)."""
    if isinstance(data, dict) and isinstance(data.get("webhook_url"), str):
        problem = webhook_url_problem(data["webhook_url"])
        if problem is not None:
            raise ValueError(problem)
    return data


def _trusted_keys(value: list[Path]) -> list[Path]:
    # 7: nodes accept at most 8 grant keys (pam/src/bk_contract.h), this broker's and 7 more.
    if len(value) > 7:
        raise ValueError("at most 7 other brokers' keys (nodes accept 8 keys in all)")
    if len(set(value)) != len(value):
        raise ValueError("a path is listed twice")
    return value


# Other brokers' public keys (PEM files copied from them): the list is checked here, each
# file when it is used (broker/core/pubkeys.py: owner, mode, an Ed25519 key, not our own).
TrustedKeys = Annotated[list[AbsPath], AfterValidator(_trusted_keys)]
