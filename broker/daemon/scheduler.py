"""The daemon's scheduler: expire requests and grants, retry removals, re-check grants
against the directory and policy, repair broken drop-ins, collect session events; check
the drop-ins of live grants every `grants.drop_in_check_interval`. One thread, its own App.
Beside it the indexer, detector, responder and notifier, each a thread with its own App,
and, when `audit.forward` is set, the audit forwarder (broker-forwarder);
every thread marks each pass that raised nothing in the heartbeats (liveness.py), which
`/v1/health`, the metrics and the systemd watchdog read.

With several brokers on one store only the leader runs these duties (leader.py): the
broker-leadership thread keeps the lease, and every other thread, while this broker is a
standby, checks each second and starts a pass at once when it becomes the leader.

Each tick is also reachable as `POST /v1/grants/reap` (`broker grants reap`), so an
operator (or a test) need not wait for the interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from broker.app import App
from broker.audit.forward import Forwarder
from broker.config.settings import Settings
from broker.core.timeutil import utcnow
from broker.daemon.leader import Leadership
from broker.daemon.liveness import HEARTBEATS, Heartbeats
from broker.detect.notify import Deliverer
from broker.detect.runner import BATCH
from broker.notify.deliver import NoticeDeliverer

log = logging.getLogger("broker.scheduler")


@dataclass
class TickReport:
    requests_expired: list[str] = field(default_factory=list)
    grants_expired: list[str] = field(default_factory=list)
    grants_revoked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # grant@node
    still_pending: list[str] = field(default_factory=list)
    events: int = 0
    drop_ins_repaired: list[str] = field(default_factory=list)  # grant@node


# Break-glass sessions happen on nodes without grants (often while the broker is down):
# every node is asked for its spool this often, nodes with recent grants every tick.
FULL_COLLECT_EVERY_S = 3600.0


def tick(app: App, *, all_nodes: bool = False) -> TickReport:
    report = TickReport()
    # Rate-limited refusals of windows that closed are summed up now, not at the next one.
    app.refusals().flush(utcnow())
    if all_nodes:
        report.events = app.spool_collector().collect_all(utcnow())
    if not app.grant_reader().work_to_reap():
        return report
    now = utcnow()
    reaped = app.grants().reap(now)
    report.requests_expired = reaped.requests_expired
    report.grants_expired = reaped.grants_expired
    report.removed = [f"{g}@{n}" for g, n in reaped.removed]
    report.still_pending = [f"{g}@{n}" for g, n in reaped.still_pending]
    report.grants_revoked = app.revocation().recheck(actor="broker", cause="recheck", now=utcnow())
    # Broken drop-ins found by a check are pushed again here (grants.drop_in_integrity).
    report.drop_ins_repaired = app.drop_ins().repair(utcnow())
    report.events += app.spool_collector().collect_recent(now)
    return report


PURGE_EVERY_S = 3600.0
# The CRL is checked against the store this often (written when it differs or is a day
# old), so a CRL that could not be written at `node remove` is there within a minute.
CRL_CHECK_EVERY_S = 60.0


def check_drop_ins(app: App) -> None:
    """The periodic drop-in integrity check (docs/grants.md); never raises."""
    try:
        statuses = app.drop_ins().sweep(utcnow())
    except Exception:  # the check must never stop the scheduler
        log.exception("drop-in integrity check failed")
        return
    broken = [p for s in statuses for p in s.drop_in_problems]
    if broken:
        log.warning("drop-in integrity: %s", "; ".join(broken)[:2000])


def rotate_due_keytabs(app: App) -> None:
    """`broker keytab rotate --due` from the daemon (keytabs.schedule); never raises."""
    try:
        reports = app.keytabs().rotate_due(actor="broker")
    except Exception:  # the schedule must never stop the scheduler
        log.exception("scheduled keytab rotation failed")
        return
    # Each account's line was logged as it ended (keytabs/batch.py); here the tally.
    outcomes: dict[str, int] = {}
    for report in reports:
        outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1
    if reports:
        log.info(
            "scheduled keytab rotation: %s",
            ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())),
        )


def refresh_crl(app: App) -> None:
    """Keep the session CA's CRL current (an expired one shuts every node out); never raises."""
    try:
        app.tunnel_certs().refresh_crl(utcnow())
    except Exception:  # the indexer must keep running
        log.exception("the session CA's CRL could not be refreshed")


# Detection runs every second; acting on alerts (SSH) and delivering them (HTTP) each
# have their own thread, so a slow node or webhook never delays the next finding.
DETECT_EVERY_S = 1.0
RESPOND_EVERY_S = 1.0
NOTIFY_EVERY_S = 1.0
# Audit events reach the SIEM within about this long of their commit.
FORWARD_EVERY_S = 0.5
QUARANTINE_RETRY_S = 30.0


# The least time without a good pass before a thread counts as stuck (liveness.py): the
# threads that talk to nodes over SSH or to a webhook may spend minutes on timeouts.
SSH_FLOOR_S = 600.0
WEBHOOK_FLOOR_S = 300.0
LOCAL_FLOOR_S = 120.0
# How often a standby's duty threads look whether this broker has become the leader.
STANDBY_POLL_S = 1.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        beats: Heartbeats = HEARTBEATS,
        leadership: Leadership | None = None,
    ) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._beats = beats
        self.leadership = leadership or Leadership(settings.daemon.leader_lease)
        self._released = threading.Event()
        self._duties_done = False
        reap = settings.grants.reap_interval.total_seconds()
        index = settings.sessions.index_interval.total_seconds()
        lease = settings.daemon.leader_lease.total_seconds()
        # (target, name, interval, floor): each thread's pace, for the heartbeats.
        plan = [
            (self._lead, "broker-leadership", lease / 3, LOCAL_FLOOR_S),
            (self._run, "broker-scheduler", reap, SSH_FLOOR_S),
            # Indexing has its own thread and pace: a slow SSH tick must not delay recordings.
            (self._index, "broker-indexer", index, LOCAL_FLOOR_S),
            (self._detect, "broker-detector", DETECT_EVERY_S, LOCAL_FLOOR_S),
            (self._respond, "broker-responder", RESPOND_EVERY_S, SSH_FLOOR_S),
            (self._notify, "broker-notifier", NOTIFY_EVERY_S, WEBHOOK_FLOOR_S),
        ]
        if settings.audit.forward is not None:
            plan.append((self._forward, "broker-forwarder", FORWARD_EVERY_S, WEBHOOK_FLOOR_S))
        self._threads = [
            threading.Thread(target=target, name=name, daemon=True) for target, name, _, _ in plan
        ]
        self._pace = {name: (interval, floor) for _, name, interval, floor in plan}

    def start(self) -> None:
        self.leadership.register()
        for thread in self._threads:
            # Started, then registered: a health check between the two must not see a
            # registered thread that is not alive yet (a 503 at start-up).
            thread.start()
            self._beats.register(thread, *self._pace[thread.name])

    def stop(self) -> None:
        """Stop every thread; the lease is released only once the duty threads have ended,
        so a standby never starts a pass while one of ours is still running."""
        self._stop.set()
        self._beats.clear()
        for thread in self._threads:
            if thread.is_alive() and thread.name != "broker-leadership":
                thread.join(timeout=30)
        self._duties_done = not any(
            t.is_alive() for t in self._threads if t.name != "broker-leadership"
        )
        self._released.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=30)
        self.leadership.unregister()

    def _turn(self, interval: float) -> bool:
        """Wait for this thread's next pass (False: the daemon is stopping). The leader waits
        `interval`; a standby marks itself alive each second and, when this broker takes the
        lease over from another, goes at once: duties resume within a second of a takeover."""
        deadline = time.monotonic() + interval
        leading = self.leadership.is_leader()
        while True:
            left = max(0.0, deadline - time.monotonic())
            if self._stop.wait(min(left, STANDBY_POLL_S)):
                return False
            was, leading = leading, self.leadership.is_leader()
            if leading and (
                time.monotonic() >= deadline or (not was and self.leadership.took_over)
            ):
                return True
            if not leading:
                self._beats.success()  # a standby's thread is alive with nothing to do

    def _lead(self) -> None:
        app = App(self._settings)
        every = self._settings.daemon.leader_lease.total_seconds() / 3
        try:
            store = app.ready_store()
            while True:
                try:
                    self.leadership.attempt(store)
                except Exception:  # the store unreachable: the lease simply runs out
                    log.exception("scheduler lease not renewed")
                else:
                    self._beats.success()
                # Renewed until stop() has seen the duty threads end (not merely asked them
                # to): a pass still running keeps the lease ours, so no standby starts one.
                if self._released.wait(every):
                    break
            if self._duties_done:
                self.leadership.release(store)
        finally:
            app.close()

    def _detect(self) -> None:
        app = App(self._settings)
        try:
            wait = DETECT_EVERY_S
            while self._turn(wait):
                wait = DETECT_EVERY_S
                try:
                    report = app.detection().run(utcnow())
                except Exception:  # never stop detecting for one bad pass
                    log.exception("detection pass failed")
                    continue
                self._beats.success()
                if report.alerts:
                    log.info("detection raised alert(s) %s", report.alerts)
                if report.events >= BATCH:
                    wait = 0.0  # a backlog (after a restart): keep going
        finally:
            app.close()

    def _respond(self) -> None:
        app = App(self._settings)
        responder = app.responder()
        last_retry = 0.0
        try:
            while self._turn(RESPOND_EVERY_S):
                try:
                    report = responder.run_once(utcnow())
                    if report.done or report.failed:
                        log.info("responder: done %s, failed %s", report.done, report.failed)
                    if time.monotonic() - last_retry >= QUARANTINE_RETRY_S:
                        last_retry = time.monotonic()
                        app.quarantines().retry(utcnow())
                except Exception:
                    log.exception("responder pass failed")
                    continue
                self._beats.success()
        finally:
            app.close()

    def _notify(self) -> None:
        app = App(self._settings)
        try:
            deliverer = Deliverer(app.ready_store(), self._settings)
            notices = NoticeDeliverer(app.ready_store(), self._settings)
            while self._turn(NOTIFY_EVERY_S):
                try:
                    deliverer.run_once(utcnow())
                    notices.run_once(utcnow())
                except Exception:
                    log.exception("alert or request notice delivery pass failed")
                    continue
                self._beats.success()
        finally:
            app.close()

    def _forward(self) -> None:
        """Send the audit events after the cursor; a full batch means a backlog: go on at once."""
        app = App(self._settings)
        try:
            forwarder = Forwarder(app.ready_store(), self._settings.audit)
            wait = FORWARD_EVERY_S
            while self._turn(wait):
                wait = FORWARD_EVERY_S
                try:
                    report = forwarder.run_once()
                except Exception:  # never stop forwarding for one bad pass
                    log.exception("audit forwarding pass failed")
                    continue
                self._beats.success()
                if report.error is None and report.sent >= self._settings.audit.forward_batch:
                    wait = 0.0
        finally:
            app.close()

    def _index(self) -> None:
        interval = self._settings.sessions.index_interval.total_seconds()
        app = App(self._settings)
        last_purge = last_crl = 0.0
        try:
            while self._turn(interval):
                if time.monotonic() - last_crl >= CRL_CHECK_EVERY_S:
                    last_crl = time.monotonic()
                    refresh_crl(app)
                try:
                    report = app.session_indexer().run(utcnow())
                    if report.finished or report.quarantined:
                        log.info(
                            "indexed %d finished recording(s), %d quarantined",
                            len(report.finished),
                            len(report.quarantined),
                        )
                    if time.monotonic() - last_purge >= PURGE_EVERY_S:
                        last_purge = time.monotonic()
                        days = self._settings.sessions.retention_days
                        app.recordings().purge(days, utcnow(), "broker")
                except Exception:  # never stop indexing for one bad pass
                    log.exception("session indexing failed")
                    continue
                self._beats.success()
        finally:
            app.close()

    def _run(self) -> None:
        interval = self._settings.grants.reap_interval.total_seconds()
        app = App(self._settings)
        last_full = last_keytabs = last_drop_ins = time.monotonic()
        keytab_every = self._settings.keytabs.schedule.total_seconds()
        drop_in_every = self._settings.grants.drop_in_check_interval.total_seconds()
        try:
            while self._turn(interval):
                if keytab_every and time.monotonic() - last_keytabs >= keytab_every:
                    last_keytabs = time.monotonic()
                    rotate_due_keytabs(app)
                if time.monotonic() - last_drop_ins >= drop_in_every:
                    last_drop_ins = time.monotonic()
                    check_drop_ins(app)
                full = time.monotonic() - last_full >= FULL_COLLECT_EVERY_S
                if full:
                    last_full = time.monotonic()
                try:
                    report = tick(app, all_nodes=full)
                except Exception:  # a tick must never stop the scheduler
                    log.exception("scheduler tick failed")
                    continue
                self._beats.success()
                if report.grants_expired or report.grants_revoked or report.requests_expired:
                    log.info(
                        "expired %d grant(s), revoked %d, expired %d request(s)",
                        len(report.grants_expired),
                        len(report.grants_revoked),
                        len(report.requests_expired),
                    )
        finally:
            app.close()
