"""Sealing and verifying the chain on demand (`broker audit seal`, `broker audit verify`).

Commits are sealed by the store's commit hook; this is the explicit face of the same
sealer, plus verification against the checkpoint logs, so callers never reach for
the signing key or the log paths themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from broker.audit.query import verify_store
from broker.audit.verify import VerifyReport
from broker.audit.writer import Sealer
from broker.core.errors import UnavailableError
from broker.store.db import Store


class AuditService:
    """The chain of one store: seal now, verify against the signed checkpoints."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer | None,
        *,
        signing_key: Path,
        checkpoint_paths: Sequence[Path],
        trusted_keys: Sequence[Path] = (),
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._signing_key = signing_key
        self._checkpoint_paths = list(checkpoint_paths)
        self._trusted_keys = list(trusted_keys)

    def seal(self) -> int | None:
        """Write a checkpoint for the head now, whatever the interval says."""
        if self._sealer is None:
            raise UnavailableError(
                f"no audit signing key at {self._signing_key}", fix="run `broker init`"
            )
        return self._sealer.seal(self._store.conn, force=True)

    def verify(self) -> VerifyReport:
        """Walk the chain and check it against every checkpoint log, accepting checkpoints
        sealed by this broker or by a trusted peer."""
        return verify_store(
            self._store.conn, self._signing_key, self._checkpoint_paths, self._trusted_keys
        )
