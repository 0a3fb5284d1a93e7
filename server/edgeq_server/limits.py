"""Limits on what one client can hold: open Lease streams per connection and in total.

(Per-request limits — batch sizes, payload, headers, keys — are in ``validate``; HTTP/2
limits — concurrent RPCs per connection, idle and maximum connection age, keepalive
enforcement — are gRPC server options set in ``app.server_options``.)

A connection is what gRPC's ``context.peer()`` names (``ipv4:addr:port``: one TCP
connection). Streams another node proxies (all of a replica's workers share its one
connection to the primary) count toward the total only. A Lease past either limit
answers RESOURCE_EXHAUSTED (``TOO_MANY_STREAMS``, no field) with a retry delay, before
anything is opened.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from .errors import ResourceExhausted

#: Retry hint when a limit refuses a stream.
RETRY_SECONDS = 1.0

Ctx = grpc.aio.ServicerContext[Any, Any]


class StreamLimits:
    """Counts open Lease streams (local and proxied) in total and per connection."""

    def __init__(self, total: int, per_connection: int, from_node: Callable[[Ctx], bool] = lambda _: False) -> None:
        self.total = total
        self.per_connection = per_connection
        self._from_node = from_node  # a replica proxies all its workers' streams over one connection
        self.open = 0
        self._by_peer: collections.Counter[str] = collections.Counter()

    def limit(self, fn: Callable[[Any, Ctx], AsyncIterator[Any]]) -> Callable[[Any, Ctx], AsyncIterator[Any]]:
        async def limited(request: Any, context: Ctx) -> AsyncIterator[Any]:
            peer = context.peer() or ""
            if self.open >= self.total:
                raise ResourceExhausted(
                    "", f"this node has {self.open} Lease streams open, its limit (max_lease_streams); "
                    "retry later or on another node", reason="TOO_MANY_STREAMS", retry_after=RETRY_SECONDS,
                )
            if self._by_peer[peer] >= self.per_connection and not self._from_node(context):
                raise ResourceExhausted(
                    "", f"this connection has {self._by_peer[peer]} Lease streams open, its limit "
                    "(max_lease_streams_per_connection); one stream can lease from many queues",
                    reason="TOO_MANY_STREAMS", retry_after=RETRY_SECONDS,
                )
            self.open += 1
            self._by_peer[peer] += 1
            try:
                async for message in fn(request, context):
                    yield message
            finally:
                self.open -= 1
                self._by_peer[peer] -= 1
                if not self._by_peer[peer]:
                    del self._by_peer[peer]

        return limited
