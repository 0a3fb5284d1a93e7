"""Optional bearer-token authentication for QueueService (health and reflection stay open,
so orchestrators and ``grpcurl list`` need no secret).

- ``auth_token``: full access.
- ``client_token``: producers and workers — every RPC except the admin ones (CancelJob,
  RetryJob, PauseQueue, ResumeQueue), which answer PERMISSION_DENIED.

Clients send ``authorization: Bearer <token>`` metadata. No token, or an unknown one, is
UNAUTHENTICATED. With neither token configured, authentication is off.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # grpc-stubs declare the interceptor generic; the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

ADMIN_METHODS = frozenset({"CancelJob", "RetryJob", "PauseQueue", "ResumeQueue"})


def _deny(
    code: grpc.StatusCode, message: str, like: grpc.RpcMethodHandler[Any, Any] | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that refuses at once, of the same kind as the method's own (``like``): a
    client-streaming call is refused before any message is read, not held open until its
    deadline waiting for one."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    request_streaming = bool(like is not None and like.request_streaming)
    response_streaming = bool(like is not None and like.response_streaming)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class TokenAuth(_Interceptor):
    def __init__(self, service: str, auth_token: str, client_token: str, internal_service: str = "") -> None:
        self._prefix = f"/{service}/"
        self._internal = f"/{internal_service}/" if internal_service else None
        self._admin = auth_token.encode()
        self._client = client_token.encode()

    def _role(self, metadata: Any) -> str | None:
        for key, value in metadata or ():
            if key == "authorization":
                given = (value if isinstance(value, str) else value.decode()).removeprefix("Bearer ").encode()
                if self._admin and hmac.compare_digest(given, self._admin):
                    return "admin"
                if self._client and hmac.compare_digest(given, self._client):
                    return "client"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        if self._internal and method.startswith(self._internal):  # node-to-node: admin token only
            handler = await continuation(details)
            if self._role(details.invocation_metadata) != "admin":
                return _deny(grpc.StatusCode.UNAUTHENTICATED, "node-to-node calls need the admin token", handler)
            return handler
        if not method.startswith(self._prefix):
            return await continuation(details)  # health, reflection
        name = method.removeprefix(self._prefix)
        handler = await continuation(details)
        role = self._role(details.invocation_metadata)
        if role is None:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token", handler)
        if role == "client" and name in ADMIN_METHODS:
            return _deny(grpc.StatusCode.PERMISSION_DENIED, f"{name} needs the admin token", handler)
        return handler
