"""Domain errors: a small flat tree, mapped to gRPC codes in one place (``status.py``).

    EdgeqError
     ├── InvalidArgument      a request field is malformed (names the field)
     ├── ResourceExhausted    a request field is over a size limit (names the field)
     ├── NotFound             the named job does not exist
     ├── FailedPrecondition   the job's state does not allow the change
     └── Unavailable          the server cannot serve this now (draining, no primary); retryable
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidArgument(EdgeqError):
    """A request field is malformed. ``field`` is its path, e.g. ``jobs[2].queue``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(EdgeqError):
    """A request field is larger than a configured limit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(EdgeqError):
    """The named object does not exist (or is no longer retained)."""


class FailedPrecondition(EdgeqError):
    """The object's current state does not allow the requested change."""


class Unavailable(EdgeqError):
    """The server cannot serve the request now; the client may retry elsewhere or later."""
