"""Exceptions: the ``EdgeqError`` tree that Client methods raise in place of
``grpc.RpcError``, and ``Retry`` / ``Fail``, which Worker handlers raise to steer a Nack.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import grpc

__all__ = [
    "DeadlineExceededError",
    "EdgeqError",
    "Fail",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Retry",
    "UnauthenticatedError",
    "UnavailableError",
    "error_from_rpc",
]


class EdgeqError(Exception):
    """A failed edgeq call: ``code`` is the gRPC status code, ``details`` the server's message."""

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details: str = details
        super().__init__(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name


class InvalidArgumentError(EdgeqError):
    """The request is malformed; ``details`` names the field."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(EdgeqError):
    """No such job."""

    default_code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(EdgeqError):
    """An illegal state change (e.g. cancelling a completed job)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(EdgeqError):
    """A size limit was exceeded (payload, batch, headers) or the disk is full."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(EdgeqError):
    """No server reachable, or it is draining, even after gRPC's retries; safe to retry later."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(EdgeqError):
    """The call's deadline (``Client(timeout=...)``) passed."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(EdgeqError):
    """The server requires a token and got none, or a wrong one."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(EdgeqError):
    """The token may not call this RPC (client tokens cannot run admin RPCs)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: dict[grpc.StatusCode, type[EdgeqError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnauthenticatedError,
        PermissionDeniedError,
    )
}


def error_from_rpc(err: grpc.RpcError) -> EdgeqError:
    """The EdgeqError for a failed gRPC call (the base class for codes without a subclass)."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = (details_fn() if callable(details_fn) else None) or ""
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return _BY_CODE.get(code, EdgeqError)(str(details), code)


class Retry(Exception):
    """Raise from a Worker handler to retry the job after ``delay`` seconds.

    ``delay=None`` uses the server's backoff policy; ``delay=0`` retries at once. The attempt
    still counts: a job out of attempts becomes FAILED.
    """

    def __init__(self, delay: float | timedelta | None = None, message: str = "") -> None:
        self.delay: float | None = delay.total_seconds() if isinstance(delay, timedelta) else delay
        self.message = message
        super().__init__(message or f"retry requested (delay={self.delay})")


class Fail(Exception):
    """Raise from a Worker handler to fail the job for good (FAILED, no more attempts)."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message or "failed by handler")
