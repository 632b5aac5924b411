"""Pure rules of rotation: which key versions a node keeps, when an account is due, how a
rotation found half-done after a crash is resumed, how long to wait before a retry.

No I/O here; service.py applies these to the store, AD and the nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

# States of a rotation (docs/keytabs.md). Open states are resumed by the next run.
OPEN_STATES = ("planned", "staged", "ad_pending", "ad_set")
END_STATES = ("done", "abandoned", "failed", "superseded")
STATES = OPEN_STATES + END_STATES

Resume = Literal["discard", "verify", "recover"]


def keep_kvnos(
    *,
    current: int,
    staged: int | None,
    retired: Mapping[int, datetime],
    present: set[int],
    keep_old: int,
    max_ticket_lifetime: timedelta,
    now: datetime,
) -> set[int]:
    """The key versions a node's keytab keeps.

    Always the current version and the staged next one; then the `keep_old` newest
    older versions present; and any older version retired (superseded in AD) less
    than the longest ticket lifetime ago, because tickets issued under it are still
    being presented. A version whose retirement the broker never saw counts as
    retired long ago.
    """
    keep = {current}
    if staged is not None:
        keep.add(staged)
    older = sorted((k for k in present if k < current), reverse=True)
    keep.update(older[:keep_old])
    for kvno in older:
        when = retired.get(kvno)
        if when is not None and when + max_ticket_lifetime > now:
            keep.add(kvno)
    return keep


def next_due(last_rotated: datetime | None, rotate_every: timedelta) -> datetime | None:
    """When the account is next due; None when the broker never made its keytab."""
    return None if last_rotated is None else last_rotated + rotate_every


def is_due(last_rotated: datetime | None, rotate_every: timedelta, now: datetime) -> bool:
    """Only keytabs the broker made (`broker keytab create`) come due: the schedule never
    resets the password of an account nobody asked it to manage yet."""
    due = next_due(last_rotated, rotate_every)
    return due is not None and due <= now


def backoff(
    attempts: int, base: timedelta = timedelta(minutes=1), cap: timedelta = timedelta(hours=1)
) -> timedelta:
    """1, 2, 4 ... minutes after each failed attempt, at most an hour."""
    delay: timedelta = base * (2 ** max(0, min(attempts - 1, 16)))
    return min(cap, delay)


@dataclass(frozen=True)
class Found:
    """A rotation left open by a crash, and what AD says now."""

    state: str
    from_kvno: int
    target_kvno: int
    ad_kvno_recorded: int | None
    ad_kvno_now: int


def resume(found: Found) -> Resume:
    """What to do with an open rotation whose password died with the process.

    - planned/staged: AD was never asked. The staged keys belong to a lost password:
      discard them (the next rotation starts clean).
    - ad_pending: the password may or may not have reached AD. Still at from_kvno: it
      did not; discard. At target_kvno: it did, and every node already holds those keys
      (they were staged before AD was asked): verify. Anything else: someone else also
      changed it; recover with a new rotation.
    - ad_set: AD took our password. If its version is the one staged, verify; if the
      crash came while re-deriving for an unexpected version, the keys are lost:
      recover (new password, new clean rotation).
    """
    if found.state in ("planned", "staged"):
        return "discard"
    if found.state == "ad_pending":
        if found.ad_kvno_now == found.from_kvno:
            return "discard"
        if found.ad_kvno_now == found.target_kvno:
            return "verify"
        return "recover"
    if found.state == "ad_set":
        if found.ad_kvno_now == found.target_kvno == found.ad_kvno_recorded:
            return "verify"
        return "recover"
    raise ValueError(f"rotation in state {found.state} is not open")
