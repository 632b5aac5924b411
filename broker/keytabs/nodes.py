"""A service account's keytab on its nodes: written, listed and verified, and what each
node holds recorded in the store (keytab_nodes).

Apart from the rotation state machine (service.py), which decides what each node must hold;
this module only carries it out and writes down what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from broker.core.errors import FailedError, RefusedError
from broker.core.hostlist import fold
from broker.fleet import nodeprog
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.keytabs import coalesce, distribute, keys, keytabfile, plan, rows
from broker.keytabs.distribute import NodeResult, node_result
from broker.keytabs.tickets import TokenSource
from broker.policy.model import ServiceAccount
from broker.store.db import Store

NODE_TIMEOUT_S = distribute.NODE_TIMEOUT_S


def keytab_spec(service: ServiceAccount, principals: Sequence[str]) -> distribute.KeytabSpec:
    """Where and how the keytab is written; checked before a rotation writes anything,
    so a policy value no node could take never leaves a rotation open."""
    return distribute.KeytabSpec(
        path=str(service.keytab),
        owner=service.owner,
        group=service.group,
        mode=service.mode,
        principals=tuple(principals),
    )


def keytab_principals(service: ServiceAccount, realm: str) -> list[str]:
    """The keytab's principals: the account's own name, then the policy's SPNs."""
    found = [f"{service.account}@{realm}"]
    for principal in service.principals:
        name, at, given = principal.partition("@")
        if at and given != realm:
            raise RefusedError(f"principal {principal} of {service.name} is not in realm {realm}")
        full = f"{name}@{realm}"
        if full not in found:
            found.append(full)
    return found


def nodes_error(what: str, bad: Sequence[NodeResult]) -> str:
    detail = "; ".join(r.error or r.node for r in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return f"{what} on {fold([r.node for r in bad])}: {detail}{more}"[:500]


class KeytabNodes:
    def __init__(
        self,
        *,
        store: Store,
        pool: SshPool,
        clock: Callable[[], datetime],
        max_ticket_lifetime: timedelta,
    ) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._max_ticket_lifetime = max_ticket_lifetime

    def call(
        self, targets: Sequence[NodeTarget], command: str, payloads: Mapping[str, dict[str, Any]]
    ) -> list[tuple[NodeTarget, nodeprog.NodeReply]]:
        """`command` on every target in parallel; verifications of several accounts on one
        node share a node program run (coalesce.py)."""
        verifies = distribute.send_verifies(self._pool, NODE_TIMEOUT_S)
        grouped = coalesce.for_pool(self._pool)

        def one(target: NodeTarget) -> tuple[NodeTarget, nodeprog.NodeReply]:
            payload = payloads[target.name]
            try:
                if command == "keytab-verify":
                    reply: nodeprog.NodeReply = grouped.call(target, command, payload, verifies)
                else:
                    reply = nodeprog.call(
                        self._pool, target, command, payload, timeout=NODE_TIMEOUT_S
                    )
            except ValueError as exc:  # input over the node program's 1 MiB: this node fails
                reply = nodeprog.NodeReply(target.name, False, None, f"{target.name}: {exc}", 0)
            return target, reply

        results: list[tuple[NodeTarget, nodeprog.NodeReply]] = self._pool.map(one, list(targets))
        return results

    def install(
        self,
        service: ServiceAccount,
        targets: Sequence[NodeTarget],
        principals: Sequence[str],
        *,
        current: int,
        staged: int | None,
        add: Sequence[keys.Key] = (),
        add_kvno: int | None = None,
        skip_clean: bool = False,
    ) -> list[NodeResult]:
        """Merge `add` keys (version `add_kvno`) into each node's keytab and keep what
        plan.keep_kvnos says (distribute.py: over SFTP, merged in memory here); record what
        each node holds now. With `skip_clean` (the prune after a verified rotation), a node
        whose recorded versions, read back from its last write, hold nothing to remove is
        not asked: three round trips saved per node, and nothing there would change."""
        now = self._clock()
        with self._store.transaction() as conn:
            views = rows.node_views(conn, service.name)
            retired = rows.retired(conn, service.name)
        keeps = {
            t.name: self._keep(service, views.get(t.name), retired, current, staged, now)
            | ({add_kvno} if add_kvno is not None else set())
            for t in targets
        }
        clean = _clean(targets, views, keeps, current) if skip_clean and not add else {}
        asked = [t for t in targets if t.name not in clean]
        stamp = int(now.timestamp())
        entries = (
            [
                keytabfile.new_entry(p, add_kvno, k.enctype, k.data, stamp)
                for p in principals
                for k in add
            ]
            if add_kvno is not None
            else []
        )
        try:
            results = distribute.install(
                self._pool,
                asked,
                keytab_spec(service, principals),
                keep=keeps,
                add=entries,
                timeout=NODE_TIMEOUT_S,
            )
        finally:
            del entries
        done = {r.node: r for r in self.record(service.name, results)}
        return [clean.get(t.name) or done[t.name] for t in targets]

    def _keep(
        self,
        service: ServiceAccount,
        view: rows.NodeView | None,
        retired: Mapping[int, datetime],
        current: int,
        staged: int | None,
        now: datetime,
    ) -> set[int]:
        return plan.keep_kvnos(
            current=current,
            staged=staged,
            retired=retired,
            present=set(view.kvnos) if view is not None else set(),
            keep_old=service.keep_old_kvnos,
            max_ticket_lifetime=self._max_ticket_lifetime,
            now=now,
        )

    def unstage(
        self,
        service: ServiceAccount,
        targets: Sequence[NodeTarget],
        principals: Sequence[str],
        current: int,
    ) -> None:
        """Remove staged keys of a password AD never took (best effort on each node)."""
        self.install(service, targets, principals, current=current, staged=None)

    def record(self, name: str, results: Sequence[NodeResult]) -> list[NodeResult]:
        now = self._clock()
        with self._store.transaction() as conn:
            for result in results:
                rows.record_node(
                    conn,
                    name,
                    result.node,
                    now,
                    kvnos=result.kvnos if result.ok else None,
                    error=result.error,
                )
        return list(results)

    def refresh(
        self, service: ServiceAccount, targets: Sequence[NodeTarget], principals: Sequence[str]
    ) -> list[NodeResult]:
        """Ask each node which versions it holds (no keys cross the wire)."""
        payload = {"path": str(service.keytab), "principals": list(principals)}
        replies = self.call(targets, "keytab-list", {t.name: payload for t in targets})
        return self.record(service.name, [node_result(t.name, r, principals) for t, r in replies])

    def verify(
        self,
        service: ServiceAccount,
        targets: Sequence[NodeTarget],
        principals: Sequence[str],
        tokens: TokenSource,
        kvno: int,
    ) -> list[NodeResult]:
        """Fresh service tickets for every principal, accepted with each node's keytab."""
        issued = tokens(principals)
        missing = [p for p, t in issued.items() if t is None]
        if missing:
            raise FailedError(
                f"the KDC issued no service ticket for {', '.join(missing[:5])}",
                fix="check the account's servicePrincipalName values in AD match the policy",
            )
        payload = {
            "path": str(service.keytab),
            "tokens": [{"principal": p, "token": issued[p]} for p in principals],
        }
        replies = self.call(targets, "keytab-verify", {t.name: payload for t in targets})
        return self.record_verification(service.name, principals, kvno, replies)

    def record_verification(
        self,
        name: str,
        principals: Sequence[str],
        kvno: int,
        results: Sequence[tuple[NodeTarget, nodeprog.NodeReply]],
    ) -> list[NodeResult]:
        """Each node's keytab-verify answer as a result, recorded with the version checked."""
        out: list[NodeResult] = []
        now = self._clock()
        with self._store.transaction() as conn:
            for target, reply in results:
                if not reply.ok or reply.data is None:
                    result = NodeResult(
                        target.name, False, reply.error or "no reply", unreachable=True
                    )
                elif not reply.data.get("ok"):
                    result = NodeResult(target.name, False, _text(reply.data.get("error")))
                else:
                    failed = [
                        f"{_text(r.get('principal'))}: {_text(r.get('error'))}"
                        for r in reply.data.get("results", [])
                        if isinstance(r, dict) and not r.get("ok")
                    ]
                    accepted = sum(
                        1
                        for r in reply.data.get("results", [])
                        if isinstance(r, dict) and r.get("ok")
                    )
                    if failed or accepted != len(principals):
                        result = NodeResult(
                            target.name, False, "; ".join(failed)[:300] or "incomplete"
                        )
                    else:
                        result = NodeResult(target.name, True)
                out.append(result)
                rows.record_node(
                    conn,
                    name,
                    target.name,
                    now,
                    verified_kvno=kvno if result.ok else None,
                    error=result.error,
                )
        return out


def _clean(
    targets: Sequence[NodeTarget],
    views: Mapping[str, rows.NodeView],
    keeps: Mapping[str, set[int]],
    current: int,
) -> dict[str, NodeResult]:
    """Nodes a prune need not ask: their last read-back, without an error since, holds the
    current version and nothing outside the kept ones."""
    clean: dict[str, NodeResult] = {}
    for target in targets:
        view = views.get(target.name)
        if (
            view is not None
            and view.error is None
            and current in view.kvnos
            and set(view.kvnos) <= keeps[target.name]
        ):
            clean[target.name] = NodeResult(target.name, True, None, view.kvnos)
    return clean


def _text(value: object) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:200]
