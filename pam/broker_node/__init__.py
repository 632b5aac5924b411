"""The node side of the broker: the PAM hook and the node program (docs/grants.md).

Installed as /usr/libexec/broker/broker_node/; the launchers (pam-hook, broker-node)
put /usr/libexec/broker first on sys.path and `import broker_node`. One module per job:

- contract: the file formats, allow-lists, UTC time text, Paths (no I/O)
- files: safe reads and atomic writes; store: node.conf, key, grants, quarantine marker
- ed25519: the hand-written signature check (to be replaced by a compiled verifier)
- procs: the process table and killing trees; spool: session records and events
- hook: pam_main and the decisions (to be replaced by the compiled PAM module)
- commands: node_main and its dispatch; status, install, revoke, drift: the big commands

Stdlib only, and Python 3.9 (EL9's /usr/bin/python3). The hook runs as
`/usr/bin/python3 -I -S` on every sudo, so importing the package must stay cheap:
json, re, hashlib, datetime, subprocess and dataclasses (~12 ms of imports) are never
loaded on the PAM path; the node program's commands import what they need inside
their functions, and the commands' modules load only when node_main runs.
"""

from __future__ import annotations

from .contract import (
    BREAK_GLASS,
    HOOK_VERSION,
    Grant,
    GrantKey,
    NodeConf,
    Paths,
    Quarantine,
    format_utc,
    is_grant_id,
    parse_grant,
    parse_quarantine,
    parse_utc,
    render_quarantine,
)
from .ed25519 import ed25519_verify
from .hook import DENY_SPOOL_LIMIT, decide, pam_main
from .spool import is_event_id, spool_event
from .store import check_grant, load_conf, load_key, read_quarantine

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import TextIO

__all__ = [
    "BREAK_GLASS",
    "DENY_SPOOL_LIMIT",
    "HOOK_VERSION",
    "Grant",
    "GrantKey",
    "NodeConf",
    "Paths",
    "Quarantine",
    "check_grant",
    "decide",
    "ed25519_verify",
    "format_utc",
    "is_event_id",
    "is_grant_id",
    "load_conf",
    "load_key",
    "node_main",
    "pam_main",
    "parse_grant",
    "parse_quarantine",
    "parse_utc",
    "read_quarantine",
    "render_quarantine",
    "spool_event",
]


def node_main(argv: list[str], stdin: TextIO, stdout: TextIO, paths: Paths | None = None) -> int:
    """`broker-node CMD`: JSON in on stdin, JSON out on stdout; 0 answered, 2 bad usage."""
    # Imported here, not at the top: the hook imports this package on every sudo and
    # never runs a command; their modules would add ~1.3 ms to each of its runs.
    from .commands import node_main as run

    return run(argv, stdin, stdout, paths)
