"""Who may rotate an account now: the claim kept in the store (keytab_claims).

Rotations of different accounts run in parallel (batch.py), each worker on its own store
connection, so an in-memory set of running accounts would guard one process only. The
claim lives in the store instead: taken in one write transaction before anything of the
rotation happens, dropped when it ends, so two workers, in one process or in two, never
rotate one account at the same time.

A claim names its holder as `pid:start:token`: the process id, the process's start time
(field 22 of /proc/PID/stat, so a reused pid is not mistaken for the holder) and a random
token per claim (so two threads of one process are told apart). A claim is live while that
process runs and for at most CLAIM_TTL; after a kill -9 the next run sees the holder gone
and takes the claim over, and the rotation the dead process left open is resumed as
before (plan.resume). A holder text that does not parse is treated as live until the TTL
passes: it came from nowhere the broker wrote, so it is not trusted to be stale.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timedelta

# Longer than any rotation can take: every node call is bounded (30 s), a rotation makes
# about ten of them in sequence, AD and the KDC answer within their own timeouts.
CLAIM_TTL = timedelta(hours=1)
_OWNER = re.compile(r"([1-9][0-9]{0,9}):([0-9]{1,20}):([0-9a-f]{16})")


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else None


def new_owner() -> str:
    """A holder text for a claim taken by this thread now."""
    pid = os.getpid()
    return f"{pid}:{process_start(pid) or 0}:{secrets.token_hex(8)}"


def is_live(owner: str, claimed_at: datetime, now: datetime) -> bool:
    """Whether a claim still stands: its process runs and it is younger than CLAIM_TTL."""
    if now - claimed_at >= CLAIM_TTL:
        return False
    found = _OWNER.fullmatch(owner)
    if found is None:
        return True
    return process_start(int(found.group(1))) == found.group(2)


def holder_pid(owner: str) -> str:
    """The holder's process id for a refusal's text ('?' when the text does not parse)."""
    found = _OWNER.fullmatch(owner)
    return found.group(1) if found else "?"
