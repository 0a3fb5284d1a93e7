"""The one place where errors become gRPC status codes.

``to_status`` maps domain errors (``errors.py``) and SQLite errors to a code and message;
``unary``/``stream`` wrap RPC handlers so every handler raises plain exceptions and never
calls ``context.abort`` itself. Requests that failed to decode arrive as ``wire.Malformed``
and are refused here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import apsw
import grpc

from . import errors
from .replication import Forwarded
from .wire import Malformed

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_DOMAIN: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
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


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message for an exception raised while serving a request."""
    if isinstance(exc, Forwarded):  # the primary's answer to a forwarded call, unchanged
        return exc.code, exc.details
    for kind, code in _DOMAIN:
        if isinstance(exc, kind):
            if isinstance(exc, apsw.Error):
                return code, f"database: {exc}"
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def _check(request: Any) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidArgument(request.field, request.reason)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> None:
    code, message = to_status(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=exc)
    await context.abort(code, message)


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
