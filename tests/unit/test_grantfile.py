"""The broker's grant file writer, checked against the node's checker (pam/src through
broker-grant-check, as the node program runs it): one contract, two sides."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.errors import UsageError
from broker.grants.grantfile import (
    GrantFile,
    encode_reason,
    encode_signed,
    key_id,
    new_grant_id,
    public_key_line,
    validate_reason,
)
from tests.node_tree import NodeTree, bn

KEY = Ed25519PrivateKey.generate()
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def make(**changes: Any) -> GrantFile:
    values: dict[str, Any] = {
        "id": "g3f9a0c1d2e4b5a6c",
        "node": "gpu01",
        "user": "alice",
        "runas": "root",
        "commands": "ALL",
        "not_before": START,
        "not_after": START + timedelta(minutes=30),
        "login": True,
        "workloads": False,
        "max_sessions": 1,
        "policy_sha256": "0123456789abcdef" * 4,
        "approvers": ("frank", "grace"),
        "reason": "INC-4711 replace NVLink switch",
        "issued_at": START,
    }
    values.update(changes)
    return GrantFile(**values)


def test_file_is_exactly_the_documented_layout() -> None:
    text = encode_signed(make(), KEY)
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 18
    assert lines[:16] == [
        "broker-grant-v1",
        "id=g3f9a0c1d2e4b5a6c",
        "node=gpu01",
        "user=alice",
        "runas=root",
        "commands=ALL",
        "not_before=2026-11-23T10:00:00Z",
        "not_after=2026-11-23T10:30:00Z",
        "login=1",
        "workloads=0",
        "max_sessions=1",
        "policy_sha256=" + "0123456789abcdef" * 4,
        "approvers=frank,grace",
        "reason=INC-4711%20replace%20NVLink%20switch",
        "issued_at=2026-11-23T10:00:00Z",
        "key_id=" + key_id(KEY.public_key()),
    ]
    signed, _, signature = text.rpartition("signature=")
    KEY.public_key().verify(base64.b64decode(signature.strip(), validate=True), signed.encode())


def test_key_id_and_public_key_line_match_the_node() -> None:
    public = KEY.public_key()
    raw = public.public_bytes_raw()
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    line = public_key_line(public)
    assert line == f"broker-grant-key-v1 {base64.b64encode(raw).decode()}\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeTree:
    """A node (gpu01) that trusts KEY."""
    tree = NodeTree(tmp_path_factory.mktemp("grantfile") / "node")
    (tree.root / "etc/broker/grant-key.pub").write_text(public_key_line(KEY.public_key()))
    return tree


def node_check(node: NodeTree, text: str) -> Any:
    """The node program's verdict on a grant file, ten minutes into its window."""
    now = int((START + timedelta(minutes=10)).timestamp())
    checked = bn.check_text(node.paths, now, text.encode())
    assert checked.config_problem is None and checked.unavailable is None, checked
    return checked.grants[0]


def test_node_verifies_what_the_broker_signs(node: NodeTree) -> None:
    grant = make(commands="gpu-reset,nvlink", approvers=(), max_sessions=16, workloads=True)
    parsed = node_check(node, encode_signed(grant, KEY))
    assert parsed.valid is True and parsed.problem is None, parsed
    assert (parsed.id, parsed.node, parsed.user, parsed.runas) == (
        "g3f9a0c1d2e4b5a6c",
        "gpu01",
        "alice",
        "root",
    )
    assert (parsed.commands, parsed.max_sessions) == (("gpu-reset", "nvlink"), 16)
    assert (parsed.login, parsed.workloads) == (True, True)
    assert parsed.not_after - parsed.not_before == 1800
    forged = node_check(node, encode_signed(grant, Ed25519PrivateKey.generate()))
    assert (forged.valid, forged.reason) == (False, "bad_signature"), forged


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_any_accepted_reason_round_trips_through_the_node(node: NodeTree, text: str) -> None:
    try:
        reason = validate_reason(text)
    except UsageError:
        return
    parsed = node_check(node, encode_signed(make(reason=reason), KEY))
    assert parsed.valid is True, parsed
    assert unquote_to_bytes(encode_reason(reason)).decode("utf-8") == reason


def test_reason_is_percent_encoded_byte_by_byte() -> None:
    assert encode_reason("a-b_c.d~e f/ü%") == "a-b_c.d~e%20f%2F%C3%BC%25"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "x" * 201,
        "line\nbreak",
        "nul\x00",
        "tab\there",
        "bidi \u202e override",
        "zero\u200bwidth",
        "line\u2028separator",
        "para\u2029separator",
        "bom\ufeff",
        "del\x7f",
    ],
)
def test_bad_reasons_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="reason"):
        validate_reason(text)


def test_good_reasons_are_stripped_and_kept() -> None:
    assert validate_reason("  INC-4711 Straße ✓ \u00e9t\u00e9  ") == "INC-4711 Straße ✓ été"
    assert validate_reason("x" * 200) == "x" * 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "g123"),
        ("id", "G3F9A0C1D2E4B5A6C"),
        ("node", "GPU01"),
        ("node", "-gpu"),
        ("node", "gpu01.example.com"),
        ("user", "ALL"),
        ("user", "%admins"),
        ("user", "alice\nroot"),
        ("user", "#0"),
        ("runas", "root "),
        ("runas", "ｒoot"),
        ("commands", ""),
        ("commands", "gpu_reset"),
        ("commands", "a,,b"),
        ("commands", "ALL,gpu"),
        ("commands", "gpu reset"),
        ("not_before", datetime(2026, 11, 23, 10, 0)),
        ("not_after", START + timedelta(microseconds=5)),
        ("issued_at", datetime(2026, 11, 23, 11, 0, tzinfo=timezone(timedelta(hours=1)))),
        ("not_after", START),
        ("max_sessions", 0),
        ("max_sessions", 17),
        ("max_sessions", True),
        ("login", 1),
        ("policy_sha256", "AB" * 32),
        ("policy_sha256", "ab" * 31),
        ("approvers", ("frank", "Grace")),
        ("approvers", ["frank"]),
        ("reason", " padded"),
        ("reason", "two\nlines"),
    ],
)
def test_every_field_is_allow_listed(field: str, value: Any) -> None:
    with pytest.raises(UsageError) as caught:
        make(**{field: value})
    message = str(caught.value)
    assert field.split("_")[0] in message or "reason" in message, message


def test_oversize_grants_are_refused() -> None:
    many = tuple(f"approver{i:03d}x{'y' * 20}" for i in range(300))
    with pytest.raises(UsageError, match="8192"):
        encode_signed(make(approvers=many), KEY)


def test_grant_files_are_immutable_and_ids_random() -> None:
    grant = make()
    with pytest.raises(AttributeError):
        grant.user = "bob"  # type: ignore[misc]
    assert replace(grant, user="bob").user == "bob"
    ids = {new_grant_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(bn.is_grant_id(grant_id) for grant_id in ids)
