"""This node's own state on disk: node.conf and the quarantine marker, each read with the
checks of docs/grants.md. Grant files and the key are broker-grant-check's (grants.py)."""

from __future__ import annotations

import os

from .contract import NodeConf, Paths, Quarantine, parse_conf, parse_quarantine
from .files import read_secure


def load_conf(paths: Paths) -> NodeConf | str:
    """/etc/broker/node.conf, read with the checks of docs/grants.md; or the problem."""
    data = read_secure(paths.node_conf, forbidden=0o022)
    conf = parse_conf(data) if isinstance(data, bytes) else data
    return f"node.conf: {conf}" if isinstance(conf, str) else conf


def read_quarantine(paths: Paths) -> Quarantine | str | None:
    """None: no marker. A string: a marker that exists but cannot be trusted (bad owner,
    mode, link, content); the module then treats the node as quarantined, nobody exempt."""
    try:
        os.lstat(paths.quarantine)
    except FileNotFoundError:
        return None
    except OSError as exc:  # cannot even look: fail closed
        return f"quarantine marker: {exc.strerror or exc}"
    data = read_secure(paths.quarantine, forbidden=0o022)
    marker = parse_quarantine(data) if isinstance(data, bytes) else data
    return f"quarantine marker: {marker}" if isinstance(marker, str) else marker
