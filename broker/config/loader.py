"""Find, read and validate broker.toml; errors name the key, the value and what is expected."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.config.settings import Settings
from broker.core.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/broker/broker.toml")
ENV_VAR = "BROKER_CONFIG"


def config_path(explicit: Path | None) -> Path:
    """--config wins, then $BROKER_CONFIG, then /etc/broker/broker.toml."""
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_CONFIG


def load_settings(path: Path) -> Settings:
    """Read and validate one configuration file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration file at {path}",
            fix="copy deploy/examples/broker.toml there, or pass --config FILE or set BROKER_CONFIG",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return settings_from_dict(data, source=str(path))


def settings_from_dict(data: dict[str, Any], *, source: str) -> Settings:
    """Validate parsed TOML; every problem becomes one line naming the key path."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc


def _describe(err: Any) -> str:
    key = _key_path(err.get("loc", ()))
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against deploy/examples/broker.toml)"
    if err.get("type") == "missing":
        return f"{key}: required key is missing"
    value = err.get("input")
    # A refused store.url may hold a password (the reason it was refused): never echoed.
    if not isinstance(value, str | int | float | bool) or key == "store.url":
        return f"{key}: {message}" if key else message
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{key} = {shown}: {message}" if key else message


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
