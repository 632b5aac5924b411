"""A shared keytab-install run (broker/keytabs/distribute.py, coalesce.py) must never let
one account's keytab fail another's: the node program's limits are checked on the broker
before anything is sent, a run the node refuses as a whole is resent keytab by keytab, and
input too large for the node program is that node's failure, never an exception that
stops a rotation worker. The read-back is checked principal by principal."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import RefusedError
from broker.fleet import nodeprog
from broker.fleet.ssh import CommandResult, NodeTarget
from broker.keytabs import distribute
from broker.keytabs import keytabfile as kf
from tests.helpers import load_node_script

bk = load_node_script("broker_keytab.py", "broker_keytab")
P1, P2 = "HTTP/web.hpc.test@HPC.TEST", "svc-web@HPC.TEST"
NODE = NodeTarget("gpu01", "127.0.0.1", 22)


def key(principal: str, kvno: int) -> kf.Entry:
    return kf.new_entry(principal, kvno, 18, b"\x07" * 32, 1700000000)


class InProcessNode:
    """SshPool.run with the real node program, in this process; every run's stdin kept."""

    def __init__(self) -> None:
        self.runs: list[bytes] = []

    def run(self, target: NodeTarget, argv: list[str], stdin: bytes | None = None,
            **_options: Any) -> CommandResult:  # fmt: skip
        self.runs.append(stdin or b"")
        out = io.StringIO()
        code = bk.main([argv[-1]], io.StringIO((stdin or b"").decode()), out)
        return CommandResult(target.name, code, out.getvalue(), "", None, 1.0)


def spec(path: Path, principals: tuple[str, ...] = (P1,)) -> distribute.KeytabSpec:
    return distribute.KeytabSpec(str(path), "root", "root", 0o600, principals)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="the node program chowns")
def test_a_keytab_the_node_refuses_as_usage_fails_alone_in_a_shared_run(tmp_path: Path) -> None:
    good = distribute.install_item(spec(tmp_path / "good.keytab"), {2}, [key(P1, 2)])
    bad = {**good, "path": str(tmp_path / "bad.keytab"), "mode": 0o644}  # the node says exit 2
    node = InProcessNode()
    replies = distribute._send_installs(node, 5.0)(NODE, [good, bad])  # type: ignore[arg-type]
    assert replies[0].ok and replies[0].data is not None and replies[0].data["ok"] is True
    assert not replies[1].ok and "mode must be" in (replies[1].error or "")
    assert len(node.runs) == 3  # the shared run, then each keytab alone
    assert [e.kvno for e in kf.parse((tmp_path / "good.keytab").read_bytes())] == [2]


def test_the_node_programs_limits_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    many = tuple(f"HTTP/n{i}.hpc.test@HPC.TEST" for i in range(distribute.MAX_PRINCIPALS + 1))
    with pytest.raises(RefusedError, match="1 to 64 principals"):
        spec(tmp_path / "k", many)
    one = spec(tmp_path / "k")
    too_many_keys = [key(P1, 2)] * (distribute.MAX_ADD + 1)
    for keep, add in (
        ({2}, too_many_keys),
        (set(range(1, distribute.MAX_KEEP + 2)), []),
        ({0}, []),
        (set(), []),
    ):
        with pytest.raises(RefusedError):
            distribute.install_item(one, keep, add)


def test_input_too_large_for_the_node_program_is_that_nodes_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_large(payload: object) -> bytes:
        raise ValueError(f"node program input of 1048577 bytes is over {nodeprog.MAX_PAYLOAD}")

    monkeypatch.setattr(nodeprog, "encode_payload", too_large)
    result = distribute.install_one(InProcessNode(), NODE, spec(tmp_path / "k"), keep={2}, add=[key(P1, 2)])  # type: ignore[arg-type]  # fmt: skip
    assert result == distribute.NodeResult(
        "gpu01",
        False,
        f"gpu01: {tmp_path / 'k'}: node program input of 1048577 bytes is over 1048576",
    )


def test_each_principal_must_hold_only_kept_versions_after_the_write(tmp_path: Path) -> None:
    both = spec(tmp_path / "k", (P1, P2))
    data = {"ok": True, "kvnos": {P1: [1, 2], P2: [2, 3]}}  # in common: 2, which is kept
    reply = nodeprog.NodeReply("gpu01", True, data, None, 1.0)
    result = distribute.installed("gpu01", reply, both, {2, 3}, [key(P2, 3)])
    assert not result.ok and f"holds versions [1, 2] of {P1}" in (result.error or "")
    data["kvnos"] = {P1: [2, 3], P2: [2, 3]}
    assert distribute.installed("gpu01", reply, both, {2, 3}, [key(P1, 3), key(P2, 3)]).ok


def test_verify_input_too_large_for_one_node_fails_that_node_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime, timedelta

    from broker.keytabs.nodes import KeytabNodes

    class Pool:
        def map(self, work: Any, items: list[Any]) -> list[Any]:
            return [work(item) for item in items]

        def run(self, target: NodeTarget, argv: list[str], stdin: bytes | None = None,
                **_options: Any) -> CommandResult:  # fmt: skip
            said = '{"ok": true, "path": "/k", "results": []}'
            return CommandResult(target.name, 0, said, "", None, 1.0)

    small, large = {"path": "/k", "tokens": []}, {"path": "/k", "tokens": ["x" * (1 << 20)]}
    other = NodeTarget("gpu02", "127.0.0.2", 22)
    nodes = KeytabNodes(store=None, pool=Pool(), clock=lambda: datetime.now(UTC),  # type: ignore[arg-type]
                        max_ticket_lifetime=timedelta(hours=10))  # fmt: skip
    answers = nodes.call([NODE, other], "keytab-verify", {"gpu01": large, "gpu02": small})
    (_, first), (_, second) = answers
    assert not first.ok and "is over 1048576" in (first.error or "")
    assert second.ok
