"""The node program (docs/grants.md): what the broker runs over SSH as root.

Installed as /usr/libexec/broker/broker_node/; the launcher (broker-node) puts
/usr/libexec/broker first on sys.path and `import broker_node`. The per-sudo decision is
pam_broker.so (pam/src), and grant files are checked only by broker-grant-check, built from
the same C sources: one implementation of the node-side contract. One module per job:

- contract: node.conf and quarantine formats, allow-lists, UTC time text, Paths (no I/O)
- files: safe reads and atomic writes; store: node.conf and the quarantine marker
- grants: broker-grant-check run and its verdicts parsed (fail closed)
- procs: the process table and killing trees; spool: session records and events
- commands: node_main and its dispatch; status, install, revoke, drift: the big commands

Stdlib only, and Python 3.9 (EL9's /usr/bin/python3).
"""

from __future__ import annotations

from .commands import node_main
from .contract import (
    BREAK_GLASS,
    HOOK_VERSION,
    NodeConf,
    Paths,
    Quarantine,
    format_utc,
    is_grant_id,
    parse_quarantine,
    parse_utc,
    render_quarantine,
)
from .grants import Checked, CheckedGrant, check_all, check_text
from .spool import is_event_id, spool_event
from .store import load_conf, read_quarantine

__all__ = [
    "BREAK_GLASS",
    "HOOK_VERSION",
    "Checked",
    "CheckedGrant",
    "NodeConf",
    "Paths",
    "Quarantine",
    "check_all",
    "check_text",
    "format_utc",
    "is_event_id",
    "is_grant_id",
    "load_conf",
    "node_main",
    "parse_quarantine",
    "parse_utc",
    "read_quarantine",
    "render_quarantine",
    "spool_event",
]
