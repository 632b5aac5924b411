"""The node program's only way to check grants: broker-grant-check (pam/broker_node/grants.py).
Its output is parsed strictly, and a checker that is missing, fails or talks nonsense fails
closed: every grant invalid, install-grant refusing and writing nothing."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker.grants.grantfile import encode_signed
from tests.helpers import load_node_module
from tests.node_tree import NodeTree, bn, checker, now_s
from tests.unit.test_node_program import install_payload

grants = load_node_module("grants")


def run(paths: Any, command: str, payload: Any = None) -> dict[str, Any]:
    out = io.StringIO()
    stdin = io.StringIO("" if payload is None else json.dumps(payload))
    assert bn.node_main([command], stdin, out, paths) == 0
    return dict(json.loads(out.getvalue()))


def broken(node: NodeTree, tmp_path: Path, script: str | None) -> Any:
    """node.paths with a checker that is missing (None) or is this shell script."""
    path = tmp_path / "fake-check"
    if script is not None:
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
    return bn.Paths(str(node.root), checker=str(path))


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (None, "No such file"),
        ("exit 1", "exit 1"),
        ("echo valid=1; echo end", "unexpected line"),
        ("printf 'name=x\\nvalid=1\\n'", "cut short"),
        ("sleep 30", "timed out"),
    ],
    ids=["missing", "fails", "no-name", "no-end", "hangs"],
)
def test_a_checker_without_a_verdict_fails_closed(
    node: NodeTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None, why: str
) -> None:
    monkeypatch.setattr(grants, "TIMEOUT", 1.0)
    grant = node.grant()
    node.install(grant)
    paths = broken(node, tmp_path, script)
    status = run(paths, "status")
    [entry] = status["grants"]
    assert entry["id"] == grant.id and entry["valid"] is False and entry["user"] is None
    assert entry["problem"].startswith("broker-grant-check unavailable") and why in entry["problem"]
    assert status["bootstrapped"] is False and entry["problem"] in status["problems"]
    payload, _ = install_payload(node)
    reply = run(paths, "install-grant", payload)
    assert reply["ok"] is False and reply["error"].startswith("broker-grant-check unavailable")
    assert [p.name for p in (node.root / "var/lib/broker/grants").iterdir()] == [grant.id]
    assert list((node.root / "etc/sudoers.d").iterdir()) == []
    expired = node.grant(
        not_before=now_s().replace(year=2020), not_after=now_s().replace(year=2021)
    )
    node.install(expired)
    reaped = run(paths, "reap")
    assert reaped["grants"] == [] and len(reaped["errors"]) == 2, "nothing removed blind"


def test_the_real_checker_gives_every_field(node: NodeTree) -> None:
    grant = node.grant(commands="gpu-reset,nvidia-smi", max_sessions=3, workloads=True)
    node.install(grant)
    checked = bn.check_all(node.paths, int(time.time()))
    assert (checked.config_problem, checked.unavailable) == (None, None)
    [seen] = checked.grants
    assert seen == bn.CheckedGrant(
        grant.id,
        grant.id,
        "gpu01",
        "alice",
        "root",
        ("gpu-reset", "nvidia-smi"),
        int(grant.not_before.timestamp()),
        int(grant.not_after.timestamp()),
        True,
        True,
        3,
        True,
        None,
        None,
    )


def test_a_changed_byte_or_a_revocation_makes_a_grant_invalid(node: NodeTree) -> None:
    good, changed, revoked = node.grant(), node.grant(), node.grant()
    for grant in (good, revoked):
        node.install(grant)
    node.install(changed, text=encode_signed(changed, node.key).replace("root", "daem", 1))
    (node.root / "var/lib/broker/revoked" / revoked.id).write_text("2099-01-01T00:00:00Z\n")
    assert node.status_of(good.id)["valid"] is True
    assert (node.status_of(changed.id)["valid"], node.status_of(changed.id)["problem"]) == (
        False,
        "bad signature",
    )
    assert node.status_of(revoked.id)["problem"] == "revoked"


def test_a_broken_key_is_the_config_problem_of_every_grant(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    (node.root / "etc/broker/grant-key.pub").write_text("broker-grant-key-v1 nonsense\n")
    status = run(node.paths, "status")
    [problem] = status["problems"][:1]
    assert problem.startswith("grant-key.pub: ") and status["bootstrapped"] is False
    assert status["grants"][0]["valid"] is False and status["grants"][0]["problem"] == problem
    payload, _ = install_payload(node)
    assert run(node.paths, "install-grant", payload)["error"] == f"node not bootstrapped: {problem}"


def test_a_grant_file_that_holds_another_grant_is_invalid(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant, name="g" + "0" * 16)
    assert node.status_of("g" + "0" * 16)["problem"] == f"holds grant {grant.id}"


@pytest.mark.parametrize(
    "output",
    [
        b"name=a\nvalid=1\nend\n",  # valid without the parsed fields
        b"name=a\nvalid=0\nend\n",  # invalid without a problem
        b"name=a\nvalid=0\nproblem=x\nproblem=y\nend\n",
        b"name=a\nvalid=0\nproblem=x\nsecret=1\nend\n",
        b"name=a\nvalid=2\nproblem=x\nend\n",
        b"name=a\nvalid=0\nproblem=x\nnot_after=-1\nid=g\nend\n",
        b"name=a\nvalid=0\nproblem=x\nend",
        b"config_problem=x\nname=a\nvalid=0\nproblem=\xff\nend\n",
        b"name=a\nconfig_problem=x\nvalid=0\nproblem=x\nend\n",
    ],
)
def test_output_is_parsed_strictly(output: bytes) -> None:
    with pytest.raises(grants.Unavailable):
        grants.parse_output(output)


def test_output_of_an_unreadable_config() -> None:
    config, blocks, problem = grants.parse_output(
        b"config_problem=node.conf: missing\nname=a\nvalid=0\nreason=bad_file\n"
        b"problem=not a grant id\nend\n"
    )
    assert (config, problem) == ("node.conf: missing", None)
    assert [(b.name, b.id, b.valid, b.reason, b.problem) for b in blocks] == [
        ("a", None, False, "bad_file", "not a grant id")
    ]


def test_the_default_checker_is_where_bootstrap_puts_it() -> None:
    assert bn.Paths().checker == "/usr/libexec/broker/broker-grant-check"
    assert bn.Paths("/srv/n").checker == "/srv/n/usr/libexec/broker/broker-grant-check"
    assert bn.Paths("/srv/n", checker=checker()).checker == checker()


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    return NodeTree(tmp_path / "node")
