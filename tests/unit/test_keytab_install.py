"""The node program's keytab-install (pam/broker_keytab.py): the one run that stages or
prunes a keytab on a node, with the new keys on stdin. It runs as root on the node, so
every field is allow-listed before anything is read or written, and a bad one anywhere
in the run writes nothing at all."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from broker.keytabs import keytabfile as kf
from tests.helpers import load_node_script

bk = load_node_script("broker_keytab.py", "broker_keytab")
P1, P2 = "HTTP/web.hpc.test@HPC.TEST", "svc-web@HPC.TEST"
KEY = base64.b64encode(b"\x07" * 32).decode()


def run(payload: object) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = bk.main(["keytab-install"], io.StringIO(json.dumps(payload)), out)
    return code, json.loads(out.getvalue())


def item(where: Path, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "path": str(where),
        "principals": [P1, P2],
        "owner": "root",
        "group": "root",
        "mode": 0o600,
        "keep": [1, 2],
        "add": [
            {"principal": P1, "kvno": 2, "enctype": 18, "key": KEY},
            {"principal": P2, "kvno": 2, "enctype": 18, "key": KEY},
        ],
    }
    base.update(changes)
    return base


@pytest.fixture
def keytab(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    path = directory / "svc.keytab"
    old = [kf.new_entry(p, 1, 18, b"\x01" * 32, 1700000000) for p in (P1, P2)]
    path.write_bytes(kf.serialize(old))
    path.chmod(0o600)
    return path


def versions(path: Path) -> dict[str, list[int]]:
    return kf.versions(
        kf.parse(path.read_bytes()), [kf.Principal.parse(P1), kf.Principal.parse(P2)]
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns to the owner")
def test_one_run_stages_several_keytabs_and_lists_what_is_on_disk(keytab: Path) -> None:
    second = keytab.with_name("other.keytab")
    code, reply = run({"keytabs": [item(keytab), item(second, mode=0o440, keep=[2])]})
    assert code == 0 and reply["ok"] is True
    first, other = reply["results"]
    assert first["ok"] and first["written"] and first["kvnos"] == {P1: [1, 2], P2: [1, 2]}
    assert other["ok"] and other["kvnos"] == {P1: [2], P2: [2]} and other["mode"] == 0o440
    assert stat.S_IMODE(second.stat().st_mode) == 0o440
    assert versions(keytab) == {P1: [1, 2], P2: [1, 2]}
    assert KEY not in json.dumps(reply)  # no key ever comes back
    assert sorted(p.name for p in keytab.parent.iterdir()) == ["other.keytab", "svc.keytab"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"mode": 0o644}, "mode must be"),
        ({"mode": True}, "mode must be"),
        ({"mode": 384.0}, "mode must be"),
        ({"keep": []}, "keep must be a list of 1 to"),
        ({"keep": [True, 2]}, "keep must be a whole number"),
        ({"keep": [2, 1 << 32]}, "keep must be a whole number"),
        ({"path": "/etc/../shadow"}, "plain absolute path"),
        ({"owner": "root;id"}, "owner must be a POSIX user name"),
        ({"group": ["root"]}, "group must be a POSIX group name"),
        ({"principals": ["bad principal"]}, "needs an upper-case @REALM"),
        ({"add": [{"principal": P1, "kvno": 2, "enctype": 18}]}, "exactly principal, kvno"),
        ({"add": [{"principal": P1, "kvno": 2, "enctype": 18, "key": "!!"}]}, "base64"),
        ({"add": [{"principal": P1, "kvno": 2, "enctype": 18, "key": "AAAA"}]}, "8 to 64 bytes"),
        ({"add": [{"principal": "x@HPC.TEST", "kvno": 2, "enctype": 18, "key": KEY}]}, "not one"),
        ({"add": [{"principal": P1, "kvno": 3, "enctype": 18, "key": KEY}]}, "not one of keep"),
        ({"add": [{"principal": P1, "kvno": 2, "enctype": 0, "key": KEY}]}, "enctype must be"),
        ({"extra": 1}, "each keytab has exactly"),
    ],
)
def test_a_bad_field_anywhere_refuses_the_whole_run_writing_nothing(
    keytab: Path, change: dict[str, object], said: str
) -> None:
    before = keytab.read_bytes()
    good = item(keytab.with_name("first.keytab"))  # valid, and first: still not written
    code, reply = run({"keytabs": [good, item(keytab, **change)]})
    assert code == 2 and said in reply["error"]
    assert keytab.read_bytes() == before and not keytab.with_name("first.keytab").exists()


def test_the_run_itself_is_checked(keytab: Path) -> None:
    for payload, said in [
        ({}, "keytabs must be a list of 1 to 64"),
        ({"keytabs": []}, "keytabs must be a list of 1 to 64"),
        ({"keytabs": [item(keytab)] * 65}, "keytabs must be a list of 1 to 64"),
        ({"keytabs": [item(keytab), item(keytab)]}, "a keytab path appears twice"),
    ]:
        code, reply = run(payload)
        assert code == 2 and said in reply["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns to the owner")
def test_a_refused_keytab_does_not_stop_the_others(keytab: Path) -> None:
    target = keytab.with_name("real")
    target.write_bytes(keytab.read_bytes())
    link = keytab.with_name("link.keytab")
    link.symlink_to(target)
    code, reply = run({"keytabs": [item(link), item(keytab, owner="no-such-user"), item(keytab.with_name("ok.keytab"))]})  # fmt: skip
    assert code == 0
    linked, unknown, fine = reply["results"]
    assert not linked["ok"] and "is a symbolic link" in linked["error"]
    assert not unknown["ok"] and unknown["error"] == "user no-such-user does not exist on this node"
    assert fine["ok"] and link.is_symlink() and versions(target) == {P1: [1], P2: [1]}


@pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns to the owner")
def test_a_failed_write_leaves_the_keytab_and_no_temporary_file(
    keytab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = keytab.read_bytes()

    def no_rename(source: str, target: str, **dir_fds: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bk.os, "rename", no_rename)
    code, reply = run({"keytabs": [item(keytab)]})
    assert code == 0 and reply["results"] == [
        {"ok": False, "error": f"{keytab}: No space left on device"}
    ]
    assert keytab.read_bytes() == before
    assert [p.name for p in keytab.parent.iterdir()] == ["svc.keytab"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns to the owner")
def test_a_write_another_program_undid_is_refused(
    keytab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = bk._write_atomic

    def and_undone(dfd: int, base: str, data: bytes, uid: int, gid: int, mode: int) -> None:
        old = keytab.read_bytes()
        written(dfd, base, data, uid, gid, mode)
        keytab.write_bytes(old)  # ktutil by hand, at the wrong moment

    monkeypatch.setattr(bk, "_write_atomic", and_undone)
    code, reply = run({"keytabs": [item(keytab)]})
    assert code == 0 and not reply["results"][0]["ok"]
    assert "changed while it was written" in reply["results"][0]["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns to the owner")
def test_new_entries_read_back_as_mit_writes_them(keytab: Path) -> None:
    code, reply = run({"keytabs": [item(keytab)]})
    assert code == 0 and reply["results"][0]["ok"]
    held = kf.parse(keytab.read_bytes())
    new = [e for e in held if e.kvno == 2]
    assert [(str(e.principal), e.name_type, e.enctype, e.key) for e in new] == [
        (P1, kf.NT_SRV_HST, 18, b"\x07" * 32),
        (P2, kf.NT_PRINCIPAL, 18, b"\x07" * 32),
    ]
    assert [e.raw for e in held if e.kvno == 1] == [
        e.raw for e in kf.parse(kf.serialize([kf.new_entry(p, 1, 18, b"\x01" * 32, 1700000000) for p in (P1, P2)]))
    ]  # fmt: skip


def test_verify_answers_several_keytabs_each_on_its_own(keytab: Path) -> None:
    link = keytab.with_name("link.keytab")
    link.symlink_to(keytab)
    token = {"principal": P1, "token": base64.b64encode(b"not a ticket").decode()}
    gone = keytab.with_name("gone.keytab")
    out = io.StringIO()
    payload = {"keytabs": [{"path": str(link), "tokens": [token]}, {"path": str(gone), "tokens": [token]}]}  # fmt: skip
    assert bk.main(["keytab-verify"], io.StringIO(json.dumps(payload)), out) == 0
    linked, missing = json.loads(out.getvalue())["results"]
    assert not linked["ok"] and "is a symbolic link" in linked["error"]
    assert missing["ok"] and missing["results"][0]["error"] == f"{gone} does not exist"
    for bad in ({"keytabs": []}, {"keytabs": [{"path": str(gone)}]}):
        out = io.StringIO()
        assert bk.main(["keytab-verify"], io.StringIO(json.dumps(bad)), out) == 2
