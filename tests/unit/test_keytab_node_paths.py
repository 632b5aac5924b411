"""Where the node program writes keytabs (pam/broker_keytab.py, open_directory): a
directory reached from / one level at a time, every level root's and writable by root
only, and every open, rename and fsync relative to that directory's fd, so a user who can
write some parent cannot redirect the write (with its chown) by swapping a directory for
a link between the check and the write. Also: stale temporary files go, and the list form
of keytab-verify answers each keytab on its own even on an I/O error."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.keytabs import keytabfile as kf
from tests.helpers import load_node_script

bk = load_node_script("broker_keytab.py", "broker_keytab")
P1 = "HTTP/web.hpc.test@HPC.TEST"
KEY = base64.b64encode(b"\x07" * 32).decode()
NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the node program chowns; root only")


def run(command: str, payload: object) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = bk.main([command], io.StringIO(json.dumps(payload)), out)
    return code, json.loads(out.getvalue())


def item(path: Path) -> dict[str, object]:
    return {
        "path": str(path),
        "principals": [P1],
        "owner": "root",
        "group": "root",
        "mode": 0o600,
        "keep": [2],
        "add": [{"principal": P1, "kvno": 2, "enctype": 18, "key": KEY}],
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path/anc/kt: kt is root's and 0755, as a keytab directory should be."""
    tmp_path.chmod(0o755)
    (tmp_path / "anc" / "kt").mkdir(parents=True, mode=0o755)
    (tmp_path / "victim").mkdir(mode=0o755)
    return tmp_path


def test_a_parent_another_user_can_write_refuses_every_write(tree: Path) -> None:
    os.chown(tree / "anc", NOBODY, NOBODY)  # nobody could swap kt for a link at any moment
    path = tree / "anc" / "kt" / "x.keytab"
    code, reply = run("keytab-install", {"keytabs": [item(path)]})
    assert code == 0 and reply["results"][0]["ok"] is False
    assert reply["results"][0]["error"] == f"{tree / 'anc'} must be owned by root and writable by root only"  # fmt: skip
    assert not path.exists()
    for command, extra in (
        ("keytab-sync", {}),
        ("keytab-list", {"owner": "root", "group": "root"}),
    ):
        code, reply = run(command, {"path": str(path), "principals": [P1], **extra})
        assert code == 0 and reply["ok"] is False and "must be owned by root" in reply["error"]


def test_a_directory_swapped_for_a_link_after_the_check_is_not_written_through(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = bk.open_directory

    def then_swapped(directory: str) -> int:
        fd: int = checked(directory)
        os.rename(tree / "anc" / "kt", tree / "anc" / "kt.old")
        os.symlink(tree / "victim", tree / "anc" / "kt")  # what a writable parent allows
        return fd

    monkeypatch.setattr(bk, "open_directory", then_swapped)
    code, reply = run("keytab-install", {"keytabs": [item(tree / "anc" / "kt" / "x.keytab")]})
    assert code == 0 and reply["results"][0]["ok"] is True
    assert list((tree / "victim").iterdir()) == []  # the write stayed in the checked directory
    assert [e.kvno for e in kf.parse((tree / "anc" / "kt.old" / "x.keytab").read_bytes())] == [2]


def test_a_link_anywhere_on_the_path_is_refused(tree: Path) -> None:
    os.symlink(tree / "anc" / "kt", tree / "link")
    code, reply = run("keytab-install", {"keytabs": [item(tree / "link" / "x.keytab")]})
    assert code == 0 and reply["results"][0] == {
        "ok": False,
        "error": f"{tree / 'link'}: link is not a directory (or a link)",
    }
    assert list((tree / "anc" / "kt").iterdir()) == []


def test_temporary_files_a_killed_run_left_are_removed(tree: Path) -> None:
    directory = tree / "anc" / "kt"
    stale = directory / ".x.keytab.broker-0123456789abcdef"
    stale.write_bytes(b"keys of a run killed before its rename")
    elsewhere = directory / ".x.keytab.broker-fedcba9876543210"
    elsewhere.symlink_to(tree / "victim" / "kept")
    (tree / "victim" / "kept").write_bytes(b"not ours")
    other = directory / ".y.keytab.broker-0123456789abcdef"  # another keytab's: its own run's
    other.write_bytes(b"")
    code, reply = run("keytab-install", {"keytabs": [item(directory / "x.keytab")]})
    assert code == 0 and reply["results"][0]["ok"] is True
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["x.keytab", elsewhere.name, other.name]
    )
    assert (tree / "victim" / "kept").read_bytes() == b"not ours"


def test_an_io_error_on_one_keytab_leaves_the_others_answered(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, gone = tree / "anc" / "kt" / "broken.keytab", tree / "anc" / "kt" / "gone.keytab"
    reading = bk.read_keytab

    def eio(path: str, dir_fd: int | None = None) -> Any:
        if path == str(broken):
            raise OSError(5, "Input/output error")
        return reading(path, dir_fd)

    monkeypatch.setattr(bk, "read_keytab", eio)
    token = {"principal": P1, "token": base64.b64encode(b"not a ticket").decode()}
    payload = {"keytabs": [{"path": str(p), "tokens": [token]} for p in (broken, gone)]}
    code, reply = run("keytab-verify", payload)
    assert code == 0 and reply["ok"] is True
    first, second = reply["results"]
    assert first == {"ok": False, "error": f"{broken}: Input/output error"}
    assert second["ok"] and second["results"][0]["error"] == f"{gone} does not exist"
