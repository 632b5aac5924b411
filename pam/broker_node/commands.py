"""`broker-node CMD`: JSON in on stdin, JSON out on stdout (docs/grants.md). The dispatch,
and the small commands: collect and ack (the event spool), quarantine and release."""

from __future__ import annotations

import os
import time

from .contract import (
    QUARANTINE_REASON_MAX,
    Paths,
    Quarantine,
    clean,
    is_group_name,
    is_quarantine_reason,
    parse_utc,
    render_quarantine,
)
from .drift import drift_scan
from .files import fsync_dir, open_dir, read_secure, remove_if_present, write_atomic
from .install import install_grant
from .revoke import end_sessions_command, reap, revoke
from .spool import event_names, is_event_id
from .status import node_status
from .store import load_conf
from .usage import Usage, id_list
from .watch import release_main, watch_main

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import TextIO


def node_main(argv: list[str], stdin: TextIO, stdout: TextIO, paths: Paths | None = None) -> int:
    """`broker-node CMD`: JSON in on stdin, JSON out on stdout; 0 answered, 2 bad usage."""
    import json

    here = paths if paths is not None else Paths()
    now = int(time.time())
    if argv[:1] == ["watch"]:
        return _watch(here, argv[1:], stdout)
    try:
        if len(argv) != 1:
            raise Usage(
                "usage: broker-node status|install-grant|revoke|reap|collect|ack|"
                "quarantine|release|end-sessions|drift-scan, or broker-node watch [--interval S | --release]"
            )
        text = stdin.read((1 << 20) + 1)
        if len(text) > 1 << 20:
            raise Usage("input larger than 1 MiB")
        try:
            payload = json.loads(text) if text.strip() else {}
        except ValueError:
            raise Usage("stdin is not JSON") from None
        if not isinstance(payload, dict):
            raise Usage("stdin must be a JSON object")
        command = argv[0]
        if command == "status":
            reply = node_status(here, now)
        elif command == "install-grant":
            reply = install_grant(here, payload, now)
        elif command == "revoke":
            reply = revoke(here, payload, now)
        elif command == "reap":
            reply = reap(here, now)
        elif command == "collect":
            reply = collect(here)
        elif command == "ack":
            reply = ack(here, payload)
        elif command == "quarantine":
            reply = quarantine(here, payload)
        elif command == "release":
            reply = release(here, payload)
        elif command == "end-sessions":
            reply = end_sessions_command(here, payload, now)
        elif command == "drift-scan":
            reply = drift_scan(here, payload)
        else:
            raise Usage(f"unknown command {clean(command, 40)!r}")
    except Usage as exc:
        stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 2
    stdout.write(json.dumps(reply, sort_keys=True) + "\n")
    return 0


def _watch(paths: Paths, args: list[str], stdout: TextIO) -> int:
    """`watch [--interval S]` (1 to 60 s, default 5): the node's enforcement loop;
    `watch --release` (the unit's ExecStopPost=): free its cgroup for the next watcher."""
    interval = 5
    if args == ["--release"]:
        return release_main(paths)
    if len(args) == 2 and args[0] == "--interval" and args[1].isdigit() and 1 <= int(args[1]) <= 60:
        interval = int(args[1])
    elif args:
        stdout.write("usage: broker-node watch [--interval SECONDS (1-60) | --release]\n")
        return 2
    return watch_main(paths, interval, stdout)


def collect(paths: Paths) -> dict[str, object]:
    """The oldest 1000 spooled events; unreadable ones are reported, never dropped."""
    import json

    events: list[object] = []
    errors: list[str] = []
    for event_id in event_names(paths)[:1000]:
        data = read_secure(os.path.join(paths.events, f"{event_id}.json"))
        try:
            event = json.loads(data) if isinstance(data, bytes) else None
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("event_id") == event_id:
            events.append(event)
        else:
            errors.append(f"{event_id}: {data if isinstance(data, str) else 'not an event'}")
    return {"events": events, "errors": errors}


def ack(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """Delete events the broker has stored: the spool's only way to shrink."""
    ids = id_list(payload, "event_ids", is_event_id)
    acked = [e for e in ids if remove_if_present(os.path.join(paths.events, f"{e}.json"))]
    if acked:
        fsync_dir(paths.events)
    return {"acked": acked, "missing": [e for e in ids if e not in set(acked)]}


def quarantine(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """Place (or replace) the quarantine marker; from then on the module admits only root and
    members of `group` (docs/grants.md)."""
    keys = set(payload)
    if not {"reason", "since"} <= keys <= {"reason", "since", "group"}:
        raise Usage("quarantine takes reason, since and optionally group")
    reason, since, group = payload["reason"], payload["since"], payload.get("group")
    if not isinstance(reason, str) or not is_quarantine_reason(reason):
        raise Usage(f"reason must be printable text of 1 to {QUARANTINE_REASON_MAX} characters")
    when = parse_utc(since) if isinstance(since, str) else None
    if when is None:
        raise Usage("since must be YYYY-MM-DDTHH:MM:SSZ")
    if group is None:
        group = ""
    if not isinstance(group, str) or not is_group_name(group):
        raise Usage("group must be a group name or null")

    def refuse(error: str) -> dict[str, object]:
        return {"quarantined": False, "node": None, "error": error}

    conf = load_conf(paths)
    if isinstance(conf, str):
        return refuse(f"node not bootstrapped: {conf}")
    data = render_quarantine(Quarantine(conf.node, when, group, reason))
    try:
        os.close(open_dir(paths.broker_etc))
        write_atomic(paths.broker_etc, os.path.basename(paths.quarantine), data, 0o644)
    except OSError as exc:
        return refuse(f"cannot write the marker: {clean(exc.strerror or exc, 200)}")
    return {"quarantined": True, "node": conf.node, "error": None}


def release(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """Remove the quarantine marker; `released` is false when there was none."""
    if payload:
        raise Usage("release takes {}")
    try:
        released = remove_if_present(paths.quarantine)
        if released:
            fsync_dir(paths.broker_etc)
    except OSError as exc:
        return {"released": False, "error": f"cannot remove the marker: {clean(exc, 200)}"}
    return {"released": released, "error": None}
