"""Calls to the node program (`broker-node`, docs/grants.md) over the pooled SSH connections.

The node's answer is data from a machine the broker does not control, so it
is parsed strictly: one JSON object, at most 4 MiB (drift-scan: 32 MiB), no NaN or duplicate
keys; anything else is an error naming the node, never an exception that
would abort a fan-out over many nodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.core import strictjson
from broker.fleet.pool import SshPool
from broker.fleet.ssh import CommandResult, NodeTarget

PYTHON = "/usr/bin/python3"
NODE_PROGRAM = "/usr/libexec/broker/broker-node"
KEYTAB_PROGRAM = "/usr/libexec/broker/broker-keytab"  # docs/keytabs.md
COMMANDS = frozenset(
    {
        *("status", "install-grant", "revoke", "reap", "collect", "ack"),
        *("quarantine", "release", "end-sessions", "drift-scan"),
    }
)
KEYTAB_COMMANDS = frozenset({"keytab-install", "keytab-list", "keytab-sync", "keytab-verify"})
MAX_REPLY = 4 * 1024 * 1024
# drift-scan lists up to 50,000 entries (16 MiB) and 8 MiB of texts, JSON-encoded.
MAX_REPLIES = {"drift-scan": 32 * 1024 * 1024}
MAX_PAYLOAD = 1024 * 1024  # what the node program reads at most
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NodeReply:
    node: str
    ok: bool
    data: dict[str, Any] | None
    error: str | None
    elapsed_ms: float


def argv_for(command: str) -> list[str]:
    """The node program's command line: isolated Python (-I -S), one allow-listed command."""
    if command in KEYTAB_COMMANDS:
        return [PYTHON, "-I", "-S", KEYTAB_PROGRAM, command]
    if command not in COMMANDS:
        raise ValueError(f"unknown node program command {command!r}")
    return [PYTHON, "-I", "-S", NODE_PROGRAM, command]


def encode_payload(payload: Mapping[str, Any] | None) -> bytes:
    data = json.dumps(dict(payload or {}), separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"node program input of {len(data)} bytes is over {MAX_PAYLOAD}")
    return data


def parse_json_object(text: str, limit: int = MAX_REPLY) -> dict[str, Any]:
    """One JSON object, strictly (no NaN/Infinity, no repeated keys, within `limit` bytes)."""
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise ValueError(f"reply larger than {limit} bytes")
    value = strictjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError("reply is not a JSON object")
    return value


def parse_reply(result: CommandResult, limit: int = MAX_REPLY) -> NodeReply:
    """A node program run as a reply: ok only for exit 0 with one JSON object on stdout."""
    node, status = result.node, result.exit_status
    if result.error is not None:
        return NodeReply(node, False, None, result.error, result.elapsed_ms)
    data: dict[str, Any] | None = None
    problem = ""
    try:
        data = parse_json_object(result.stdout, limit)
    except (ValueError, RecursionError) as exc:
        problem = f"unreadable reply ({_printable(str(exc)[:120])})"
    if status == 0 and data is not None:
        return NodeReply(node, True, data, None, result.elapsed_ms)
    if status == 127 or (status == 2 and "can't open file" in result.stderr):
        error = f"{node}: the node program is not installed; run `broker node bootstrap {node}`"
    elif status == 2:
        said = data.get("error") if data is not None else None
        detail = str(said) if said else result.stderr.strip()[-200:]
        error = f"{node}: node program usage: {_printable(detail)[:200]}"
    elif status != 0:
        stderr = _printable(result.stderr.strip()[-300:])
        error = f"{node}: node program exited {status}: {stderr}"
    else:
        error = f"{node}: {problem}"
    return NodeReply(node, False, data, error, result.elapsed_ms)


def _printable(text: str) -> str:
    """Node-sent text for messages: control characters replaced, one line."""
    return "".join(ch if ch.isprintable() else "?" for ch in text.replace("\n", " "))


def call(
    pool: SshPool,
    target: NodeTarget,
    command: str,
    payload: Mapping[str, Any] | None = None,
    *,
    timeout: float = TIMEOUT_S,
) -> NodeReply:
    """Run one node program command with `payload` as JSON on stdin."""
    limit = MAX_REPLIES.get(command, MAX_REPLY)
    result = pool.run(
        target,
        argv_for(command),
        encode_payload(payload),
        timeout=timeout,
        max_output=limit,
    )
    return parse_reply(result, limit)


def finite(value: object) -> float | None:
    """A finite number from a reply (bool is not a number here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
