"""One error root for the whole broker.

Every error carries a message that says what went wrong and, where there is
one, the fix an operator can apply. Only the CLI turns these into exit codes
(0 ok, 1 refused/failed, 2 usage, 3 unavailable), so the rest of the code
never calls sys.exit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class BrokerError(Exception):
    """Base of every error the broker reports to an operator."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and its fix on one line, newlines flattened."""
        text = self.message if not self.fix else f"{self.message}; {self.fix}"
        return " ".join(text.split())


class RefusedError(BrokerError):
    """The request was understood and refused (policy, integrity, permissions)."""


class FailedError(BrokerError):
    """The request was valid but an operation on the broker's side failed."""


class UsageError(BrokerError):
    """Bad input from the operator: arguments, configuration, files."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid."""


class UnavailableError(BrokerError):
    """A service the broker needs (directory, node, store, daemon) cannot be reached."""

    exit_code = EXIT_UNAVAILABLE


class IntegrityError(RefusedError):
    """Stored state failed an integrity check; the broker refuses to trust it."""


class BadRequestError(RefusedError):
    """The daemon refused a request it could not accept as sent (malformed, oversized,
    outside an allow-list): refused, exit 1, as the API contract says; the CLI's own
    argument errors stay UsageError (exit 2)."""


class TooLargeError(BadRequestError):
    """The daemon refused a request body over its `daemon.max_body`; a command whose input
    is a file (a report to verify) turns this into a usage error naming the file."""
