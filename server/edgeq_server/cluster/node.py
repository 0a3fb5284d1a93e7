"""``LiteFSCluster``: the ``Cluster`` of a node whose database lives in a LiteFS mount.

It composes the parts of this package: ``LiteFSNode`` (role state machine, position,
checksums), ``Forwarder`` (writes and Lease streams to the primary), ``ReplicaPositions`` /
``ReplicationServicer`` / ``ReplicaLink`` (replicated durability, primary reachability),
``EnqueueBuffer`` (``--outbox-path``) and ``LiteFSWatchdog``; and it routes each RPC:

- Enqueue on a node that is not primary (or while the buffer holds requests): the buffer,
  when on; else forwarded.
- Other writes: served here on the primary, else forwarded to the primary; while the role
  is UNKNOWN (or no primary is known) they answer UNAVAILABLE with a retry hint.
- Lease: served here on the primary, else proxied to the primary.
- Reads: always local.

Every loop runs under the node's supervisor (``attach``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import apsw
import grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import replication_pb2_grpc as repl_grpc

from .. import convert, db
from ..clock import Clock
from ..config import Config
from ..errors import CommittedNotReplicated, Unavailable
from .base import Cluster, Handler, Position, Role
from .buffer import EnqueueBuffer
from .durability import ReplicaLink, ReplicaPositions, ReplicationServicer
from .forward import Forwarder, forwarded
from .litefs import LiteFSNode
from .watchdog import LiteFSWatchdog

if TYPE_CHECKING:
    from ..supervise import Supervisor

log = logging.getLogger(__name__)

#: RPCs that write: on a node that is not primary they are forwarded to the primary.
WRITE_METHODS = frozenset({"Enqueue", "Ack", "Nack", "Heartbeat", "CancelJob", "RetryJob", "PauseQueue", "ResumeQueue"})
#: Consecutive failed health probes after which forwarded calls fail fast (UNAVAILABLE)
#: instead of waiting out the caller's deadline on a primary that does not answer.
UNREACHABLE_PROBES = 2

Ctx = grpc.aio.ServicerContext[Any, Any]


def node_channel_options(options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Channel options between nodes: the server's size limits, plus keepalive pings every
    second so a silently dead peer fails a forwarded call or proxied stream in ~2 s."""
    return [
        *options,
        ("grpc.keepalive_time_ms", 1_000),
        ("grpc.keepalive_timeout_ms", 1_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class LiteFSCluster(Cluster):
    kind = "litefs"

    def __init__(self, cfg: Config, clock: Clock, channel_options: list[tuple[str, Any]]) -> None:
        super().__init__()
        self._cfg = cfg
        self._clock = clock
        self.node = LiteFSNode(cfg.litefs_mount, cfg.litefs_db, cfg.litefs_http)
        self.db_path = self.node.db_path
        self.position = Position(self.node.latest, self.node.txid)
        self.txid_after_commit = self.node.txid
        self.forwarder = Forwarder(self.node, cfg.address, node_channel_options(channel_options))
        self.peer_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {cfg.auth_token}"),) if cfg.auth_token else ()
        )
        self.positions = ReplicaPositions(cfg.durability_replicas, clock.now)
        self.link: ReplicaLink | None = None
        self.buffer = (
            EnqueueBuffer(cfg, clock, self.node, self.forwarder, self.peer_metadata) if cfg.outbox_path else None
        )
        self.watchdog = LiteFSWatchdog(self.node, cfg.litefs_http)
        self._replicated = cfg.durability == "replicated"
        self.node.on_role_change(self._role_changed)

    def role(self) -> Role:
        return self.node.role()

    async def start(self) -> None:
        self.node.start()
        if not await asyncio.to_thread(self.node.wait_ready, 5.0):
            log.warning("no word from LiteFS /events at %s yet; role unknown until it answers", self._cfg.litefs_http)
        await self._wait_for_schema()
        if self.buffer is not None:
            await self.buffer.open()

    async def _wait_for_schema(self) -> None:
        """A replica cannot create or migrate the (read-only) database: wait until the
        primary has, e.g. on a fresh cluster whose replica synced before the first write."""
        waited = 0.0
        while True:
            if self.node.is_primary():
                return
            if self.node.role() is Role.REPLICA and await self._replica_schema_version() >= len(db.MIGRATIONS):
                return
            if waited % 10 == 0:
                role = self.node.role().value
                log.info("replica: waiting for the primary to create or migrate %s (%s)", self.db_path, role)
            await asyncio.sleep(0.5)
            waited += 0.5

    async def _replica_schema_version(self) -> int:
        """The replica's schema version, 0 while LiteFS is still writing a snapshot into the
        file (the read meets a lock or a half-written file; the next poll sees the result)."""
        try:
            return await asyncio.to_thread(db.schema_version, self.db_path)
        except (apsw.BusyError, apsw.IOError, apsw.CorruptError, apsw.NotADBError) as exc:
            log.info("replica: database %s not readable yet (%s); waiting", self.db_path, exc)
            return 0

    def attach(self, server: grpc.aio.Server, supervisor: Supervisor, committed: Callable[[], int]) -> None:
        repl_grpc.add_ReplicationServiceServicer_to_server(ReplicationServicer(self.node, self.positions), server)
        self.link = ReplicaLink(self.node, self.forwarder, self._cfg.address, self.peer_metadata)
        supervisor.loop("cluster-position-reports", self.link.report_loop)
        supervisor.loop("cluster-primary-probe", self.link.probe_loop)
        supervisor.loop("cluster-proxied-stream-watch", self.forwarder.watch)
        supervisor.loop("cluster-litefs-watchdog", self.watchdog.loop)
        if self.buffer is not None:
            supervisor.loop("cluster-outbox-drain", self.buffer.drain_loop)

    # ------------------------------------------------------------------ routing

    def _target(self, context: Ctx) -> str | None:
        primary = self.forwarder.target(context)
        link = self.link
        if primary is not None and link is not None and link.failures >= UNREACHABLE_PROBES:
            raise Unavailable(
                f"the primary {primary} does not answer (a failover may be under way); retry",
                reason="PRIMARY_UNREACHABLE", retry_after=0.5,
            )
        return primary

    def route(self, name: str, handler: Handler, *, streaming: bool = False) -> Handler:
        if streaming:
            return self._route_stream(handler)
        if name not in WRITE_METHODS:
            return handler
        buffer = self.buffer if name == "Enqueue" else None

        async def routed(request: Any, context: Ctx) -> Any:
            # Through the buffer on a node that is not primary, and on a promoted node until
            # what it buffered is drained (jobs keep the order this node accepted them in).
            if buffer is not None and not forwarded(context) and (buffer.pending or not self.node.is_primary()):
                return await buffer.enqueue(request, context)
            primary = self._target(context)
            if primary is not None:
                return await self.forwarder.unary(primary, name, request, context)
            response = await handler(request, context)
            await self.wait_durable(response.txid)
            return response

        return routed

    def _route_stream(self, handler: Handler) -> Handler:
        async def routed(request: Any, context: Ctx) -> AsyncIterator[Any]:
            primary = self._target(context)
            stream = handler(request, context) if primary is None else self.forwarder.lease(primary, request, context)
            async for message in stream:
                yield message

        return routed

    async def wait_durable(self, txid: int) -> None:
        if not self._replicated or not txid:
            return
        seconds = self._cfg.durability_timeout_seconds
        if not await self.positions.wait(txid, seconds):
            raise CommittedNotReplicated(txid, self.positions.required, seconds)

    # ------------------------------------------------------------------ state

    def healthy(self) -> bool:
        role = self.node.role()
        if role is Role.PRIMARY:
            return True
        return role is Role.REPLICA and self.link is not None and self.link.reachable

    def describe(self, info: pb.GetNodeInfoResponse) -> None:
        info.txid = self.node.latest()
        info.outbox_pending = self.buffer.pending if self.buffer else 0
        info.outbox_dead = self.buffer.dead if self.buffer else 0
        role = self.node.role()
        if role is Role.PRIMARY:
            info.role = pb.NODE_ROLE_PRIMARY
            for node, txid, at, verified in self.positions.snapshot():
                info.replicas.add(node=node, txid=txid, reported_at=convert.timestamp(at), verified=verified)
        elif role is Role.REPLICA:
            info.role = pb.NODE_ROLE_REPLICA
            info.primary = self.node.primary_address() or ""
            info.primary_reachable = self.link.reachable if self.link else False
        else:
            info.role = pb.NODE_ROLE_UNKNOWN

    async def drain(self) -> None:
        await self.forwarder.drain()

    async def stop(self) -> None:
        await self.forwarder.close()
        if self.buffer is not None:
            await self.buffer.close()
        self.node.stop()
