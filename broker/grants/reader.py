"""Reading grants and requests: what the API lists and shows.

Apart from GrantService so that listing needs only the store, not the SSH pool or the
grant signing key.
"""

from __future__ import annotations

from broker.core.errors import RefusedError
from broker.core.users import NamedUser
from broker.grants import rows
from broker.grants.model import Grant, GrantNode, Request
from broker.store.db import Store


class GrantReader:
    def __init__(self, store: Store) -> None:
        self._store = store

    def grant(self, grant_id: str) -> Grant:
        found = rows.grant(self._store.conn, grant_id)
        if found is None:
            raise RefusedError(f"no grant {grant_id}", fix="list them with `broker grants list`")
        return found

    def request(self, request_id: str) -> Request:
        found = rows.request(self._store.conn, request_id)
        if found is None:
            raise RefusedError(
                f"no request {request_id}", fix="list them with `broker requests list`"
            )
        return found

    def grants(
        self,
        *,
        user: NamedUser | None = None,
        node: str | None = None,
        states: tuple[str, ...] = (),
        limit: int = 1000,
    ) -> list[Grant]:
        """Newest first; `user` as broker.core.users resolved it (its objectSid and name)."""
        return rows.grants(self._store.conn, user=user, node=node, states=states, limit=limit)

    def requests(
        self,
        *,
        states: tuple[str, ...] = (),
        limit: int = 1000,
        visible_to: tuple[str, frozenset[str]] | None = None,
    ) -> list[Request]:
        """Newest first; `visible_to` (sid, groups) keeps what that account made or may decide."""
        return rows.requests(self._store.conn, states=states, limit=limit, visible_to=visible_to)

    def nodes_of(self, grant_id: str) -> list[GrantNode]:
        """The grant's state on each of its nodes."""
        return rows.grant_nodes(self._store.conn, grant_id)

    def has_user(self, name: str) -> bool:
        """Whether a grant was ever issued to this exact account name: how a user who has
        left the directory is still found (broker.core.users)."""
        return rows.has_user(self._store.conn, name)

    def any_active(self) -> bool:
        return bool(rows.grants(self._store.conn, states=("active",), limit=1))

    def work_to_reap(self) -> bool:
        """Anything for a scheduler tick to do (keeps an idle daemon from building the pool)."""
        return rows.work_to_reap(self._store.conn)
