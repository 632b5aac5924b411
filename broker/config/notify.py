"""The [notify] section: who hears about elevation requests, and how.

A new request goes to the role's approvers, a decision or expiry to the requester, by a
signed webhook (Standard Webhooks headers, or a Slack/Teams `text` payload) and by email
over SMTP with STARTTLS. Email addresses come from a per-site mapping: the directory
snapshot holds no `mail` attribute, so an account's address is its UPN, or its name at
`email_domain`, unless `email_addresses` names it explicitly.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from broker.config.fields import AbsPath, Backoff, Section, Timeout, refuse_webhook_url

# An allow-list, not RFC 5322: a dot-atom local part and a DNS host name, ASCII only, so no
# address can carry a header break, a comment or a second recipient.
EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")


def email_problem(value: str) -> str | None:
    """Why `value` is not an address the broker sends to (None when it is)."""
    if len(value) > 254 or not EMAIL.match(value):
        return "expected a plain address such as alice@example.org"
    return None


class NotifySection(Section):
    """Approver and requester notifications; nothing is sent unless a channel is set."""

    webhook_url: str | None = None
    webhook_secret_file: AbsPath | None = None
    webhook_ca_file: AbsPath | None = None
    # "standard": a JSON event signed with the Standard Webhooks headers; "slack": the same
    # headers around `{"text": ...}`, which Slack and Teams incoming webhooks accept.
    webhook_format: Literal["standard", "slack"] = "standard"
    webhook_timeout: Timeout = timedelta(seconds=5)

    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_from: str | None = None
    smtp_username: str | None = None
    smtp_password_file: AbsPath | None = None
    # Extra CA bundle for the SMTP server's certificate, on top of the system's CAs.
    smtp_ca_file: AbsPath | None = None
    smtp_timeout: Timeout = timedelta(seconds=10)

    # Where an account's mail goes: its UPN, or NAME@email_domain; email_addresses wins.
    email_from: Literal["upn", "domain"] = "upn"
    email_domain: str | None = None
    email_addresses: dict[str, str] = Field(default_factory=dict)

    attempts: int = Field(default=12, ge=1, le=1000)
    # The wait before the first retry; it doubles with every attempt, up to 15 minutes.
    backoff: Backoff = timedelta(seconds=5)

    @model_validator(mode="before")
    @classmethod
    def _url(cls, data: object) -> object:
        return refuse_webhook_url(data)

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.match(value):
            raise ValueError("smtp_host must be a host name or address")
        return value

    @field_validator("smtp_from", "email_domain")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        probe = value if "@" in value else f"x@{value}"
        if email_problem(probe) is not None:
            raise ValueError("expected a plain address (smtp_from) or domain (email_domain)")
        return value

    @field_validator("email_addresses")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for account, address in value.items():
            if not _ACCOUNT.match(account):
                raise ValueError(f"email_addresses: {account!r} is not an account name")
            if email_problem(address) is not None:
                raise ValueError(f"email_addresses.{account}: expected a plain address")
        return value

    @model_validator(mode="after")
    def _complete(self) -> NotifySection:
        if self.webhook_url is not None and self.webhook_secret_file is None:
            raise ValueError(
                "notify.webhook_url needs notify.webhook_secret_file (the key that signs "
                "every notification, mode 0600)"
            )
        if self.smtp_host is not None and self.smtp_from is None:
            raise ValueError("notify.smtp_host needs notify.smtp_from (the sender address)")
        if (self.smtp_username is None) != (self.smtp_password_file is None):
            raise ValueError("notify.smtp_username and notify.smtp_password_file go together")
        if self.email_from == "domain" and self.email_domain is None:
            raise ValueError('notify.email_from = "domain" needs notify.email_domain')
        return self

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels configured, in delivery order."""
        out = []
        if self.webhook_url is not None:
            out.append("webhook")
        if self.smtp_host is not None:
            out.append("email")
        return tuple(out)
