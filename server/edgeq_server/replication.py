"""Everything LiteFS-specific: where this node stands in the cluster.

LiteFS (https://fly.io/docs/litefs/) replicates the SQLite file from one primary to
replicas. This module reads what LiteFS exposes in its FUSE mount:

- ``<mount>/.primary``: present only on a replica connected to a primary; holds the
  primary's ``lease.hostname`` (each node sets it to its own gRPC address). Absent on the
  primary.
- ``<mount>/<db>-pos``: ``<16 hex TXID>/<16 hex checksum>``, this node's replication
  position. On the primary it moves with every commit, so the TXID after a commit is the
  consistency token (``txid``) edgeq returns; a replica has applied a write once its TXID
  reaches that value.

Without LiteFS the position is the writer's own commit counter.

On a replica, write RPCs are forwarded to the primary (``Forwarder``): same request, the
caller's remaining deadline and metadata, plus a marker so a forwarded call is never
forwarded again. SQLite write refusals from LiteFS (disk I/O error / read-only) surface as
UNAVAILABLE (``status.py``), so a client retries and reaches the new primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from edgeq.v1 import queue_pb2_grpc as pb_grpc

from .errors import Unavailable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005
#: How often proxied Lease streams check that the primary is still the one they go to.
WATCH_SECONDS = 0.2


def read_txid(pos_file: Path) -> int:
    """The TXID in a ``-pos`` file; 0 if it does not exist yet or is empty."""
    try:
        text = pos_file.read_text().strip()
    except FileNotFoundError:
        return 0
    if not text:
        return 0
    try:
        return int(text.split("/", 1)[0], 16)
    except ValueError:
        raise ValueError(f"unexpected LiteFS position {text!r} in {pos_file}") from None


class LiteFSNode:
    """One node's view of its LiteFS mount.

    The role is cached and refreshed by ``watch()`` every ``WATCH_SECONDS`` off the event
    loop: reading ``.primary`` goes through FUSE (~0.3 ms), and doing it on every write RPC
    blocked the loop for a quarter of its time (py-spy, 16 producers on the mount).
    """

    def __init__(self, mount: str, db_name: str) -> None:
        self.mount = Path(mount)
        self.db_path = str(self.mount / db_name)
        self._pos = Path(self.db_path + "-pos")
        self._primary_file = self.mount / ".primary"
        self._primary: str | None = self.read_primary()

    def txid(self) -> int:
        """This node's replication position (LiteFS TXID of the database)."""
        return read_txid(self._pos)

    def read_primary(self) -> str | None:
        """Read ``.primary`` now (blocking): the primary's address, None if this node is it."""
        try:
            return self._primary_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def primary_address(self) -> str | None:
        """The primary's gRPC address as last seen, or None when this node is the primary."""
        return self._primary

    def is_primary(self) -> bool:
        return self._primary is None

    async def watch(self) -> None:
        """Keep the cached role current (runs until cancelled)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            current = await asyncio.to_thread(self.read_primary)
            if current != self._primary:
                log.info("primary changed: %s -> %s", self._primary or "this node", current or "this node")
                self._primary = current


class Position:
    """This node's data position, and a bounded wait for it (read-your-writes)."""

    def __init__(self, current: Callable[[], int]) -> None:
        self.current = current

    async def wait_for(self, txid: int, seconds: float) -> bool:
        """True once ``current() >= txid``; False if ``seconds`` pass first."""
        if self.current() >= txid:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            if self.current() >= txid:
                return True
        return False


#: Metadata key a forwarding replica adds; a node that receives it and is not primary
#: answers UNAVAILABLE instead of forwarding again (no loops, no chains).
FORWARDED_KEY = "edgeq-forwarded-by"
#: Metadata not copied onto a forwarded call (set by gRPC itself per hop).
_HOP_BY_HOP = ("grpc-", "user-agent", ":")


class Forwarder:
    """Forwards write RPCs from a replica to the primary over cached gRPC channels, keeping
    the caller's deadline and metadata and marking the call as forwarded."""

    def __init__(self, node: LiteFSNode, self_address: str, options: list[tuple[str, Any]]) -> None:
        self._node = node
        self._self = self_address
        self._options = options
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._proxied: dict[Any, str] = {}  # open proxied Lease calls -> the primary they go to
        self._moved: set[Any] = set()  # proxied calls ended because the primary changed
        self._watch: asyncio.Task[None] | None = None

    def _stub(self, address: str) -> pb_grpc.QueueServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return pb_grpc.QueueServiceStub(channel)

    def target(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        """The primary to forward to, or None to serve locally (this node is primary).

        Raises Unavailable for a forwarded call that reached a non-primary (no second hop).
        """
        address = self._node.primary_address()
        if address is None:
            return None
        if any(k == FORWARDED_KEY for k, _ in context.invocation_metadata() or ()):
            raise Unavailable(f"not the primary (forwarded here, primary is {address}); retry")
        return address

    async def unary(self, address: str, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        remaining = context.time_remaining()
        call = getattr(self._stub(address), method)
        try:
            return await call(request, timeout=remaining, metadata=self._metadata(context))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(f"primary {address} unavailable: {exc.details()}") from None
            raise Forwarded(exc.code(), exc.details() or "") from None

    def _metadata(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str | bytes], ...]:
        kept = tuple((k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(_HOP_BY_HOP))
        return (*kept, (FORWARDED_KEY, self._self))

    async def lease(
        self, address: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """Proxy a Lease stream: open it on the primary and relay every message back. Ends
        with UNAVAILABLE when the primary changes (noticed within ``WATCH_SECONDS``) or
        goes away, so the worker reconnects and finds the new primary."""
        call: Any = self._stub(address).Lease(request, metadata=self._metadata(context))  # an aio call
        self._proxied[call] = address
        self._ensure_watch()
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise Unavailable(f"Lease via primary {address} ended: {exc.details()}; reconnect") from None
            raise Forwarded(exc.code(), exc.details() or "") from None
        except asyncio.CancelledError:
            if call in self._moved:  # cancelled by the watcher, not by our caller
                raise Unavailable(f"primary changed from {address}; reconnect") from None
            raise
        finally:
            self._proxied.pop(call, None)
            self._moved.discard(call)
            call.cancel()

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_primary(), name="edgeq-primary-watch")

    async def _watch_primary(self) -> None:
        while self._proxied:
            await asyncio.sleep(WATCH_SECONDS)
            current = self._node.primary_address()
            for call, address in list(self._proxied.items()):
                if address != current and call not in self._moved:
                    self._moved.add(call)
                    call.cancel()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for call in list(self._proxied):
            call.cancel()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()


class Forwarded(Exception):
    """The primary's own error for a forwarded call, passed back to the caller unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
