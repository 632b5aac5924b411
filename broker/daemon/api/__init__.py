"""The API's routes, one module per area; importing this package registers them all."""

from broker.daemon.api import (
    accounts,
    alerts,
    audit,
    directory,
    grants,
    keytabs,
    mfa,
    nodes,
    policy,
    report,
    sessions,
    system,
)

__all__ = [
    "accounts",
    "alerts",
    "audit",
    "directory",
    "grants",
    "keytabs",
    "mfa",
    "nodes",
    "policy",
    "report",
    "sessions",
    "system",
]
