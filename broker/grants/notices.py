"""The grant flows' hook into the notice outbox (broker/notify): called inside the
transaction that stores a request or its decision, after the change is written.

Queueing never refuses the change: a request must not wait for, or fail on, the people
who hear about it. A notice that cannot be composed (no snapshot, a row gone) is logged
and skipped; the change commits either way.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime

from broker.core.identity import Snapshot
from broker.grants import rows
from broker.notify.notices import RequestNotices

log = logging.getLogger("broker.grants")

# (conn, kind, request_id, now): kind is requested, approved, denied or expired.
NoticeQueue = Callable[[sqlite3.Connection, str, str, datetime], None]


def notice_queue(
    notices: RequestNotices | None, snapshot: Callable[[datetime], Snapshot]
) -> NoticeQueue:
    """The hook the grant flows call; a no-op without [notify] channels."""

    def queue(conn: sqlite3.Connection, kind: str, request_id: str, now: datetime) -> None:
        if notices is None:
            return
        conn.execute("SAVEPOINT request_notices")
        try:
            request = rows.request(conn, request_id)
            if request is not None:
                notices.queue(conn, kind, request, snapshot(now), now)
        except Exception:  # never let a notice undo the change it reports
            conn.execute("ROLLBACK TO request_notices")
            log.exception("request %s: %s notice not queued", request_id, kind)
        finally:
            conn.execute("RELEASE request_notices")

    return queue
