"""Process-wide event counters: how many pushes failed, MFA codes were refused, accounts
were locked since the daemon started.

The services that see these events sit far below the daemon and must not import a
metrics library, so they bump a named count here (stdlib only, thread-safe); the daemon's
Prometheus collector reads the totals at scrape time. Counts start at zero with the
process, which is what a Prometheus counter means (`rate()` handles the reset).
"""

from __future__ import annotations

import threading

PUSH_INSTALL_FAILED = "push_install_failed"
PUSH_REMOVE_FAILED = "push_remove_failed"
MFA_FAILURE = "mfa_failure"
MFA_LOCK = "mfa_lock"

KNOWN = (PUSH_INSTALL_FAILED, PUSH_REMOVE_FAILED, MFA_FAILURE, MFA_LOCK)

_lock = threading.Lock()
_counts: dict[str, int] = dict.fromkeys(KNOWN, 0)


def bump(name: str, amount: int = 1) -> None:
    """Add `amount` to a known counter; an unknown name is a programming error."""
    if name not in _counts:
        raise KeyError(f"unknown counter {name}")
    with _lock:
        _counts[name] += amount


def totals() -> dict[str, int]:
    """A consistent copy of every counter."""
    with _lock:
        return dict(_counts)
