"""Who may rotate an account now: the claim kept in the store (keytab_claims).

Rotations of different accounts run in parallel (batch.py), each worker on its own store
connection, so an in-memory set of running accounts would guard one process only. The
claim lives in the store instead: taken in one write transaction before anything of the
rotation happens, dropped when it ends, so two workers, in one process or in two, never
rotate one account at the same time.

A claim names its holder as `host:pid:start:token`: the broker host's name, the process
id, the process's start time (field 22 of /proc/PID/stat, so a reused pid is not mistaken
for the holder) and a random token per claim (so two threads of one process are told
apart). A claim of this host stands while that process runs, however long its rotation
waits (an LDAP or KDC call, a lock): taking it over from a live holder would let two
workers set different passwords for one account. After a kill -9 the next run sees the
holder gone and takes the claim over, and the rotation the dead process left open is
resumed as before (plan.resume). Whether a process runs can only be told on its own host,
so a claim naming another host, or a holder text that does not parse (it came from nowhere
this broker wrote), stands until CLAIM_TTL has passed since its holder's last journal
step. The holder refreshes `claimed_at` at every step and checks it still holds the claim
before each AD or node step (journal.py), so a claim taken over that way stops its first
holder before it touches anything again.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from datetime import datetime, timedelta

from broker.core.errors import RefusedError

# Longer than any step of a rotation can take: every node call is bounded (30 s), AD and
# the KDC answer within their own timeouts, and the holder refreshes its claim at each step.
CLAIM_TTL = timedelta(hours=1)
_HOST = r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}"
_OWNER = re.compile(rf"({_HOST}):([1-9][0-9]{{0,9}}):([0-9]{{1,20}}):([0-9a-f]{{16}})")


def _stat_start(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (None: the record does not parse); OSError if unread."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        text = handle.read()
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: no such process, or its
    record could not be read or parsed)."""
    try:
        return _stat_start(pid)
    except OSError:
        return None


def _runs(pid: int, start: str) -> bool:
    """Whether the process `pid` started at `start` runs. Only a process known to be gone
    (no /proc entry, or a different start time there) counts as gone: a record that cannot
    be read is taken as the holder's, so an unreadable /proc never hands a claim over."""
    try:
        found = _stat_start(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return found is None or found == start


def this_host() -> str | None:
    """This host's name as claims carry it (None: a name outside the allow-list)."""
    name = socket.gethostname()
    return name if re.fullmatch(_HOST, name) else None


def new_owner() -> str:
    """A holder text for a claim taken by this thread now. Refused (never a holder that
    could be mistaken for a dead one) when the start time or host name cannot be read."""
    pid = os.getpid()
    start = process_start(pid)
    host = this_host()
    if start is None or host is None:
        what = "this host's name" if host is None else f"/proc/{pid}/stat"
        raise RefusedError(
            f"cannot take a rotation claim: {what} cannot be read to name its holder",
            fix="run the broker where /proc is mounted and the host name is a DNS name",
        )
    return f"{host}:{pid}:{start}:{secrets.token_hex(8)}"


def is_live(owner: str, claimed_at: datetime, now: datetime) -> bool:
    """Whether a claim still stands: one of this host while its process runs, whatever its
    age; one of another host, or one that does not parse, until CLAIM_TTL after its last
    refresh."""
    found = _OWNER.fullmatch(owner)
    if found is None or found.group(1) != this_host():
        return now - claimed_at < CLAIM_TTL
    return _runs(int(found.group(2)), found.group(3))


def holder(owner: str) -> str:
    """The holder for a refusal's text: `pid N on HOST` ('?' parts when it does not parse)."""
    found = _OWNER.fullmatch(owner)
    return f"pid {found.group(2)} on {found.group(1)}" if found else "pid ? on ?"
