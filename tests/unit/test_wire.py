"""Wire records: built from the domain types they describe, and read back unchanged by the client."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from broker.accounts.view import RoleRef, Scope
from broker.audit.verify import Finding, VerifyReport
from broker.core.identity import AccessChange, Account
from broker.daemon.scheduler import TickReport
from broker.detect.alerts import Alert
from broker.directory.sync import SyncReport
from broker.fleet import status as fleet_status
from broker.fleet.enroll import EnrollResult
from broker.fleet.inventory import NodeRecord
from broker.fleet.probe import NodeProbe
from broker.fleet.quarantine import Quarantine
from broker.grants.model import Approval, Grant, GrantNode, Request
from broker.grants.push import NodeOutcome
from broker.grants.quarantine import NodeMark, QuarantineResult
from broker.keytabs import status as keytab_status
from broker.keytabs.report import RotationReport
from broker.mfa.model import MfaStatus
from broker.policy.versions import PolicyVersion
from broker.provision.bootstrap import BootstrapResult
from broker.wire import accounts, alerts, audit, directory, grants, keytabs, mfa, nodes, policy
from broker.wire.base import from_domain

# (record, the domain type it is read from, the fields only the server computes)
PAIRS: list[tuple[type[BaseModel], type, set[str]]] = [
    (grants.GrantOut, Grant, {"active", "node_states"}),
    (grants.GrantNodeOut, GrantNode, set()),
    (grants.RequestOut, Request, set()),
    (grants.ApprovalOut, Approval, set()),
    (grants.NodeResultOut, NodeOutcome, set()),
    (grants.ReapOut, TickReport, set()),
    (nodes.NodeOut, NodeRecord, {"problem"}),
    (nodes.RemovedOut, NodeRecord, {"problem", "revoked_serials"}),
    (nodes.StatusOut, fleet_status.NodeStatus, set()),
    (nodes.ProbeOut, NodeProbe, set()),
    (nodes.EnrollOut, EnrollResult, {"key_type", "fingerprint"}),
    (nodes.BootstrapOut, BootstrapResult, set()),
    (alerts.QuarantineOut, QuarantineResult, set()),
    (alerts.AlertOut, Alert, set()),
    (alerts.MarkOut, NodeMark, set()),
    (alerts.QuarantinedOut, Quarantine, set()),
    (keytabs.RotationOut, RotationReport, set()),
    (keytabs.AccountStatusOut, keytab_status.AccountStatus, set()),
    (keytabs.KeytabNodeStatusOut, keytab_status.NodeStatus, set()),
    (accounts.AccountOut, Account, {"stale", "roles", "may_elevate", "no_roles_reason"}),
    (accounts.RoleOut, RoleRef, set()),
    (accounts.ScopeOut, Scope, set()),
    (audit.VerifyOut, VerifyReport, set()),
    (audit.ProblemOut, Finding, set()),
    (mfa.StatusOut, MfaStatus, {"account"}),
    (directory.SyncOut, SyncReport, {"revoked"}),
    (directory.ChangeOut, AccessChange, {"sid"}),
    (policy.VersionOut, PolicyVersion, {"version"}),
]


@pytest.mark.parametrize(
    ("record", "domain", "computed"), PAIRS, ids=lambda x: getattr(x, "__name__", "")
)
def test_every_record_field_is_the_domain_types_or_computed(
    record: type[BaseModel], domain: type, computed: set[str]
) -> None:
    """A field renamed or added on one side only fails here, not in production."""
    if not dataclasses.is_dataclass(domain):
        pytest.skip("no domain dataclass of its own")
    own = {f.name for f in dataclasses.fields(domain)} | {
        name for name in dir(domain) if isinstance(getattr(domain, name, None), property)
    }
    missing = set(record.model_fields) - own - computed
    assert not missing, f"{record.__name__} fields not on {domain.__name__}: {sorted(missing)}"


def _grant() -> Grant:
    at = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    return Grant(
        id="g0123456789abcdef",
        user="alice",
        sid="S-1-5-21-1-2-3-1104",
        role="gpu-root",
        runas="root",
        commands="ALL",
        command_sets=(),
        nodes="gpu01",
        not_before=at,
        not_after=at.replace(hour=12),
        reason="INC-4711",
        approvers=("bob",),
        policy_sha256="0" * 64,
        login=False,
        workloads=False,
        max_sessions=4,
        request_id=None,
        created_at=at,
        created_by="unix:alice",
        state="active",
    )


def test_a_record_built_from_the_domain_survives_the_wire_unchanged() -> None:
    """What the CLI prints with --json is what the daemon sent, byte for byte."""
    node = GrantNode("g0123456789abcdef", "gpu01", "live", None, 1, None, None)
    grant = from_domain(grants.GrantOut, _grant(), active=True, node_states=[node])
    sent = json.dumps(grant.model_dump(mode="json", by_alias=True), sort_keys=True)
    read = grants.GrantOut.model_validate(json.loads(sent))
    assert json.dumps(read.model_dump(mode="json", by_alias=True), sort_keys=True) == sent
    assert read.live_on == ["gpu01"] and read.shown_state == "active"
    assert read.not_before == grant.not_before
