"""The `[audit] forward*` keys: where every audit event is sent live as RFC 5424 syslog.

Kept out of settings.py (which `AuditSection` there inherits from this) so that module
stays within its size limit; the keys still live in the `[audit]` table of broker.toml.

The target is parsed here once, against allow-lists, so the forwarder never sees a
string it has to interpret: a Unix socket path of plain characters, or a DNS name /
IPv4 address and a port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.config.fields import AbsPath, Timeout
from broker.core.syslog import FACILITIES

_PATH = re.compile(r"^/[A-Za-z0-9_.@+-]+(?:/[A-Za-z0-9_.@+-]+)*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\d{{1,3}}(?:\.\d{{1,3}}){{3}})$")
# RFC 5424 APP-NAME: 1-48 printable US-ASCII characters; we allow the safe subset.
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
USAGE = 'audit.forward must be "unix:/PATH", "tcp://HOST:PORT" or "tls://HOST:PORT"'


@dataclass(frozen=True)
class ForwardTarget:
    """A parsed `audit.forward`: `unix` (a local socket path) or `tcp`/`tls` to host:port."""

    kind: Literal["unix", "tcp", "tls"]
    path: Path | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return (
            f"unix:{self.path}" if self.kind == "unix" else f"{self.kind}://{self.host}:{self.port}"
        )


def parse_target(value: str) -> ForwardTarget:
    """The target `value` names; ValueError (never echoing the value) when it is not one
    of the three allowed forms."""
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not _PATH.fullmatch(path) or "/../" in path + "/" or "/./" in path + "/":
            raise ValueError(USAGE + " (the path: absolute, letters, digits, _ . @ + -)")
        return ForwardTarget("unix", path=Path(path))
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if (
        not sep
        or scheme not in ("tcp", "tls")
        or not colon
        or not _HOST.fullmatch(host)
        or not port.isdigit()
        or len(port) > 5
        or not 0 < int(port) < 65536
    ):
        raise ValueError(USAGE)
    return ForwardTarget("tls" if scheme == "tls" else "tcp", host=host, port=int(port))


class ForwardFields(BaseModel):
    """Live forwarding of the audit chain to a SIEM (docs/audit.md, "Forwarding to a SIEM");
    off unless `forward` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    forward: str | None = None
    # TLS only: the CA bundle that signed the receiver's certificate (default: system CAs).
    forward_ca_file: AbsPath | None = None
    forward_app_name: str = "broker-audit"
    forward_facility: str = "authpriv"
    # Events per send; a backlog (after an outage) goes out in batches of this size.
    forward_batch: int = Field(default=500, ge=1, le=5000)
    # Connect, send and the receiver's close each end after this long.
    forward_timeout: Timeout = timedelta(seconds=5)
    # The wait after a failed send; it doubles with every failure, up to 5 minutes (so it is
    # bounded as a network wait is, 1s to 5m).
    forward_backoff: Timeout = timedelta(seconds=1)
    # Longest message sent; a longer one has its MSG (the details) cut and says so in its
    # structured data. rsyslog takes 8 KiB by default ($MaxMessageSize).
    forward_max_bytes: int = Field(default=8192, ge=1024, le=65536)

    @field_validator("forward")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None:
            parse_target(value)
        return value

    @field_validator("forward_app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not _APP_NAME.fullmatch(value):
            raise ValueError("expected 1-48 letters, digits, _ . - (an RFC 5424 APP-NAME)")
        return value

    @field_validator("forward_facility")
    @classmethod
    def _facility(cls, value: str) -> str:
        if value not in FACILITIES:
            raise ValueError(f"expected one of {', '.join(sorted(FACILITIES))}")
        return value

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> ForwardFields:
        target = self.forward_target
        if self.forward_ca_file is not None and (target is None or target.kind != "tls"):
            raise ValueError('audit.forward_ca_file is only used with forward = "tls://HOST:PORT"')
        return self

    @property
    def forward_target(self) -> ForwardTarget | None:
        """The parsed target, or None when forwarding is off."""
        return None if self.forward is None else parse_target(self.forward)
