"""Prometheus metrics on `daemon.metrics_listen` (off unless set): GET /metrics.

A separate plain-HTTP listener, as node_exporter and most exporters do, rather than a
route on the daemon's API: Prometheus cannot scrape a Unix socket, and the TLS listener
takes Kerberos callers only. The figures are counts and ages, no user or node names, so
the endpoint needs no identity; bind it to loopback or a monitoring network.

Every gauge is computed at scrape time from the store (monitor/gauges.py: indexed counts)
and the heartbeats; the counters are the process's event counts (core/counters.py). One
connection, under a lock, serves all scrapes (prometheus_client answers each in a thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.app import App
from broker.audit import forward
from broker.config.settings import Settings
from broker.core import counters
from broker.core.timeutil import utcnow
from broker.daemon import leader
from broker.daemon.health import evaluate
from broker.daemon.liveness import Heartbeats
from broker.monitor import gauges

log = logging.getLogger("broker.metrics")

# (metric name, help, attribute of StoreGauges): the plain store gauges.
_STORE_GAUGES = (
    ("broker_nodes_enrolled", "Nodes whose host key is pinned.", "nodes_enrolled"),
    ("broker_nodes_quarantined", "Nodes under quarantine.", "nodes_quarantined"),
    ("broker_grants_active", "Grants in state active.", "grants_active"),
    (
        "broker_grant_pushes_failed",
        "Node installs of active grants that failed (grant_nodes state failed).",
        "pushes_failed",
    ),
    ("broker_grant_removals_pending", "Grant removals still to do on nodes.", "removals_pending"),
    (
        "broker_nodes_unreachable",
        "Nodes with a failed install of an active grant or a removal retried at least once.",
        "nodes_unreachable",
    ),
    ("broker_requests_waiting", "Elevation requests waiting for approval.", "requests_waiting"),
    ("broker_audit_head_seq", "Seq of the newest audit event.", "audit_head_seq"),
    ("broker_audit_sealed_seq", "Seq covered by the last signed checkpoint.", "audit_sealed_seq"),
    ("broker_audit_seal_lag", "Audit events not yet covered by a checkpoint.", "seal_lag"),
    ("broker_mfa_locked_accounts", "Accounts whose MFA is locked now.", "mfa_locked_accounts"),
    ("broker_webhook_backlog", "Alert deliveries waiting for the webhook.", "webhook_backlog"),
    (
        "broker_alert_deliveries_failed",
        "Alert deliveries given up (syslog or webhook).",
        "deliveries_failed",
    ),
    ("broker_recordings_running", "Session recordings not yet finished.", "recordings_running"),
)

_COUNTERS = (
    ("broker_push_failures", "Grant installs on a node that failed.", counters.PUSH_INSTALL_FAILED),
    (
        "broker_removal_failures",
        "Grant removals on a node that failed.",
        counters.PUSH_REMOVE_FAILED,
    ),
    ("broker_mfa_failures", "MFA codes refused (counted failures).", counters.MFA_FAILURE),
    ("broker_mfa_locks", "MFA lockouts.", counters.MFA_LOCK),
)


class BrokerCollector(Collector):
    """Reads the store, the heartbeats and the counters at each scrape."""

    def __init__(self, settings: Settings, beats: Heartbeats) -> None:
        self._settings = settings
        self._beats = beats
        self._lock = threading.Lock()
        self._app: App | None = None

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if self._app is None:
                self._app = App(self._settings)
            app = self._app
            now = utcnow()
            health = evaluate(app, self._beats, now)
            forwarding: int | None = None
            try:
                found: gauges.StoreGauges | None = gauges.read(
                    app.store().conn, self._settings.checkpoint_log, now
                )
                forwarding = forward.backlog(app.store().conn, self._settings.audit)
            except Exception:  # health's store check already says why
                log.exception("metrics: reading the store failed")
                found = None
        yield from self._health(health.checks)
        yield from self._threads()
        leadership = leader.current()
        if leadership is not None:
            yield GaugeMetricFamily(
                "broker_scheduler_leader",
                "1 while this broker holds the scheduler lease (summed over brokers: 1).",
                value=1.0 if leadership.is_leader() else 0.0,
            )
        if found is not None:
            yield from self._store(found)
        if forwarding is not None:  # only while audit.forward is set
            yield GaugeMetricFamily(
                "broker_audit_forward_backlog",
                "Audit events the SIEM (audit.forward) has not taken yet.",
                value=float(forwarding),
            )
        for name, text, key in _COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.totals()[key])

    @staticmethod
    def _health(checks: list[Any]) -> Iterator[Any]:
        ok = GaugeMetricFamily(
            "broker_health_check_ok", "1 when the /v1/health check passes.", labels=["check"]
        )
        for check in checks:
            ok.add_metric([check.name], 1.0 if check.ok else 0.0)
        yield ok
        yield GaugeMetricFamily(
            "broker_healthy", "1 when /v1/health answers 200.", value=all(c.ok for c in checks)
        )

    def _threads(self) -> Iterator[Any]:
        alive = GaugeMetricFamily(
            "broker_thread_alive", "Background thread running.", labels=["thread"]
        )
        last = GaugeMetricFamily(
            "broker_thread_last_success_timestamp_seconds",
            "Unix time of the thread's last pass without an exception.",
            labels=["thread"],
        )
        for state in self._beats.states():
            alive.add_metric([state.name], 1.0 if state.alive else 0.0)
            if state.last_success is not None:
                last.add_metric([state.name], state.last_success)
            if state.name == "broker-indexer":
                yield GaugeMetricFamily(
                    "broker_recording_index_lag_seconds",
                    "Seconds since the indexer last finished a pass over the recordings.",
                    value=state.since_success_s,
                )
        yield alive
        yield last

    def _store(self, found: gauges.StoreGauges) -> Iterator[Any]:
        for name, text, attribute in _STORE_GAUGES:
            yield GaugeMetricFamily(name, text, value=float(getattr(found, attribute)))
        age = float("inf") if found.sync_age_s is None else found.sync_age_s
        yield GaugeMetricFamily(
            "broker_directory_sync_age_seconds",
            "Seconds since the last successful directory sync (+Inf: never).",
            value=age,
        )
        directory = self._settings.directory
        if directory is not None:
            yield GaugeMetricFamily(
                "broker_directory_max_snapshot_age_seconds",
                "directory.max_snapshot_age: older snapshots stop elevation.",
                value=directory.max_snapshot_age.total_seconds(),
            )


class MetricsServer:
    """The /metrics listener; `close` stops it and releases its store connection."""

    def __init__(self, settings: Settings, beats: Heartbeats) -> None:
        address = settings.daemon.metrics_listen
        assert address is not None
        host, _, port = address.rpartition(":")
        self.collector = BrokerCollector(settings, beats)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=registry
        )
        log.info("metrics on http://%s/metrics", address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.collector.close()
