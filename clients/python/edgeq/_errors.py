"""Exceptions: the ``EdgeqError`` tree that Client methods raise in place of
``grpc.RpcError``, and ``Retry`` / ``Fail``, which Worker handlers raise to steer a Nack.

``error_from_rpc`` also reads the server's rich error details (a ``google.rpc.Status`` in
the ``grpc-status-details-bin`` trailer, via ``grpcio-status``): the ``google.rpc.ErrorInfo``
reason and metadata land on ``EdgeqError.reason`` / ``.metadata``, a ``google.rpc.RetryInfo``
delay on ``.retry_delay``, and ABORTED with reason ``COMMITTED_NOT_REPLICATED`` becomes
``CommittedNotReplicated`` (the write committed on the primary; retry the same request).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2  # type: ignore[import-untyped,unused-ignore]  # no py.typed
from grpc_status import rpc_status

__all__ = [
    "COMMITTED_NOT_REPLICATED",
    "ERROR_DOMAIN",
    "CommittedNotReplicated",
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


#: ``google.rpc.ErrorInfo.domain`` of the server's errors.
ERROR_DOMAIN = "edgeq.v1"
#: ErrorInfo reason of a write that committed on the primary but was not confirmed by
#: replicas in time (status ABORTED, metadata ``{"txid": "<decimal>"}``).
COMMITTED_NOT_REPLICATED = "COMMITTED_NOT_REPLICATED"


class EdgeqError(Exception):
    """A failed edgeq call: ``code`` is the gRPC status code, ``details`` the server's message.

    From the server's rich error details, when it sent them: ``reason`` and ``metadata`` of
    its ``google.rpc.ErrorInfo`` (``""`` and ``{}`` otherwise; e.g. ``NO_PRIMARY``) and
    ``retry_delay`` (seconds) of its ``google.rpc.RetryInfo`` (``None`` otherwise).
    """

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        code: grpc.StatusCode | None = None,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details: str = details
        self.reason: str = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.retry_delay: float | None = retry_delay
        super().__init__(details)

    @property
    def field(self) -> str:
        """The request field at fault (e.g. ``jobs[2].queue``), "" when none is named."""
        return self.metadata.get("field", "")

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


class CommittedNotReplicated(EdgeqError):
    """The write committed on the primary but replicas did not confirm it in time (ABORTED,
    reason ``COMMITTED_NOT_REPLICATED``). ``txid`` is the commit's txid (0 if unknown).

    The Client already retried the same request (same idempotency keys, same lease tokens)
    until its deadline; this is raised when the deadline ran out first. Sending the same
    request again (``idempotency_keys`` for an Enqueue) is safe: it cannot duplicate.
    """

    default_code = grpc.StatusCode.ABORTED

    def __init__(
        self,
        details: str = "",
        code: grpc.StatusCode | None = None,
        *,
        reason: str = COMMITTED_NOT_REPLICATED,
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(details, code, reason=reason, metadata=metadata, retry_delay=retry_delay)
        txid = self.metadata.get("txid", "")
        self.txid: int = int(txid) if txid.isdigit() else 0
        #: The Enqueue's idempotency keys, in request order (empty for other calls).
        self.idempotency_keys: tuple[str, ...] = ()


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


def _rich_details(err: Any) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    """(the first ErrorInfo, the RetryInfo delay in seconds) from the error's trailer."""
    if not callable(getattr(err, "trailing_metadata", None)):
        return None, None
    try:
        status = rpc_status.from_call(err)
    except (ValueError, DecodeError):  # malformed or inconsistent details: keep the plain status
        return None, None
    info: error_details_pb2.ErrorInfo | None = None
    delay: float | None = None
    for detail in status.details if status is not None else ():
        if info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif delay is None and detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return info, delay


def error_from_rpc(err: grpc.RpcError) -> EdgeqError:
    """The EdgeqError for a failed gRPC call (the base class for codes without a subclass),
    with the reason, metadata and retry delay of the server's rich error details."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = (details_fn() if callable(details_fn) else None) or ""
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    info, delay = _rich_details(err)
    reason, metadata = (info.reason, dict(info.metadata)) if info is not None else ("", {})
    cls = _BY_CODE.get(code, EdgeqError)
    if (
        code is grpc.StatusCode.ABORTED
        and info is not None
        and (info.reason, info.domain) == (COMMITTED_NOT_REPLICATED, ERROR_DOMAIN)
    ):
        cls = CommittedNotReplicated
    return cls(str(details), code, reason=reason, metadata=metadata, retry_delay=delay)


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
