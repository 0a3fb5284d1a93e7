"""Forwarding to the primary: write RPCs and Lease streams from a node that is not primary.

Same request, the caller's remaining deadline and metadata, plus a marker
(``edgeq-forwarded-by``) so a forwarded call is never forwarded again: a node that gets a
marked call and is not primary answers UNAVAILABLE (no loops, no chains). A proxied Lease
stream ends with UNAVAILABLE when the primary changes or this node drains, so the worker
reconnects and finds the new primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from edgeq.v1 import queue_pb2_grpc as pb_grpc

from ..auth import NODE_TOKEN_KEY
from ..errors import Forwarded, Unavailable
from ..tls import ServerTLS
from .litefs import LiteFSNode

#: Metadata key a forwarding node adds.
FORWARDED_KEY = "edgeq-forwarded-by"
#: Metadata not copied onto a forwarded call (set by gRPC itself per hop).
_HOP_BY_HOP = ("grpc-", "user-agent", ":")
#: How long a channel replaced after a certificate reload may finish its calls.
RETIRE_GRACE_SECONDS = 60.0
#: How often proxied Lease streams check that the primary is still the one they go to.
WATCH_SECONDS = 0.2

Ctx = grpc.aio.ServicerContext[Any, Any]




class Forwarder:
    """Cached gRPC channels to other nodes, and the forwarding of calls and streams."""

    def __init__(
        self, node: LiteFSNode, self_address: str, options: list[tuple[str, Any]], tls: ServerTLS | None = None,
        *, node_secret: str = "", verify_node: Callable[[str], bool] | None = None,
    ) -> None:
        self._node = node
        # With auth on, a forwarded call proves it comes from a node of this cluster (the
        # cluster secret in NODE_TOKEN_KEY); a client that sets the marker itself gains nothing.
        self._proof: tuple[tuple[str, str], ...] = ((NODE_TOKEN_KEY, node_secret),) if node_secret else ()
        self._verify_node = verify_node
        self._self = self_address
        self._options = options
        self._tls = tls  # TLS to other nodes when this server has TLS
        self._tls_generation = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._old_channels: list[grpc.aio.Channel] = []
        self._proxied: dict[Any, str] = {}  # open proxied Lease calls -> the primary they go to
        self._ended: dict[Any, str] = {}  # proxied calls this node ended -> why
        self._draining = False

    def forwarded(self, context: Ctx) -> bool:
        """Whether another node forwarded this call (the marker, and with auth on the
        cluster secret beside it; a marker without it is ignored: treated as a client's)."""
        marked = False
        proof: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == FORWARDED_KEY:
                marked = True
            elif key == NODE_TOKEN_KEY:
                proof = value if isinstance(value, str) else value.decode(errors="replace")
        if not marked:
            return False
        if self._verify_node is None:
            return True
        return proof is not None and self._verify_node(proof)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The cached channel to another node (TLS when this server has TLS; after a
        certificate reload new calls get new channels with the new certificate, and the old
        channels close once their calls are done)."""
        if self._tls is not None and self._tls.generation != self._tls_generation:
            self._tls_generation = self._tls.generation
            for old in self._channels.values():
                self._old_channels.append(old)
                task = asyncio.ensure_future(old.close(grace=RETIRE_GRACE_SECONDS))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            self._channels = {}
        channel = self._channels.get(address)
        if channel is None:
            if self._tls is not None:
                channel = grpc.aio.secure_channel(address, self._tls.channel_credentials(), options=self._options)
            else:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    def _stub(self, address: str) -> pb_grpc.QueueServiceStub:
        return pb_grpc.QueueServiceStub(self.channel(address))

    def target(self, context: Ctx) -> str | None:
        """The primary to forward to, or None to serve locally (this node is primary).

        Raises Unavailable when no primary is known, and for a forwarded call that reached
        a non-primary (no second hop)."""
        if self._node.is_primary():
            return None
        address = self._node.primary_address()
        if address is None:
            raise Unavailable(
                f"this node ({self._node.role().value}) knows no primary right now; retry shortly",
                reason="NO_PRIMARY", retry_after=0.5,
            )
        if self.forwarded(context):
            raise Unavailable(
                f"not the primary (forwarded here, primary is {address}); retry", reason="NOT_PRIMARY", retry_after=0.2
            )
        return address

    async def call(
        self, address: str, method: str, request: Any, *, seconds: float | None,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> Any:
        """Call ``method`` on ``address``; UNAVAILABLE becomes ``Unavailable`` (retry, or
        buffer), any other error is the primary's answer (``Forwarded``, details kept)."""
        try:
            return await getattr(self._stub(address), method)(
                request, timeout=seconds, metadata=(*metadata, (FORWARDED_KEY, self._self), *self._proof)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(f"primary {address} unavailable: {exc.details()}") from None
            raise Forwarded.from_rpc_error(exc) from None

    async def unary(self, address: str, method: str, request: Any, context: Ctx, at_most: float | None = None) -> Any:
        """Forward the caller's request with its remaining deadline (or ``at_most`` seconds if shorter)."""
        remaining = context.time_remaining()
        if at_most is not None:
            remaining = at_most if remaining is None else min(remaining, at_most)
        return await self.call(address, method, request, seconds=remaining, metadata=caller_metadata(context))

    async def lease(self, address: str, request: Any, context: Ctx) -> AsyncIterator[Any]:
        """Proxy a Lease stream: open it on the primary and relay every message back."""
        if self._draining:
            raise Unavailable("server is draining; reconnect to another node", reason="DRAINING")
        metadata = (*caller_metadata(context), (FORWARDED_KEY, self._self), *self._proof)
        call: Any = self._stub(address).Lease(request, metadata=metadata)  # an aio call
        self._proxied[call] = address
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                ended = self._ended.get(call) or f"Lease via primary {address} ended: {exc.details()}"
                raise Unavailable(f"{ended}; reconnect") from None
            raise Forwarded.from_rpc_error(exc) from None
        except asyncio.CancelledError:
            why = self._ended.get(call)
            if why is not None:  # ended by this node (primary changed, draining), not by our caller
                raise Unavailable(f"{why}; reconnect") from None
            raise
        finally:
            self._proxied.pop(call, None)
            self._ended.pop(call, None)
            call.cancel()

    @property
    def proxied(self) -> int:
        return len(self._proxied)

    def _end(self, call: Any, why: str) -> None:
        if call not in self._ended:
            self._ended[call] = why
            call.cancel()

    async def watch(self) -> None:
        """End proxied streams whose primary is no longer this node's primary (runs until cancelled)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            current = self._node.primary_address()
            for call, address in list(self._proxied.items()):
                if address != current:
                    self._end(call, f"primary changed from {address}")

    async def drain(self) -> None:
        """End every proxied Lease stream with UNAVAILABLE (shutdown): workers reconnect elsewhere."""
        self._draining = True
        for call in list(self._proxied):
            self._end(call, "server is draining")
        for _ in range(100):  # the relays finish within a loop turn or two
            if not self._proxied:
                break
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for call in list(self._proxied):
            call.cancel()
        for task in list(self._retired):
            task.cancel()
        for channel in [*self._channels.values(), *self._old_channels]:
            await channel.close(None)
        self._channels.clear()
        self._old_channels.clear()


def caller_metadata(context: Ctx) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata to pass on (its token: the primary checks it again), without
    per-hop headers and without node markers a client may have set itself."""
    return tuple(
        (k, v) for k, v in (context.invocation_metadata() or ())
        if not k.startswith(_HOP_BY_HOP) and k not in (FORWARDED_KEY, NODE_TOKEN_KEY)
    )
