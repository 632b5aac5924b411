"""Drift (broker/detect/drift.py): checking a node's drift-scan, comparing two, and what
the comparison shows. The manifests come from the real node program (pam/broker_node/drift.py)
run over a node tree, so both halves are tested against each other."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import IntegrityError
from broker.detect import drift
from broker.detect.drift import Change, Manifest, diff, mask_key_line, parse_scan, unexpected
from tests.node_tree import NodeTree
from tests.unit.test_node_program import ALICE_KEY, drift_tree, put, scan

KEY_BODY = ALICE_KEY.split()[1]


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    tree = NodeTree(tmp_path / "node")
    drift_tree(tree.root)
    return tree


def manifest(node: NodeTree) -> Manifest:
    return parse_scan(scan(node))


def by_path(changes: list[Change]) -> dict[str, Change]:
    return {change.path: change for change in changes}


# ---------------------------------------------------------------- a node's scan, end to end


def test_a_node_scan_parses_and_survives_storage(node: NodeTree) -> None:
    first = manifest(node)
    assert first.entries["/usr/bin/sudo"].mode == 0o4755
    assert first.entries["/usr/bin/sudo"].category == "setuid"
    assert Manifest.from_json(first.to_json()) == first
    assert diff(first, manifest(node)) == [], "nothing changed, nothing reported"


def test_what_a_session_left_behind_is_named(node: NodeTree) -> None:
    root = node.root
    baseline = manifest(node)
    put(root, "root/.ssh/authorized_keys", ALICE_KEY + "\n", 0o600)
    (root / "etc/sudoers.d/site").chmod(0o666)
    put(root, "usr/local/bin/rootshell", b"\x7fELF sh", 0o4755)
    (root / "etc/cron.d/backup").unlink()
    with (root / "etc/passwd").open("a") as passwd:
        passwd.write("toor:x:0:0::/root:/bin/bash\n")
    (root / "etc/sudoers.d/link").unlink()
    (root / "etc/sudoers.d/link").symlink_to("/etc/shadow")
    os.chown(root / "etc/security/limits.conf", 1000, 1000)
    (root / "etc/cron.d/big").unlink()
    (root / "etc/cron.d/big").mkdir()
    changes = by_path(diff(baseline, manifest(node)))
    assert set(changes) == {
        "/root/.ssh/authorized_keys",
        "/etc/sudoers.d/site",
        "/usr/local/bin/rootshell",
        "/etc/cron.d/backup",
        "/etc/passwd",
        "/etc/sudoers.d/link",
        "/etc/security/limits.conf",
        "/etc/cron.d/big",
    }, "/etc/cron.d itself is not drift: a directory's size moves with its entries"

    key = changes["/root/.ssh/authorized_keys"]
    assert (key.kind, key.category, key.what) == ("added", "authorized_keys", ())
    assert key.lines_added == (f"ssh-ed25519 …{KEY_BODY[-16:]} alice@laptop",)
    assert key.summary() == (
        "added /root/.ssh/authorized_keys (authorized_keys): "
        f"+1 line ssh-ed25519 …{KEY_BODY[-16:]} alice@laptop"
    )
    site = changes["/etc/sudoers.d/site"]
    assert (site.kind, site.what, site.lines_added) == ("changed", ("mode",), ())
    assert site.summary() == "changed /etc/sudoers.d/site (sudoers): mode 0440 -> 0666"
    shell = changes["/usr/local/bin/rootshell"]
    assert (shell.kind, shell.category) == ("added", "setuid")
    assert shell.summary() == (
        "added /usr/local/bin/rootshell (setuid): file, mode 4755, owner 0:0"
    )
    backup = changes["/etc/cron.d/backup"]
    assert (backup.kind, backup.removed_total) == ("removed", 1)
    assert backup.lines_removed == ("0 3 * * * root /usr/local/sbin/backup",)
    passwd = changes["/etc/passwd"]
    assert (passwd.what, passwd.lines_added, passwd.lines_removed) == (
        ("content",),
        ("toor:x:0:0::/root:/bin/bash",),
        (),
    )
    assert passwd.summary() == (
        "changed /etc/passwd (accounts): +1 line toor:x:0:0::/root:/bin/bash"
    )
    link = changes["/etc/sudoers.d/link"]
    assert link.what == ("target",) and "target /tmp/elsewhere -> /etc/shadow" in link.summary()
    limits = changes["/etc/security/limits.conf"]
    assert limits.what == ("owner",) and "owner 0:0 -> 1000:1000" in limits.summary()
    big = changes["/etc/cron.d/big"]
    assert big.what == ("mode", "type") and "type file -> directory" in big.summary()
    stored = json.dumps([dataclasses.asdict(c) for c in changes.values()])
    assert KEY_BODY not in stored and KEY_BODY[:-16] not in stored, "keys never shown whole"


def test_expected_changes_are_not_unexpected(node: NodeTree) -> None:
    baseline = manifest(node)
    put(node.root, "etc/cron.d/backup-nightly", "0 1 * * * root /usr/bin/true\n")
    put(node.root, "etc/cron.d/evil", "* * * * * root /tmp/x\n")
    changes = diff(baseline, manifest(node))
    assert [c.path for c in changes] == ["/etc/cron.d/backup-nightly", "/etc/cron.d/evil"]
    assert [c.path for c in unexpected(changes, ["/etc/cron.d/backup-*"])] == ["/etc/cron.d/evil"]
    assert unexpected(changes, ["/etc/*"]) == []
    assert unexpected(changes, []) == changes
    assert [c.path for c in unexpected(changes, "/etc/cron.d/evil")] == [  # type: ignore[arg-type]
        "/etc/cron.d/backup-nightly"
    ], "a single glob given as a string is one glob, not its characters"


# ---------------------------------------------------------------- checking a reply


def reply(**entries: dict[str, Any]) -> dict[str, Any]:
    base = {
        "/etc/sudoers": entry(category="sudoers"),
        "/etc/pam.d/sudo": entry(category="pam"),
    }
    base.update({path.replace("_", "/"): value for path, value in entries.items()})
    return {
        "entries": base,
        "texts": {"/etc/sudoers": "root ALL=(ALL) ALL\n"},
        "truncated": False,
        "errors": [],
    }


def entry(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "type": "f",
        "mode": 0o440,
        "uid": 0,
        "gid": 0,
        "size": 19,
        "sha256": "ab" * 32,
        "target": None,
        "category": "sudoers",
    }
    value.update(changes)
    return value


def _bad_path(path: str) -> Any:
    def damage(data: dict[str, Any]) -> None:
        data["entries"][path] = entry()

    return damage


def _set(field: str, value: Any) -> Any:
    def damage(data: dict[str, Any]) -> None:
        data["entries"]["/etc/sudoers"][field] = value

    return damage


def _texts(texts: dict[str, Any]) -> Any:
    return lambda data: data["texts"].update(texts)


BAD_REPLIES = [
    ("relative path", _bad_path("etc/sudoers")),
    ("dot-dot", _bad_path("/etc/../root/x")),
    ("dot", _bad_path("/etc/./x")),
    ("empty part", _bad_path("/etc//x")),
    ("trailing slash", _bad_path("/etc/x/")),
    ("NUL", _bad_path("/etc/x\x00y")),
    ("newline", _bad_path("/etc/cron.d/x\ny")),
    ("escape sequence", _bad_path("/etc/\x1b[31mx")),
    ("line separator", _bad_path("/etc/x\u2028")),
    ("lone surrogate", _bad_path("/etc/\udcff")),
    ("too long", _bad_path("/" + "x" * 4096)),
    ("mode as text", _set("mode", "0440")),
    ("mode as bool", _set("mode", True)),
    ("mode with type bits", _set("mode", 0o100440)),
    ("negative uid", _set("uid", -1)),
    ("huge gid", _set("gid", 2**32)),
    ("float size", _set("size", 1.5)),
    ("upper-case hash", _set("sha256", "AB" * 32)),
    ("short hash", _set("sha256", "ab")),
    ("target on a file", _set("target", "/x")),
    ("unknown type", _set("type", "p")),
    ("unknown category", _set("category", "kernel")),
    ("extra field", _set("owner", "root")),
    ("missing field", lambda d: d["entries"]["/etc/sudoers"].pop("gid")),
    ("entry not an object", lambda d: d["entries"].update({"/etc/x": ["f"]})),
    ("hash on a directory", lambda d: d["entries"].update({"/etc/x": entry(type="d")})),
    ("empty symlink target", lambda d: d["entries"].update({"/x": entry(type="l", target="")})),
    ("control in target", lambda d: d["entries"].update({"/x": entry(type="l", target="a\nb")})),
    ("text of an unlisted path", _texts({"/etc/shadow": "root:$6$..."})),
    ("text of a PAM file", _texts({"/etc/pam.d/sudo": "auth ..."})),
    ("text not a string", _texts({"/etc/sudoers": 7})),
    ("text too long", _texts({"/etc/sudoers": "x" * (64 * 1024 + 1)})),
    ("text with a lone surrogate", _texts({"/etc/sudoers": "a\udcffb"})),
    ("truncated as text", lambda d: d.update(truncated="no")),
    ("errors not a list", lambda d: d.update(errors="none")),
    ("error not a string", lambda d: d.update(errors=[1])),
    ("extra top-level key", lambda d: d.update(more=True)),
    ("entries a list", lambda d: d.update(entries=[])),
    ("missing texts", lambda d: d.pop("texts")),
]


@pytest.mark.parametrize(("label", "damage"), BAD_REPLIES, ids=[b[0] for b in BAD_REPLIES])
def test_parse_scan_refuses_anything_not_allowed(label: str, damage: Any) -> None:
    data = reply()
    parse_scan(copy.deepcopy(data))  # the undamaged reply is fine
    damage(data)
    with pytest.raises(IntegrityError, match="drift-scan reply refused"):
        parse_scan(data)


def test_parse_scan_bounds_counts_and_total_text(monkeypatch: pytest.MonkeyPatch) -> None:
    data = reply()
    monkeypatch.setattr(drift, "MAX_ENTRIES", 1)
    with pytest.raises(IntegrityError, match="at most 1"):
        parse_scan(data)
    monkeypatch.setattr(drift, "MAX_ENTRIES", 50_000)
    monkeypatch.setattr(drift, "MAX_TEXTS", 10)
    with pytest.raises(IntegrityError, match="texts larger than 10 bytes"):
        parse_scan(data)


def test_node_errors_are_kept_cleaned_and_bounded() -> None:
    data = reply()
    data["errors"] = ["/etc/x\x1b[2J: Permission denied", "y" * 2000]
    errors = parse_scan(data).errors
    assert errors[0] == "/etc/x?[2J: Permission denied"
    assert len(errors[1]) == 500


@pytest.mark.parametrize("text", ["not json", "[1]", '{"entries": {}}'])
def test_a_damaged_stored_manifest_is_refused(text: str) -> None:
    with pytest.raises(IntegrityError):
        Manifest.from_json(text)


# ---------------------------------------------------------------- comparing


def two(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    return diff(parse_scan(old), parse_scan(new))


def test_a_truncated_scan_names_nothing_removed() -> None:
    old, new = reply(), reply()
    del new["entries"]["/etc/pam.d/sudo"]
    assert [c.kind for c in two(old, new)] == ["removed"]
    new["truncated"] = True
    assert two(old, new) == []


def test_directory_size_is_not_drift_but_an_unhashed_file_size_is() -> None:
    old = reply(_etc_cron_d=entry(type="d", sha256=None, size=4096, category="cron"))
    new = reply(_etc_cron_d=entry(type="d", sha256=None, size=8192, category="cron"))
    assert two(old, new) == []
    old = reply(_var_big=entry(sha256=None, size=1 << 27, category="setuid"))
    new = reply(_var_big=entry(sha256=None, size=(1 << 27) + 1, category="setuid"))
    (change,) = two(old, new)
    assert change.what == ("content",) and change.summary().endswith("(setuid): content")


def test_line_changes_are_a_multiset_capped_and_cleaned() -> None:
    old, new = reply(), reply()
    old["texts"]["/etc/sudoers"] = "a\nb\nb\n"
    new["texts"]["/etc/sudoers"] = "b\na\n" + "".join(
        f"l{i} \x1b\t{'z' * 400}\n" for i in range(120)
    )
    new["entries"]["/etc/sudoers"]["sha256"] = "cd" * 32
    (change,) = two(old, new)
    assert (change.added_total, change.removed_total) == (120, 1)
    assert change.lines_removed == ("b",)
    assert len(change.lines_added) == 50
    assert all(len(line) <= 300 for line in change.lines_added)
    assert change.lines_added[0].startswith("l0 ? zzz") and change.lines_added[0].endswith("…")
    assert "+120 lines l0 ? zzz" in change.summary() and "(+119 more)" in change.summary()
    assert "-1 line b" in change.summary()
    assert len(change.summary()) <= 500


def test_reordered_lines_are_a_content_change_without_lines() -> None:
    old, new = reply(), reply()
    old["texts"]["/etc/sudoers"] = "a\nb\n"
    new["texts"]["/etc/sudoers"] = "b\na\n"
    new["entries"]["/etc/sudoers"]["sha256"] = "cd" * 32
    (change,) = two(old, new)
    assert change.summary() == "changed /etc/sudoers (sudoers): content"


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (ALICE_KEY, f"ssh-ed25519 …{KEY_BODY[-16:]} alice@laptop"),
        (f"ssh-ed25519 {KEY_BODY}", f"ssh-ed25519 …{KEY_BODY[-16:]}"),
        (
            f'from="10.0.0.1",command="echo hi there",no-pty ssh-ed25519 {KEY_BODY} ops key',
            f"[from,command,no-pty] ssh-ed25519 …{KEY_BODY[-16:]} ops key",
        ),
        (
            f"ssh-ed25519-cert-v01@openssh.com {KEY_BODY} c",
            f"ssh-ed25519-cert-v01@openssh.com …{KEY_BODY[-16:]} c",
        ),
        ("# added for INC-9", "# added for INC-9"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "(not a key line, 35 characters)"),
        (KEY_BODY, f"(not a key line, {len(KEY_BODY)} characters)"),
        ("ssh-ed25519 short alice", "(not a key line, 23 characters)"),
    ],
)
def test_key_lines_show_type_tail_and_comment_only(line: str, shown: str) -> None:
    assert mask_key_line(line) == shown
