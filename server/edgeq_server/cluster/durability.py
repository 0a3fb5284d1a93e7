"""Replicated durability: replicas report their LiteFS position to the primary, and the
primary acknowledges a write only once enough replicas applied it.

- ``ReplicaPositions`` (primary): the last *verified* position of each connected replica,
  and the waits of writes for ``required`` replicas. A report counts only if its checksum
  equals the primary's post-apply checksum at that TXID (LiteFS ``-pos`` / ``tx`` events
  carry both): a replica that restored or diverged can report the same TXID number from
  another lineage. Waiters leave on every exit path (reached, timed out, cancelled).
- ``ReplicationServicer`` (primary): the ``ReportPositions`` stream's receiving end.
- ``ReplicaLink`` (replica): keeps a ``ReportPositions`` stream open to the current primary,
  sending the position whenever LiteFS applies a transaction; and probes the primary's
  health (``reachable``), which the replica's own health follows. Both loops run under the
  node's supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import replication_pb2 as repl_pb
from .. import replication_pb2_grpc as repl_grpc
from .forward import Forwarder
from .litefs import LiteFSNode

log = logging.getLogger(__name__)

#: A replica sends its position at least this often, even without new transactions (a
#: report is also the replica's heartbeat).
REPORT_SECONDS = 0.2
#: A replica whose last report is older than this is not waited for (stopped, cut off, or
#: gone: it cannot win an election while away); it counts again with its next report.
LIVE_SECONDS = 1.0


class ReplicaReport(NamedTuple):
    """A replica's last position report: its txid, when it came (µs), whether the txid's
    checksum matched the primary's (only verified positions count)."""

    txid: int
    reported_at: int
    verified: bool


class ReplicaPosition(NamedTuple):
    """``ReplicaReport`` with the reporting node (GetNodeInfo lists these)."""

    node: str
    txid: int
    reported_at: int
    verified: bool


class ReplicaPositions:
    """On the primary: verified replica positions, and waits until every live replica (and
    at least ``required``) applied a txid."""

    def __init__(self, required: int, now: Callable[[], int]) -> None:
        self.required = required
        self._now = now
        self._positions: dict[str, ReplicaReport] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}  # seq -> future, of waits still on
        self._heap: list[tuple[int, int]] = []  # (txid, seq); entries of ended waits go lazily
        self._seq = itertools.count()
        self._durable_txid = 0

    @property
    def waiting(self) -> int:
        """Writes waiting for replicas now."""
        return len(self._waiting)

    def snapshot(self) -> list[ReplicaPosition]:
        return sorted(ReplicaPosition(node, *r) for node, r in self._positions.items())

    def _durable(self) -> int:
        """The highest txid every live replica verifiably applied, if at least ``required``
        replicas are live; else 0. (With a Consul lease any live candidate may be the next
        primary: all of them must hold an acknowledged write. One that stopped reporting
        cannot win while away, and catches up when it is back.)"""
        cutoff = self._now() - int(LIVE_SECONDS * 1_000_000)
        live = [txid for txid, at, ok in self._positions.values() if ok and at >= cutoff]
        return min(live) if len(live) >= self.required else 0

    def report(self, node: str, txid: int, verified: bool | None = True) -> None:
        """``node`` is at ``txid``; ``verified``: its checksum matched the primary's (True),
        contradicts it (False), or cannot be checked (None: e.g. too old to be remembered)."""
        previous = self._positions.get(node)
        if verified is None and previous is not None and previous[2] and previous[0] <= txid:
            # Not verifiable but not contradicted: the last verified position still holds.
            self._positions[node] = ReplicaReport(previous.txid, self._now(), True)
        else:
            self._positions[node] = ReplicaReport(txid, self._now(), bool(verified))
        self._durable_txid = durable = self._durable()
        while self._heap and self._heap[0][0] <= durable:
            _, seq = heapq.heappop(self._heap)
            future = self._waiting.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(None)

    def forget(self, node: str) -> None:
        self._positions.pop(node, None)
        self._durable_txid = self._durable()

    async def wait(self, txid: int, seconds: float) -> bool:
        """True once ``required`` replicas applied ``txid``; False after ``seconds``."""
        if self._durable_txid >= txid:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seq = next(self._seq)
        self._waiting[seq] = future
        heapq.heappush(self._heap, (txid, seq))
        try:
            async with asyncio.timeout(seconds):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            if self._waiting.pop(seq, None) is not None:
                future.cancel()
                # Entries of waits that left early are dropped in bulk once they are half the
                # heap: one O(n) rebuild per n/2 exits, never O(n) per exit, and no growth.
                if len(self._heap) > 2 * len(self._waiting) + 64:
                    self._heap = [e for e in self._heap if e[1] in self._waiting]
                    heapq.heapify(self._heap)


class ReplicationServicer(repl_grpc.ReplicationServiceServicer):
    """The primary's end of ``ReportPositions``."""

    def __init__(self, node: LiteFSNode, positions: ReplicaPositions) -> None:
        self._node = node
        self._positions = positions

    def _verified(self, txid: int, checksum: str) -> bool | None:
        """Whether the replica at (txid, checksum) holds this primary's transaction ``txid``
        (None: this primary does not remember its checksum at ``txid``)."""
        mine = self._node.checksum_at(txid)
        if mine is None:
            return None
        return bool(checksum) and mine == checksum

    async def ReportPositions(
        self, request_iterator: AsyncIterator[repl_pb.ReportPositionsRequest], context: Any
    ) -> repl_pb.ReportPositionsResponse:
        if not self._node.is_primary():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not the primary")
        reporter = ""
        try:
            async for report in request_iterator:
                reporter = report.node
                verified = self._verified(report.txid, report.checksum)
                if verified is None:
                    # Not seen yet here (the tx event may trail the replica's report by a
                    # moment): read our own position once.
                    await asyncio.to_thread(self._node.read_pos)
                    verified = self._verified(report.txid, report.checksum)
                self._positions.report(report.node, report.txid, verified)
        finally:
            if reporter:
                self._positions.forget(reporter)
        return repl_pb.ReportPositionsResponse()


class ReplicaLink:
    """On a replica: position reports to the primary, and the primary's reachability."""

    PROBE_SECONDS = 0.5

    def __init__(
        self, node: LiteFSNode, forwarder: Forwarder, self_address: str, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        self._node = node
        self._forwarder = forwarder
        self._self = self_address
        self._metadata = metadata
        self.reachable = False
        self.failures = 0  # consecutive failed probes of the current primary
        self._moved = asyncio.Event()
        self._pending = False
        self._latest: tuple[int, str] | None = None  # from the last tx event
        self._loop = asyncio.get_running_loop()
        node.on_position(self._wake)

    def _wake(self, txid: int, checksum: str) -> None:  # events thread
        self._latest = (txid, checksum)
        if not self._pending:
            self._pending = True
            self._loop.call_soon_threadsafe(self._moved.set)

    async def probe_loop(self) -> None:
        while True:
            primary = self._node.primary_address()
            if self._node.is_primary():
                self.reachable, self.failures = True, 0
            elif primary is None:
                self.reachable, self.failures = False, 0
            else:
                try:
                    check = health_pb2_grpc.HealthStub(self._forwarder.channel(primary)).Check
                    reply = await check(health_pb2.HealthCheckRequest(), timeout=1.0, metadata=self._metadata)
                    self.reachable = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    self.reachable = False
                self.failures = 0 if self.reachable else self.failures + 1
            await asyncio.sleep(self.PROBE_SECONDS)

    async def report_loop(self) -> None:
        while True:
            primary = self._node.primary_address()
            if primary is None:
                await asyncio.sleep(REPORT_SECONDS)
                continue
            stub = repl_grpc.ReplicationServiceStub(self._forwarder.channel(primary))
            call = stub.ReportPositions(self._reports(primary), metadata=self._metadata)
            ended = asyncio.ensure_future(_finished(call))
            moved = False
            try:
                # Not a plain await: when the primary changes, a call to the old one that went
                # silent (cut off, frozen) would keep this loop from reporting to the new
                # primary, whose writes wait for replicas, until TCP gives up.
                while not ended.done():
                    if self._node.primary_address() != primary:
                        moved = True
                        call.cancel()
                        break
                    await asyncio.wait([ended], timeout=REPORT_SECONDS)
                if not moved:
                    await call
            except grpc.aio.AioRpcError as exc:
                log.debug("position reports to %s ended: %s", primary, exc.code())
            finally:
                call.cancel()
                ended.cancel()
            await asyncio.sleep(REPORT_SECONDS)

    async def _reports(self, primary: str) -> AsyncIterator[repl_pb.ReportPositionsRequest]:
        woken = False
        while self._node.primary_address() == primary:
            self._pending = False
            self._moved.clear()
            # The event's position when woken by one (no FUSE read); else read -pos, the
            # truth (after a failover a replica's TXID can even go down).
            latest = self._latest
            pos = latest if woken and latest is not None else await asyncio.to_thread(self._node.read_pos)
            # Sent when it moved, and at least every REPORT_SECONDS as a heartbeat.
            yield repl_pb.ReportPositionsRequest(node=self._self, txid=pos[0], checksum=pos[1])
            woken = True
            try:
                async with asyncio.timeout(REPORT_SECONDS):
                    await self._moved.wait()
            except TimeoutError:
                woken = False


async def _finished(call: Any) -> None:
    """Wait for a gRPC aio call to end, whatever its outcome (errors are read by its owner)."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await call
