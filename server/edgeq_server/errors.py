"""Domain errors: a small flat tree, mapped to gRPC codes in one place (``status.py``).

    EdgeqError
     ├── InvalidArgument      a request field is malformed (names the field)
     ├── ResourceExhausted    a request field is over a size limit (names the field)
     ├── NotFound             the named job does not exist
     ├── FailedPrecondition   the job's state does not allow the change
     ├── Unavailable          the server cannot serve this now (draining, no primary); retryable
     └── CommittedNotReplicated  the write committed on the primary, but too few replicas
                              confirmed it in time (ABORTED + ErrorInfo COMMITTED_NOT_REPLICATED)

    Forwarded                 the primary's own error for a forwarded call, passed on unchanged

Errors may carry a machine-readable ``reason`` (a google.rpc.ErrorInfo reason), metadata,
and a retry hint; ``status.py`` turns them into rich gRPC error details.
"""

from __future__ import annotations

from typing import Any

#: google.rpc.ErrorInfo domain of every reason edgeq sets.
DOMAIN = "edgeq.v1"


class EdgeqError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidArgument(EdgeqError):
    """A request field is malformed. ``field`` is its path, e.g. ``jobs[2].queue``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(EdgeqError):
    """A request field is larger than a configured limit (``field`` names it), or, with
    no field, the node is out of room for now (``reason`` e.g. EDGE_LOG_FULL, and a
    ``retry_after`` hint)."""

    def __init__(
        self, field: str, message: str, *, reason: str = "LIMIT_EXCEEDED", retry_after: float | None = None
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = reason
        self.retry_after = retry_after


class Unauthenticated(EdgeqError):
    """No credentials, or ones this server does not know (never says which token)."""

    def __init__(self, message: str, *, reason: str = "UNAUTHENTICATED", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class PermissionDenied(EdgeqError):
    """The caller is known but may not do this: a scope it lacks, or a queue outside its
    patterns (``field`` names the request field, "" for the method itself)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(EdgeqError):
    """The named object does not exist (or is no longer retained)."""

    def __init__(self, message: str, *, reason: str = "JOB_NOT_FOUND") -> None:
        super().__init__(message)
        self.reason = reason


class FailedPrecondition(EdgeqError):
    """The object's current state does not allow the requested change (``reason`` says
    which: JOB_NOT_CANCELLABLE, JOB_NOT_RETRYABLE, NO_REPLICAS)."""

    def __init__(self, message: str, *, reason: str = "FAILED_PRECONDITION") -> None:
        super().__init__(message)
        self.reason = reason


class Unavailable(EdgeqError):
    """The server cannot serve the request now; the client may retry elsewhere or later.
    ``reason``: e.g. NO_PRIMARY, NOT_PRIMARY, DRAINING; ``retry_after``: a hint in seconds."""

    def __init__(self, message: str, *, reason: str = "UNAVAILABLE", retry_after: float | None = 0.1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class CommittedNotReplicated(EdgeqError):
    """Replicated durability: the write committed on the primary at ``txid`` but fewer than
    the required replicas applied it in time, so a failover could still lose it. Not
    "not written": a retry with the same idempotency key (or the same lease token) returns
    the same outcome once replicas caught up, and never writes twice."""

    reason = "COMMITTED_NOT_REPLICATED"

    def __init__(self, txid: int, required: int, seconds: float) -> None:
        super().__init__(
            f"committed on the primary at txid {txid}, but fewer than {required} replica(s) applied it within"
            f" {seconds:g}s, so a failover could lose it; retry with the same idempotency key / lease token"
            " (retries never duplicate)"
        )
        self.txid = txid
        self.required = required


class CommitUnconfirmed(CommittedNotReplicated):
    """SQLite's COMMIT returned, but LiteFS could not confirm the transaction (its position
    could not be read, or did not move): LiteFS rolls back a transaction when it loses the
    lease mid-commit, and exits. Maybe written, maybe not; a retry with the same
    idempotency key / lease token is safe either way (same reason, so clients retry)."""

    def __init__(self, detail: str) -> None:
        EdgeqError.__init__(
            self,
            f"the commit could not be confirmed by LiteFS ({detail}); it may or may not have taken"
            " effect: retry with the same idempotency key / lease token (retries never duplicate)",
        )
        self.txid = 0
        self.required = 0


class Forwarded(Exception):
    """The primary's own error for a forwarded call, passed back to the caller unchanged
    (code, message and rich details)."""

    def __init__(self, code: Any, details: str, status_details: bytes | None = None) -> None:
        super().__init__(details)
        self.code = code  # grpc.StatusCode
        self.details = details
        self.status_details = status_details  # the primary's grpc-status-details-bin, if any

    @classmethod
    def from_rpc_error(cls, exc: Any) -> Forwarded:
        """From a grpc.aio.AioRpcError."""
        raw = None
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                raw = value if isinstance(value, bytes) else None
        return cls(exc.code(), exc.details() or "", raw)
