"""The one place where errors become gRPC status codes.

``to_status`` maps domain errors (``errors.py``) and SQLite errors to a code, a message and
rich error details (grpcio-status: a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer): ``ErrorInfo`` (domain ``edgeq.v1``) with a reason a program can act on,
``RetryInfo`` with a retry hint, ``BadRequest`` naming the field of an invalid request.
``unary``/``stream`` wrap RPC handlers so every handler raises plain exceptions and never
calls ``context.abort`` itself. Requests that failed to decode arrive as ``wire.Malformed``
and are refused here too.

Every error carries an ``ErrorInfo`` reason; the list, with codes and whether a retry is
safe, is ``docs/errors.md`` (keep the two in step).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import apsw
import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors
from .wire import Malformed

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_DOMAIN: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.CommittedNotReplicated, grpc.StatusCode.ABORTED),
    # SQLite: contention and a read-only file (a LiteFS replica refuses writes) are
    # transient; a full disk is a resource limit.
    (apsw.BusyError, grpc.StatusCode.UNAVAILABLE),
    (apsw.LockedError, grpc.StatusCode.UNAVAILABLE),
    (apsw.ReadOnlyError, grpc.StatusCode.UNAVAILABLE),
    # LiteFS refuses writes on a node that is not (or no longer) primary with EACCES,
    # which SQLite reports as a disk I/O error in WAL mode.
    (apsw.IOError, grpc.StatusCode.UNAVAILABLE),
    (apsw.FullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@dataclass
class Status:
    code: grpc.StatusCode
    message: str
    details: list[Any] = field(default_factory=list)  # protobuf messages packed into google.rpc.Status
    raw_details: bytes | None = None  # a forwarded call's details, passed on as they came

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The ``grpc-status-details-bin`` trailer, and with a RetryInfo also
        ``grpc-retry-pushback-ms``: gRPC's own retry policy (the Python and Go SDKs) then
        waits that long before its next attempt."""
        if self.raw_details is not None:
            return (("grpc-status-details-bin", self.raw_details),)
        if not self.details:
            return ()
        pushback: tuple[tuple[str, str | bytes], ...] = tuple(
            ("grpc-retry-pushback-ms", str(int(d.retry_delay.ToMilliseconds())))
            for d in self.details if isinstance(d, error_details_pb2.RetryInfo)
        )[:1]
        packed = []
        for detail in self.details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        status = rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        )
        return (
            *((str(k), v if isinstance(v, bytes) else v.encode()) for k, v in status.trailing_metadata), *pushback
        )


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=errors.DOMAIN, metadata=metadata)


def _retry(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status(exc: BaseException) -> Status:
    """The gRPC status (code, message, details) for an exception raised while serving a request."""
    if isinstance(exc, errors.Forwarded):  # the primary's answer to a forwarded call, unchanged
        return Status(exc.code, exc.details, raw_details=exc.status_details)
    for kind, code in _DOMAIN:
        if not isinstance(exc, kind):
            continue
        if isinstance(exc, apsw.Error):
            if isinstance(exc, apsw.BusyError | apsw.LockedError):
                return Status(code, f"database: {exc}", [_info("DATABASE_BUSY"), _retry(0.05)])
            if code is grpc.StatusCode.UNAVAILABLE:  # LiteFS refused the write: primacy lost
                return Status(code, f"database: {exc}", [_info("NOT_PRIMARY_ANY_MORE"), _retry(0.2)])
            return Status(code, f"database: {exc}", [_info("DISK_FULL"), _retry(1.0)])
        details: list[Any] = []
        if isinstance(exc, errors.CommittedNotReplicated):
            details = [_info(exc.reason, txid=str(exc.txid), replicas_required=str(exc.required))]
        elif isinstance(exc, errors.Unauthenticated):
            details.append(_info(exc.reason))
            if exc.retry_after is not None:
                details.append(_retry(exc.retry_after))
        elif isinstance(exc, errors.PermissionDenied):
            details.append(_info("PERMISSION_DENIED", field=exc.field) if exc.field else _info("PERMISSION_DENIED"))
        elif isinstance(exc, errors.Unavailable):
            details.append(_info(exc.reason or "UNAVAILABLE"))
            if exc.retry_after is not None:
                details.append(_retry(exc.retry_after))
        elif isinstance(exc, errors.NotFound | errors.FailedPrecondition):
            details.append(_info(exc.reason))
        elif isinstance(exc, errors.ResourceExhausted) and not exc.field:
            details = [_info(exc.reason)]
            if exc.retry_after is not None:
                details.append(_retry(exc.retry_after))
        elif isinstance(exc, errors.InvalidArgument | errors.ResourceExhausted):
            reason = "INVALID_FIELD" if isinstance(exc, errors.InvalidArgument) else exc.reason
            violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=str(exc))
            details = [_info(reason, field=exc.field), error_details_pb2.BadRequest(field_violations=[violation])]
        return Status(code, str(exc), details)
    return Status(grpc.StatusCode.INTERNAL, "internal error", [_info("INTERNAL")])


def _check(request: Any) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidArgument(request.field, request.reason)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> None:
    status = to_status(exc)
    if status.code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=exc)
    await context.abort(status.code, status.message, trailing_metadata=status.trailing_metadata())


def unary(
    method: str, fn: Callable[[Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]
) -> Callable[[Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    async def handler(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            _check(request)
            return await fn(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)
            raise AssertionError("unreachable") from exc  # abort() always raises

    return handler


def stream(
    method: str, fn: Callable[[Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]
) -> Callable[[Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    async def handler(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        try:
            _check(request)
            async for message in fn(request, context):
                yield message
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the RPC boundary
            await _abort(context, exc, method)

    return handler
