"""Keytab rotation without servers: the node command's merge, prune and file rules, the
pure rotation rules, passwords and keys. The keytab format: tests/unit/test_keytabfile.py."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from broker.fleet import nodeprog
from broker.keytabs import keys, plan
from tests.helpers import REPO


def _node_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "broker_keytab", REPO / "pam" / "broker_keytab.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bk = _node_module()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
P1, P2 = "HTTP/web.hpc.test@HPC.TEST", "svc-web@HPC.TEST"


def entry(principal: str, kvno: int, enctype: int = 18, fill: int = 1) -> object:
    return bk.Entry(
        principal, kvno, enctype, bytes([fill]) * (32 if enctype == 18 else 16), 1700000000
    )


# ---------------------------------------------------------------- node command


def run_node(command: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    code = bk.main([command], io.StringIO(json.dumps(payload)), out, now=1700000000)
    return code, json.loads(out.getvalue())


def install_payload(path: Path, add: list[dict[str, object]], keep: list[int]) -> dict[str, object]:
    return {
        "path": str(path),
        "owner": "root",
        "group": "root",
        "mode": 0o600,
        "principals": [P1, P2],
        "add": add,
        "keep": keep,
    }


def key_entry(principal: str, kvno: int, fill: int) -> dict[str, object]:
    return {
        "principal": principal,
        "kvno": kvno,
        "enctype": 18,
        "key": base64.b64encode(bytes([fill]) * 32).decode(),
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_install_merges_keeps_prunes_and_leaves_other_principals(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "svc.keytab"
    other = entry("host/node.hpc.test@HPC.TEST", 9)
    path.write_bytes(bk.serialize([other, entry(P1, 1), entry(P1, 2)]))
    code, reply = run_node(
        "keytab-install", install_payload(path, [key_entry(P1, 3, 5), key_entry(P2, 3, 5)], [2, 3])
    )
    assert code == 0 and reply["ok"] and reply["changed"]
    assert reply["kvnos"] == {P1: [2, 3], P2: [3]}
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    assert bk.parse(path.read_bytes())[0].principal == other.principal
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".broker-tmp")]
    # Same again: nothing to write.
    code, reply = run_node(
        "keytab-install", install_payload(path, [key_entry(P1, 3, 5), key_entry(P2, 3, 5)], [2, 3])
    )
    assert reply["changed"] is False
    # Prune to 3 only; no key material in any reply.
    code, reply = run_node("keytab-install", install_payload(path, [], [3]))
    assert reply["kvnos"] == {P1: [3], P2: [3]}
    assert "AAAA" not in json.dumps(reply) and "BQUF" not in json.dumps(reply)
    code, listed = run_node("keytab-list", {"path": str(path), "principals": [P1]})
    assert listed["kvnos"] == {P1: [3]} and listed["mode"] == 0o600 and listed["owner"] == "root"


def test_install_refuses_unsafe_input(tmp_path: Path) -> None:
    path = tmp_path / "svc.keytab"
    cases = [
        {**install_payload(path, [], [1]), "path": "relative/x"},
        {**install_payload(path, [], [1]), "path": "/etc/../x"},
        {**install_payload(path, [], [1]), "mode": 0o644},
        {**install_payload(path, [], [1]), "owner": "root;rm"},
        install_payload(path, [key_entry(P1, 5, 1)], [1]),  # added version not kept
        install_payload(path, [key_entry("other@HPC.TEST", 1, 1)], [1]),
        {**install_payload(path, [], [1]), "principals": ["bad principal@X"]},
    ]
    for payload in cases:
        code, reply = run_node("keytab-install", payload)
        assert code == 2 and "error" in reply, payload
    code, reply = run_node("nope", {})
    assert code == 2


def test_install_refuses_a_link_and_a_loose_directory(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "target").write_bytes(b"")
    (tmp_path / "svc.keytab").symlink_to(tmp_path / "target")
    code, reply = run_node("keytab-install", install_payload(tmp_path / "svc.keytab", [], [1]))
    assert code == 0 and not reply["ok"] and "svc.keytab" in str(reply["error"])
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    code, reply = run_node("keytab-install", install_payload(loose / "k", [], [1]))
    assert not reply["ok"] and "writable by root only" in str(reply["error"])


def test_keytab_commands_use_their_own_launcher() -> None:
    assert nodeprog.argv_for("keytab-install")[-2:] == [nodeprog.KEYTAB_PROGRAM, "keytab-install"]
    assert nodeprog.argv_for("status")[-2] == nodeprog.NODE_PROGRAM
    with pytest.raises(ValueError):
        nodeprog.argv_for("keytab-nope")


# ---------------------------------------------------------------- rules


def test_kept_versions_follow_count_and_ticket_lifetime() -> None:
    life = timedelta(hours=10)
    common = {"keep_old": 1, "max_ticket_lifetime": life, "now": NOW}
    present = {1, 2, 3, 4}
    # Old versions beyond keep_old go once their tickets can no longer be alive.
    assert plan.keep_kvnos(current=4, staged=5, retired={}, present=present, **common) == {3, 4, 5}
    recent = {2: NOW - timedelta(hours=9), 3: NOW - timedelta(hours=1)}
    assert plan.keep_kvnos(current=4, staged=None, retired=recent, present=present, **common) == {
        2,
        3,
        4,
    }
    expired = {2: NOW - timedelta(hours=11)}
    assert plan.keep_kvnos(current=4, staged=None, retired=expired, present=present, **common) == {
        3,
        4,
    }
    zero = {**common, "keep_old": 0}
    assert plan.keep_kvnos(current=4, staged=None, retired={}, present=present, **zero) == {4}


def test_resume_decisions_never_change_the_password_twice() -> None:
    def decide(state: str, now_kvno: int, recorded: int | None = None) -> str:
        return plan.resume(plan.Found(state, 4, 5, recorded, now_kvno))

    assert decide("planned", 4) == "discard"
    assert decide("staged", 4) == "discard"
    assert decide("staged", 6) == "discard"  # someone else changed AD: still never ours
    assert decide("ad_pending", 4) == "discard"  # AD never got it
    assert decide("ad_pending", 5) == "verify"  # AD got it; nodes hold the staged keys
    assert decide("ad_pending", 7) == "recover"
    assert decide("ad_set", 5, 5) == "verify"
    assert decide("ad_set", 6, 6) == "recover"  # crashed while re-deriving: keys lost
    with pytest.raises(ValueError):
        decide("done", 5)


def test_due_and_backoff() -> None:
    assert plan.is_due(None, timedelta(days=30), NOW)
    assert not plan.is_due(NOW - timedelta(days=29), timedelta(days=30), NOW)
    assert plan.is_due(NOW - timedelta(days=30), timedelta(days=30), NOW)
    assert [plan.backoff(n).total_seconds() for n in (1, 2, 3)] == [60, 120, 240]
    assert plan.backoff(50) == timedelta(hours=1)


# ---------------------------------------------------------------- secrets


def test_passwords_are_long_complex_random_and_never_printed() -> None:
    seen = set()
    for _ in range(200):
        secret = keys.new_password()
        text = secret.reveal()
        seen.add(text)
        assert len(text) == 31
        assert any(c.islower() for c in text) and any(c.isupper() for c in text)
        assert any(c.isdigit() for c in text) and any(not c.isalnum() for c in text)
        assert text not in repr(secret) and text not in str(secret) and text not in f"{secret}"
    assert len(seen) == 200
    key = keys.Key(18, b"\x01" * 32)
    assert "\\x01" not in repr(key) and "AQEB" not in repr(key)
