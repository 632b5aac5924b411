"""`broker node status`: what each node's program reports, checked, and whether grants may go there.

A grant is only worth issuing where it can be enforced and recorded: the
node is bootstrapped, its clock agrees with ours (grants carry UTC times),
and its sudo writes I/O logs. sudo-rs has no I/O logging, so a node running
it, or a sudo without the I/O plugin, is marked "cannot record: no grants".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.fleet import inventory, nodeprog
from broker.fleet.dropins import DropInReport, parse_report
from broker.fleet.inventory import Observation
from broker.fleet.pool import SshPool
from broker.fleet.ssh import CommandResult, NodeTarget
from broker.store.db import Store

SUDO_FLAVOURS = frozenset({"sudo", "sudo-rs", "unknown"})
_VERSION = re.compile(r"^[A-Za-z0-9._+~-]{1,64}$")
MAX_GRANTS_LISTED = 100_000
# The node side this broker installs: 1 was the Python hook under pam_exec, 2 is pam_broker.so.
HOOK_VERSION = "2"


@dataclass(frozen=True)
class NodeStatus:
    node: str
    reachable: bool
    skew_s: float | None
    hook_version: str | None
    sudo_flavour: str | None
    sudo_version: str | None
    io_logging: bool | None
    bootstrapped: bool | None
    active_grants: int | None
    can_grant: bool
    problem: str | None
    elapsed_ms: float
    module_problem: str | None = None  # why pam_broker.so does not load there (None: it does)
    # How elevated sessions end there: "cgroup" (contained), "process-tree" (weaker), None
    # (a node program from before containment, or no answer).
    containment: str | None = None
    # Each held grant's drop-in as the node saw it (fleet/dropins.py); compared with what the
    # broker pushed by grants/integrity.py, which fills `drop_in_problems` (grant: why).
    drop_ins: DropInReport = None
    drop_in_problems: tuple[str, ...] = ()
    # "push", "package <version>" or "package" (unreadable marker); None: an older program
    installed_by: str | None = None

    def observation(self) -> Observation | None:
        """What to store about the node; None when the program did not answer."""
        if self.hook_version is None and self.sudo_flavour is None:
            return None
        return Observation(
            self.node,
            self.hook_version,
            self.sudo_flavour,
            self.sudo_version,
            self.io_logging,
            self.skew_s,
        )


def grant_blocker(flavour: str | None, io_logging: bool | None) -> str | None:
    """Why grants cannot go to a node with this sudo (None: they can)."""
    if flavour == "sudo-rs":
        return "cannot record: no grants (sudo-rs has no I/O logging)"
    if flavour != "sudo":
        return "cannot record: no grants (no sudo found that the broker knows)"
    if not io_logging:
        return "cannot record: no grants (sudo lists no I/O logging plugin)"
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and _VERSION.fullmatch(value) else None


def _skew(
    data: dict[str, Any], sent: float, received: float, max_skew: float, problems: list[str]
) -> float | None:
    """The node's clock minus the midpoint of send and receive; a problem if unread or off."""
    moment = nodeprog.finite(data.get("time"))
    skew = None if moment is None else moment - (sent + received) / 2
    if skew is None:
        problems.append("no clock reading")
    elif abs(skew) > max_skew:
        way = "ahead of" if skew > 0 else "behind"
        problems.append(f"clock {abs(skew):.1f} s {way} the broker's (limit {max_skew:.0f} s)")
    return skew


def parse_status(
    result: CommandResult, sent: float, received: float, max_skew: float
) -> NodeStatus:
    """A `broker-node status` run, checked field by field; skew is the node's time minus the
    midpoint of our send and receive times."""
    node = result.node
    reply = nodeprog.parse_reply(result)
    if result.error is not None or reply.data is None or not reply.ok:
        problem = reply.error or "no answer"
        return NodeStatus(
            node, result.error is None, None, None, None, None, None, None, None, False,
            problem, result.elapsed_ms,
        )  # fmt: skip
    data = reply.data
    problems: list[str] = []
    said_node = data.get("node")
    if said_node != node:
        shown = said_node if isinstance(said_node, str) and said_node.isprintable() else None
        problems.append(
            f"node.conf names {shown[:64]!r}, not {node}" if shown else "no valid node.conf"
        )
    skew = _skew(data, sent, received, max_skew, problems)
    hook_version = _text(data.get("hook_version"))
    flavour, version, io_logging = _sudo_fields(data)
    bootstrapped = data.get("bootstrapped") if isinstance(data.get("bootstrapped"), bool) else None
    if not bootstrapped:
        why = _first_problem(data)
        problems.append(
            f"not bootstrapped{f' ({why})' if why else ''}: run `broker node bootstrap {node}`"
        )
    grants = data.get("grants")
    active = None
    if isinstance(grants, list) and len(grants) <= MAX_GRANTS_LISTED:
        active = sum(1 for g in grants if isinstance(g, dict) and g.get("valid") is True)
    blocker = grant_blocker(flavour, io_logging)
    can_grant = not problems and blocker is None
    if blocker is not None:
        problems.append(blocker)
    module_problem = _module_problem(data.get("module"))
    if hook_version is not None and hook_version != HOOK_VERSION:
        # Still enforced by the older hook: worth a bootstrap, not a refusal of grants.
        problems.append(f"old hook (version {hook_version}): run `broker node bootstrap {node}`")
    elif module_problem is not None:
        problems.append(f"PAM module: {module_problem}")
    containment = data.get("containment") if data.get("containment") in _CONTAINMENT else None
    if containment == "process-tree" and bootstrapped:
        # Weaker, not a refusal: grants still end on time, but a double fork outlives a kill.
        problems.append(
            _first_problem(data, "broker-node watch", "sessions are not")
            or "sessions not contained"
        )
    return NodeStatus(
        node, True, skew, hook_version, flavour, version, io_logging, bootstrapped, active,
        can_grant, "; ".join(problems) or None, result.elapsed_ms, module_problem, containment,
        parse_report(data), installed_by=_installed_by(data),
    )  # fmt: skip


_CONTAINMENT = ("cgroup", "process-tree")


def _installed_by(data: dict[str, Any]) -> str | None:
    """Who installed the node program, from the reply's `installed_by` and
    `package_version`, each allow-listed (the node is not trusted to send clean text)."""
    how = data.get("installed_by")
    if how == "push":
        return "push"
    if how != "package":
        return None
    version = _text(data.get("package_version"))
    return f"package {version}" if version is not None else "package"


def _sudo_fields(data: dict[str, Any]) -> tuple[str | None, str | None, bool | None]:
    """(flavour, version, io_logging) of the node's sudo, each checked."""
    sudo: Any = data.get("sudo")
    sudo = sudo if isinstance(sudo, dict) else {}
    flavour = sudo.get("flavour") if sudo.get("flavour") in SUDO_FLAVOURS else None
    io_logging = sudo.get("io_logging") if isinstance(sudo.get("io_logging"), bool) else None
    return flavour, _text(sudo.get("version")), io_logging


def _first_problem(data: dict[str, Any], *starting: str) -> str:
    """The node's first problem sentence (of those starting with one of `starting`, when
    given), printable and at most 200 characters, or ""."""
    said = data.get("problems")
    for item in said if isinstance(said, list) else []:
        if isinstance(item, str) and (not starting or item.startswith(starting)):
            return "".join(c if c.isprintable() else "?" for c in item[:200])
    return ""


def _module_problem(module: object) -> str | None:
    """The node program's word on pam_broker.so: loads, or why not (bounded, printable)."""
    if not isinstance(module, dict):
        return "not reported"
    if module.get("loads") is True:
        return None
    error = module.get("error")
    text = error if isinstance(error, str) else "does not load"
    return "".join(c if c.isprintable() else "?" for c in text[:200])


def probe(pool: SshPool, target: NodeTarget, max_skew: float) -> NodeStatus:
    """Run `broker-node status` on one node and check its answer."""
    sent = time.time()
    result = pool.run(target, nodeprog.argv_for("status"), b"{}", max_output=nodeprog.MAX_REPLY)
    return parse_status(result, sent, time.time(), max_skew)


def check(
    store: Store,
    pool: SshPool,
    names: Sequence[str] | None,
    *,
    max_skew: float,
    actor: str,
    on_done: Callable[[NodeStatus], None] | None = None,
) -> list[NodeStatus]:
    """Status of `names` (every enrolled node when None), recorded in the inventory."""
    wanted = list(names) if names is not None else inventory.enrolled_names(store)
    targets = inventory.targets(store, wanted)

    def one(target: NodeTarget) -> NodeStatus:
        status = probe(pool, target, max_skew)
        if on_done is not None:
            on_done(status)
        return status

    statuses: list[NodeStatus] = pool.map(one, targets)
    seen = [o for o in (s.observation() for s in statuses) if o is not None]
    inventory.record_status(store, seen, actor)
    return statuses
