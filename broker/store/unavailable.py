"""The store's one refusal when it cannot be used: the same class and words on both engines."""

from __future__ import annotations

from broker.core.errors import UnavailableError

NOTHING_DONE = "nothing was done"
# When a request had already committed earlier steps (a grant stored before its push
# could be recorded), "nothing was done" would be false: the chain has those steps.
PARTLY_DONE = "its earlier steps were recorded (see `broker audit list`), this one was not"


class StoreUnavailableError(UnavailableError):
    """The store refused a write or read for a reason that is no fault of the request."""

    def partly_done(self) -> StoreUnavailableError:
        """The same refusal for a request that committed something before it failed."""
        return StoreUnavailableError(self.message.replace(NOTHING_DONE, PARTLY_DONE), fix=self.fix)
