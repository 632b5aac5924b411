"""How old the directory snapshot may be before decisions that read AD membership stop.

A snapshot is only as good as its last successful check against a DC: someone
disabled or removed from a group in AD keeps their roles in the snapshot for as
long as syncs fail. Elevation and approval therefore fail closed once the last
successful sync is older than `directory.max_snapshot_age`; what takes access
away (revoke, quarantine, the reaper) never asks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.core.durations import format_duration
from broker.core.errors import UnavailableError
from broker.directory.snapshot import SyncState

_FIX = "restore the connection to the DC and run `broker sync` (revokes and quarantines still work)"


def require_fresh(
    state: SyncState | None, max_age: timedelta, now: datetime, last_error: str | None
) -> None:
    """Refuse (exit 3, unavailable) when no sync succeeded within `max_age` of `now`."""
    cause = f": last sync failed: {last_error}" if last_error else ""
    if state is None:
        raise UnavailableError(f"the directory has never been synced{cause}", fix=_FIX)
    age = now - state.checked_at
    if age <= max_age:
        return
    raise UnavailableError(
        f"the directory snapshot is {format_duration(age)} old"
        f" (last checked against {state.dc_uri} at {state.checked_at:%Y-%m-%d %H:%M:%SZ},"
        f" directory.max_snapshot_age is {format_duration(max_age)}){cause}",
        fix=_FIX,
    )
