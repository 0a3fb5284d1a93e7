"""``LiteFSCluster``: the ``Cluster`` of a node whose database lives in a LiteFS mount.

It composes the parts of this package: ``LiteFSNode`` (role state machine, position,
checksums), ``Forwarder`` (writes and Lease streams to the primary), ``ReplicaPositions`` /
``ReplicationServicer`` / ``ReplicaLink`` (replicated durability, primary reachability),
``EdgeLog`` (edge durability and the partition outbox) and ``LiteFSWatchdog``; and it
routes each RPC:

- Enqueue at durability "edge" (the request's, else the server's): the edge log, on any
  node. At "local"/"replicated": stored here on the primary (waiting for replicas when
  "replicated"), else forwarded with the level made explicit; with the partition outbox
  on, accepted at the edge instead when the primary cannot be reached (and while earlier
  such requests wait). A call another node forwarded (or drained) is stored here, never
  sent on.
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

from .. import convert, db, validate
from .. import replication_pb2_grpc as repl_grpc
from ..auth import Tokens
from ..clock import Clock
from ..config import Config
from ..errors import CommittedNotReplicated, Forwarded, Unavailable
from ..ids import uuid7
from ..tls import ServerTLS
from .base import Accepted, Cluster, Handler, Position, ReplicaLag, Role
from .durability import ReplicaLink, ReplicaPositions, ReplicationServicer
from .edgelog import EdgeLog
from .forward import Forwarder
from .litefs import LiteFSNode
from .watchdog import LiteFSWatchdog

if TYPE_CHECKING:
    from ..supervise import Supervisor

log = logging.getLogger(__name__)

#: RPCs that write: on a node that is not primary they are forwarded to the primary.
WRITE_METHODS = frozenset({
    "Enqueue", "Ack", "Nack", "Heartbeat", "CancelJob", "RetryJob", "CancelJobs", "RetryJobs", "PauseQueue",
    "ResumeQueue", "UpsertSchedule", "DeleteSchedule", "PauseSchedule", "ResumeSchedule", "SetRateLimit",
    "SetGroupWeight",
})
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

    def __init__(
        self, cfg: Config, clock: Clock, channel_options: list[tuple[str, Any]], tls: ServerTLS | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._clock = clock
        self.node = LiteFSNode(cfg.litefs_mount, cfg.litefs_db, cfg.litefs_http)
        self.db_path = self.node.db_path
        self.position = Position(self.node.latest, self.node.txid)
        self.txid_after_commit = self.node.txid
        secret = cfg.cluster_secret or cfg.auth_token
        auth_on = tokens is not None and tokens.enabled
        self.forwarder = Forwarder(
            self.node, cfg.address, node_channel_options(channel_options), tls,
            node_secret=secret if auth_on else "",
            verify_node=tokens.is_node if tokens is not None and auth_on else None,
        )
        # This node's own calls to other nodes (position reports, the edge log's drain).
        self.peer_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {secret}"),) if secret and auth_on else ()
        )
        self.positions = ReplicaPositions(cfg.durability_replicas, clock.now)
        self.link: ReplicaLink | None = None
        self.edge = EdgeLog(cfg, clock, self.node, self.forwarder, self.peer_metadata, self.db_path)
        self.watchdog = LiteFSWatchdog(self.node, cfg.litefs_http)
        self.node.on_role_change(self._role_changed)

    def role(self) -> Role:
        return self.node.role()

    def from_node(self, context: Any) -> bool:
        return self.forwarder.forwarded(context)

    async def start(self) -> None:
        self.node.start()
        if not await asyncio.to_thread(self.node.wait_ready, 5.0):
            log.warning("no word from LiteFS /events at %s yet; role unknown until it answers", self._cfg.litefs_http)
        await self._wait_for_schema()
        await self.edge.open()

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
        supervisor.loop("cluster-edge-log-drain", self.edge.drain_loop)

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
        if name == "Enqueue":
            return self._route_enqueue(handler)
        if name not in WRITE_METHODS:
            return handler

        async def routed(request: Any, context: Ctx) -> Any:
            primary = self._target(context)
            if primary is not None:
                return await self.forwarder.unary(primary, name, request, context)
            response = await handler(request, context)
            await self.wait_durable(response.txid)
            return response

        return routed

    def _route_enqueue(self, handler: Handler) -> Handler:
        edge = self.edge

        async def store_here(request: pb.EnqueueRequest, context: Any) -> pb.EnqueueResponse:
            """On the primary: store, then wait for the request's durability."""
            response: pb.EnqueueResponse = await handler(request, context)
            if (validate.durability(request) or self._cfg.durability) == "replicated":
                await self._replicated(response.txid)
            return response

        # The drain on this node, when it is the primary: the local write path, no gRPC.
        # (The service's Enqueue does not use its context.)
        edge.store_here = lambda request: store_here(request, None)

        async def routed(request: pb.EnqueueRequest, context: Ctx) -> pb.EnqueueResponse:
            if self.forwarder.forwarded(context):  # another node's forward or drain: store here, or refuse
                self._target(context)  # UNAVAILABLE (NOT_PRIMARY) off the primary: no second hop
                return await store_here(request, context)
            level = validate.durability(request) or self._cfg.durability
            if level == "edge":
                return await edge.accept(request)
            explicit = pb.EnqueueRequest()
            explicit.CopyFrom(request)
            explicit.durability = pb.DURABILITY_REPLICATED if level == "replicated" else pb.DURABILITY_LOCAL
            if edge.fallback and (edge.pending or not self.node.is_primary()):
                return await self._forward_or_accept(explicit, context)
            primary = self._target(context)
            if primary is not None:
                response: pb.EnqueueResponse = await self.forwarder.unary(primary, "Enqueue", explicit, context)
                return response
            return await store_here(explicit, context)

        return routed

    async def _forward_or_accept(self, request: pb.EnqueueRequest, context: Ctx) -> pb.EnqueueResponse:
        """The partition outbox: forward (at most ``outbox_forward_timeout_seconds``), and
        accept at the edge when the primary cannot be reached, or while earlier requests
        accepted that way still wait (they reach the primary first)."""
        primary = None if self.node.is_primary() else self.node.primary_address()
        if not self.edge.pending and primary is not None:
            validate.enqueue(request, self._cfg, self._clock.now())  # a bad request is refused here
            # Ids first: if the forward times out after the primary stored the jobs, the
            # edge log's later re-send is recognised as the same jobs.
            for spec in request.jobs:
                if not spec.job_id:
                    spec.job_id = uuid7()
            try:
                response: pb.EnqueueResponse = await self.forwarder.unary(
                    primary, "Enqueue", request, context, at_most=self._cfg.outbox_forward_timeout_seconds
                )
                return response
            except Unavailable:
                pass
            except Forwarded as exc:
                if exc.code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                    raise
        return await self.edge.accept(request)

    def _route_stream(self, handler: Handler) -> Handler:
        async def routed(request: Any, context: Ctx) -> AsyncIterator[Any]:
            primary = self._target(context)
            stream = handler(request, context) if primary is None else self.forwarder.lease(primary, request, context)
            async for message in stream:
                yield message

        return routed

    async def wait_durable(self, txid: int) -> None:
        if self._cfg.durability == "replicated":
            await self._replicated(txid)

    async def _replicated(self, txid: int) -> None:
        if not txid:
            return
        seconds = self._cfg.durability_timeout_seconds
        if not await self.positions.wait(txid, seconds):
            raise CommittedNotReplicated(txid, self.positions.required, seconds)

    # ------------------------------------------------------------------ state

    def healthy(self) -> bool:
        """Serving when this node can take its default Enqueue now: as primary, as a replica
        reaching its primary, or (edge durability or the partition outbox) while its edge
        log accepts, with or without a primary."""
        role = self.node.role()
        if role is Role.PRIMARY:
            return True
        if (self._cfg.durability == "edge" or self.edge.fallback) and self.edge.accepting():
            return True
        return role is Role.REPLICA and self.link is not None and self.link.reachable

    async def accepted(self, job_id: str) -> Accepted | None:
        found = self.edge.find(job_id)
        if found is None:
            return None
        return Accepted.of(found, self._cfg.default_max_attempts)

    async def accepted_by_queue(self) -> dict[str, int]:
        return self.edge.accepted_by_queue()

    def describe(self, info: pb.GetNodeInfoResponse) -> None:
        info.txid = self.node.latest()
        edge = self.edge
        info.outbox_pending = edge.pending
        info.outbox_dead = edge.dead
        info.edge_log_jobs = edge.jobs
        info.edge_log_oldest_age.FromNanoseconds(int(edge.oldest_age() * 1e9))
        info.edge_log_drain_rate = edge.drain_rate()
        info.edge_log_bytes = edge.bytes
        info.edge_log_capacity_bytes = edge.capacity
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

    def replica_lag(self) -> list[ReplicaLag]:
        if self.node.role() is not Role.PRIMARY:
            return []
        head, now = self.node.latest(), self._clock.now()
        return [
            ReplicaLag(p.node, max(0, head - p.txid), max(0, now - p.reported_at) / 1e6)
            for p in self.positions.snapshot()
        ]

    async def primary_info(self, metadata: tuple[tuple[str, str], ...]) -> pb.GetNodeInfoResponse | None:
        primary = self.node.primary_address()
        if primary is None:
            return None
        try:
            info: pb.GetNodeInfoResponse = await self.forwarder.call(
                primary, "GetNodeInfo", pb.GetNodeInfoRequest(), seconds=2.0, metadata=metadata
            )
        except (Unavailable, Forwarded):
            return None
        return info

    async def drain(self) -> None:
        await self.forwarder.drain()

    async def stop(self) -> None:
        await self.forwarder.close()
        await self.edge.close()
        self.node.stop()
