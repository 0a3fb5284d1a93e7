"""A gRPC proxy in front of a real server that injects faults into chosen calls: it passes
every QueueService call through as raw bytes (unary and the Lease stream) and, for the
first ``n`` calls of a method, lets the server apply the call and then answers the client
UNAVAILABLE — a reply lost after the commit, what a failover or a dropped connection does."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "/edgeq.v1.QueueService/"
STREAMING = {"Lease"}


class FaultProxy:
    """``FaultProxy(upstream, lose_replies={"Ack": 2})``; ``.target`` is where clients connect.
    ``calls`` counts what reached the proxy per method. Runs its own event loop thread."""

    def __init__(self, upstream: str, lose_replies: dict[str, int] | None = None) -> None:
        self.upstream = upstream
        self.lose_replies = dict(lose_replies or {})
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")

    def _take_fault(self, method: str) -> bool:
        with self._lock:
            self.calls[method] += 1
            if self.lose_replies.get(method, 0) > 0:
                self.lose_replies[method] -= 1
                return True
            return False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        channel = grpc.aio.insecure_channel(self.upstream)
        server = grpc.aio.server()
        proxy = self

        async def unary(method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            call = channel.unary_unary(SERVICE + method)
            try:
                reply: bytes = await call(
                    request, metadata=context.invocation_metadata(), timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "", trailing_metadata=err.trailing_metadata())
                raise
            if proxy._take_fault(method):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fault proxy: reply lost after the server applied it")
            return reply

        async def stream(
            method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            proxy._take_fault(method)
            call = channel.unary_stream(SERVICE + method)(request, metadata=context.invocation_metadata())
            try:
                async for message in call:
                    yield message
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
                name = details.method  # type: ignore[attr-defined]
                if not name.startswith(SERVICE):
                    return None
                method = name[len(SERVICE):]
                # partial, not lambda: grpc.aio tells coroutine and async-generator handlers apart
                # by inspecting the function, and inspect sees through a partial.
                if method in STREAMING:
                    return grpc.unary_stream_rpc_method_handler(functools.partial(stream, method))
                return grpc.unary_unary_rpc_method_handler(functools.partial(unary, method))

        server.add_generic_rpc_handlers((Handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace=None)
        await channel.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
