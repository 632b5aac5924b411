"""Policy versions in the store, through App: atomic activation, integrity, what others read."""

from __future__ import annotations

import sqlite3

import pytest

from broker.app import App
from broker.core.errors import IntegrityError, RefusedError
from broker.policy import versions
from tests.unit.policy_samples import LAB_POLICY


def rows(app: App, table: str) -> int:
    count = app.ready_store().conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return int(count)


def test_apply_activates_with_one_audit_event(broker_app: App) -> None:
    events = rows(broker_app, "audit_events")
    result = broker_app.policy().apply(LAB_POLICY, "/etc/broker/policy.toml", "unix:test")
    assert result.applied and result.previous is None and result.version.id == 1
    assert rows(broker_app, "audit_events") == events + 1
    policy = broker_app.policy().require()
    assert broker_app.policy().active() is policy  # parsed once per sha256
    version = broker_app.policy().version()
    assert version is not None and version.text == LAB_POLICY and version.actor == "unix:test"
    assert broker_app.policy().mapped_groups() == frozenset(
        {
            "gpu-admins",
            "storage-admins",
            "hpc-approvers",
            "break-glass",
            "incident-response",
            "svc-owners",
        }
    )


def test_a_failed_audit_write_leaves_no_version(
    broker_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(versions.writer, "record", broken)
    with pytest.raises(sqlite3.OperationalError):
        broker_app.policy().apply(LAB_POLICY, "policy.toml", "unix:test")
    assert rows(broker_app, "policy_versions") == 0
    assert broker_app.policy().active() is None


def test_without_a_policy(broker_app: App) -> None:
    assert broker_app.policy().active() is None and broker_app.policy().mapped_groups() is None
    with pytest.raises(RefusedError, match="no policy is active"):
        broker_app.policy().require()


def test_history_keeps_every_activation_and_the_pointer_moves(broker_app: App) -> None:
    other = LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "3h"')
    for text in (LAB_POLICY, other, LAB_POLICY):
        assert broker_app.policy().apply(text, "policy.toml", "unix:test").applied
    history = versions.history(broker_app.ready_store().conn)
    assert [v.id for v in history] == [3, 2, 1] and history[0].sha256 == history[2].sha256
    policy = broker_app.policy().require()
    assert policy.roles["gpu-root"].max_duration is not None
    assert policy.roles["gpu-root"].max_duration.total_seconds() == 4 * 3600


def test_a_policy_edited_in_the_database_is_refused(broker_app: App) -> None:
    broker_app.policy().apply(LAB_POLICY, "policy.toml", "unix:test")
    conn = broker_app.ready_store().conn
    conn.execute("UPDATE policy_versions SET text = text || ?", ("# edited\n",))
    fresh = App(broker_app.settings)
    try:
        with pytest.raises(IntegrityError, match="does not match its sha256"):
            fresh.policy().active()
        # The directory sync still runs, auditing every group, rather than failing.
        assert fresh.policy().mapped_groups() is None
    finally:
        fresh.close()


def test_a_policy_rewritten_with_its_sha256_is_refused_by_the_audit_chain(
    broker_app: App,
) -> None:
    broker_app.policy().apply(LAB_POLICY, "policy.toml", "unix:test")
    forged = LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "30d"')
    conn = broker_app.ready_store().conn
    conn.execute(
        "UPDATE policy_versions SET text = ?, sha256 = ?", (forged, versions.sha256_of(forged))
    )
    fresh = App(broker_app.settings)
    with pytest.raises(IntegrityError, match=r"no matching policy\.apply event"):
        fresh.policy().active()
    fresh.close()
