"""Assembling and running one edgeq node: database threads, dispatcher, timers, the
grpc.aio server with QueueService, grpc.health.v1 and server reflection; and the orderly
shutdown (drain) that SIGTERM triggers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import replication_pb2 as repl_pb
from edgeq.v1 import replication_pb2_grpc as repl_grpc

from . import convert, db, metrics, status
from .auth import TokenAuth
from .clock import MICROS, Clock, SystemClock
from .config import Config
from .dispatch import Dispatcher
from .errors import Unavailable
from .maintenance import Maintenance, Retention
from .outbox import Outbox
from .readers import Readers
from .replication import Forwarder, LiteFSNode, Position, ReplicaLink, ReplicaPositions, ReplicationServicer
from .service import QueueService
from .tokens import TokenCodec
from .wire import safe_deserializer
from .writer import Writer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QueueService"].full_name
REPLICATION_SERVICE = repl_pb.DESCRIPTOR.services_by_name["ReplicationService"].full_name


def server_options(cfg: Config) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        # Accept client keepalive pings (workers ping idle Lease streams), even without calls.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        # Ping clients too, so dead workers' streams are noticed.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.so_reuseport", 0),
        *cfg.grpc_options,
    ]


#: RPCs that write: on a LiteFS replica they are forwarded to the primary.
WRITE_METHODS = frozenset({"Enqueue", "Ack", "Nack", "Heartbeat", "CancelJob", "RetryJob", "PauseQueue", "ResumeQueue"})


class Cluster:
    """What a LiteFS node adds around the service: forwarding writes to the primary, the
    partition outbox for Enqueue, and waiting for replicas (replicated durability)."""

    def __init__(
        self, forwarder: Forwarder, outbox: Outbox | None, positions: ReplicaPositions | None, cfg: Config
    ) -> None:
        self.forwarder = forwarder
        self.outbox = outbox
        self.positions = positions if cfg.durability == "replicated" else None
        self.timeout = cfg.durability_timeout_seconds

    async def replicated(self, txid: int) -> None:
        """Replicated durability: return once enough replicas applied ``txid``."""
        if self.positions is None or not txid:
            return
        if not await self.positions.wait(txid, self.timeout):
            raise Unavailable(
                f"committed on the primary at txid {txid}, but fewer than {self.positions.required} replica(s)"
                f" applied it within {self.timeout:g}s, so a failover could lose it; retry (with the same"
                " idempotency key for Enqueue)"
            )


def _routed(name: str, fn: Any, cluster: Cluster) -> Any:
    forwarder = cluster.forwarder
    outbox = cluster.outbox if name == "Enqueue" else None

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # Through the outbox on a replica, and on a promoted node until what it buffered is
        # drained (jobs keep the order this node accepted them in).
        if outbox is not None and not forwarder.forwarded(context) and (outbox.pending or not forwarder.local()):
            return await outbox.enqueue(request, context)
        primary = forwarder.target(context)
        if primary is not None:
            return await forwarder.unary(primary, name, request, context)
        response = await fn(request, context)
        await cluster.replicated(response.txid)
        return response

    return handler


def _lease_routed(fn: Any, forwarder: Forwarder) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        primary = forwarder.target(context)
        stream = fn(request, context) if primary is None else forwarder.lease(primary, request, context)
        async for message in stream:
            yield message

    return handler


def method_handlers(
    service: QueueService, cluster: Cluster | None = None
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """One handler per RPC in the proto, wrapped by ``status`` and decoding safely; on a
    LiteFS node, writes are routed to the primary."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in pb.DESCRIPTOR.services_by_name["QueueService"].methods:
        req_cls = getattr(pb, m.input_type.name)
        resp_cls = getattr(pb, m.output_type.name)
        fn = getattr(service, m.name)
        if cluster is not None and m.name in WRITE_METHODS:
            fn = _routed(m.name, fn, cluster)
        elif cluster is not None and m.server_streaming:
            fn = _lease_routed(fn, cluster.forwarder)
        if m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                status.stream(m.name, fn),
                request_deserializer=safe_deserializer(req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                status.unary(m.name, fn),
                request_deserializer=safe_deserializer(req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
    return handlers


class EdgeqServer:
    """One node. ``await start()``, then ``await stop()`` (or ``wait()`` for termination)."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lag grpcio
        self._checkpointer: db.Checkpointer | None = None
        self.writer: Writer | None = None
        self.readers: Readers | None = None
        self.dispatcher: Dispatcher | None = None
        self.maintenance: Maintenance | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._forwarder: Forwarder | None = None
        self._role_watch: asyncio.Task[None] | None = None
        self.positions: ReplicaPositions | None = None
        self.link: ReplicaLink | None = None
        self.outbox: Outbox | None = None
        self._serving: bool | None = None
        self.litefs = (
            LiteFSNode(config.litefs_mount, config.litefs_db, config.litefs_http) if config.litefs_mount else None
        )
        self._path = os.path.abspath(self.litefs.db_path if self.litefs else config.db_path)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._close_resources()  # a failed start leaves no thread or file open
            raise

    async def _wait_for_schema(self) -> None:
        """A replica cannot create or migrate the (read-only) database: wait until the
        primary has, e.g. on a fresh cluster whose replica synced before the first write."""
        assert self.litefs is not None
        litefs = self.litefs
        await asyncio.to_thread(litefs.wait_ready, 2.0)
        waited = 0.0
        while not litefs.is_primary() and await asyncio.to_thread(db.schema_version, self._path) < len(db.MIGRATIONS):
            if waited % 10 == 0:
                log.info("replica: waiting for the primary to create or migrate %s", self._path)
            await asyncio.sleep(0.5)
            waited += 0.5

    async def _start(self) -> None:
        cfg = self.config
        path = self._path
        if self.litefs is not None:
            self.litefs.start()
            await self._wait_for_schema()
        self._checkpointer = db.Checkpointer(path)
        self.writer = Writer(
            path, self.clock, max_batch=cfg.write_batch, checkpointer=self._checkpointer,
            txid_after_commit=self.litefs.txid if self.litefs else None,
        )
        await asyncio.to_thread(self.writer.start)  # opens the file and migrates
        self._checkpointer.start()
        self.readers = Readers(path, threads=cfg.read_threads)
        codec = TokenCodec(await self.readers.run(lambda s: s.token_key()))
        self.maintenance = None
        self.dispatcher = Dispatcher(self.writer, codec, on_leased=self._note_lease)
        retention = Retention(
            completed_us=int(cfg.retention_completed_seconds * MICROS),
            failed_us=int(cfg.retention_failed_seconds * MICROS),
            cancelled_us=int(cfg.retention_cancelled_seconds * MICROS),
            interval_us=int(cfg.retention_interval_seconds * MICROS),
        )
        self.maintenance = Maintenance(
            self.writer, self.readers, self.dispatcher, self.clock, retention,
            is_primary=self.litefs.is_primary if self.litefs else lambda: True,
        )
        await self.maintenance.load()
        writer = self.writer
        position = Position(self.litefs.txid if self.litefs else lambda: writer.txid)
        service = QueueService(
            cfg, self.clock, self.writer, self.readers, self.dispatcher, self.maintenance, codec, position,
            node_info=self.node_info,
        )

        interceptors = []
        if cfg.auth_token or cfg.client_token:
            interceptors.append(TokenAuth(SERVICE_NAME, cfg.auth_token, cfg.client_token, REPLICATION_SERVICE))
        server = grpc.aio.server(options=server_options(cfg), interceptors=interceptors)
        self._server = server
        cluster = None
        if self.litefs is not None:
            self._role_watch = asyncio.create_task(self.litefs.watch(), name="edgeq-litefs-role")
            self._forwarder = Forwarder(self.litefs, cfg.address, server_options(cfg))
            peer_metadata = (("authorization", f"Bearer {cfg.auth_token}"),) if cfg.auth_token else ()
            self.positions = ReplicaPositions(cfg.durability_replicas, self.clock.now)
            servicer = ReplicationServicer(self.litefs, self.positions, lambda: writer.txid)
            repl_grpc.add_ReplicationServiceServicer_to_server(servicer, server)
            self.link = ReplicaLink(self.litefs, self._forwarder, cfg.address, peer_metadata)
            if cfg.outbox_path:
                self.outbox = Outbox(cfg, self.clock, self.litefs, self._forwarder, peer_metadata)
                await self.outbox.start()
            cluster = Cluster(self._forwarder, self.outbox, self.positions, cfg)
        server.add_registered_method_handlers(SERVICE_NAME, method_handlers(service, cluster))  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME, REPLICATION_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME,
            ),
            server,
        )
        self.port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        await server.start()
        self.dispatcher.start()
        self.maintenance.start()
        if self.link is not None:
            self.link.start()
        if cfg.metrics_address:
            metrics.serve(cfg.metrics_address)
        # Readiness: the database is open and migrated, timers loaded, dispatch running (and
        # on a replica, a primary answering).
        await self._update_health()
        self._watch = asyncio.create_task(self._watch_health(), name="edgeq-health")
        log.info(
            "edgeq serving on %s:%d (db %s, %s)", cfg.host, self.port, path,
            "standalone" if self.litefs is None else
            f"LiteFS {'primary' if self.litefs.is_primary() else 'replica of ' + str(self.litefs.primary_address())},"
            f" durability {cfg.durability}, outbox {'on' if self.outbox else 'off'}",
        )

    def _healthy(self) -> bool:
        if self.writer is not None and not self.writer.alive:
            return False
        return self.link is None or self.link.reachable

    async def _update_health(self) -> None:
        serving = self._healthy()
        if serving == self._serving or self._stopping:
            return
        if self._serving is not None:
            log.warning("health: %s", "SERVING" if serving else "NOT_SERVING (writer stopped or no primary reachable)")
        self._serving = serving
        state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, state)

    async def _watch_health(self) -> None:
        """Health follows real readiness: NOT_SERVING once the writer thread is gone, or on
        a replica while its primary does not answer (a load balancer then prefers others)."""
        while True:
            await asyncio.sleep(0.5)
            await self._update_health()

    def node_info(self) -> pb.GetNodeInfoResponse:
        """GetNodeInfo's answer: this node's role, primary, position, replicas, outbox."""
        cfg = self.config
        info = pb.GetNodeInfoResponse(
            address=cfg.address, durability=cfg.durability, outbox_pending=self.outbox.pending if self.outbox else 0
        )
        if self.litefs is None:
            info.role = pb.NODE_ROLE_STANDALONE
            info.txid = self.writer.txid if self.writer else 0
            return info
        info.txid = self.litefs.txid()
        if self.litefs.is_primary():
            info.role = pb.NODE_ROLE_PRIMARY
            for node, txid, at in self.positions.snapshot() if self.positions else ():
                info.replicas.add(node=node, txid=txid, reported_at=convert.timestamp(at))
        else:
            info.role = pb.NODE_ROLE_REPLICA
            info.primary = self.litefs.primary_address() or ""
            info.primary_reachable = self.link.reachable if self.link else False
        return info

    def _note_lease(self, expires_at: int) -> None:
        if self.maintenance is not None:
            self.maintenance.note_lease(expires_at)

    async def stop(self, drain_seconds: float | None = None, grace_seconds: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, end Lease streams (workers stop getting jobs but can
        still Ack/Nack what they hold) until no leases are outstanding or ``drain_seconds``
        pass, then stop the gRPC server with a grace period, then close the database."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        cfg = self.config
        drain = cfg.drain_seconds if drain_seconds is None else drain_seconds
        grace = cfg.grace_seconds if grace_seconds is None else grace_seconds
        log.info("draining (up to %gs), then stopping with %gs grace", drain, grace)
        await self._health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
        if self.dispatcher is not None:
            await self.dispatcher.drain()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain
            while self.dispatcher.outstanding and loop.time() < deadline:  # noqa: ASYNC110 - bounded drain poll
                await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.stop(grace)
        await self._close_resources()
        await asyncio.to_thread(db.final_checkpoint, self._path)
        log.info("stopped")
        self._stopped.set()

    async def _close_resources(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self.link is not None:
            await self.link.stop()
        if self.outbox is not None:
            await self.outbox.stop()
        if self._forwarder is not None:
            await self._forwarder.close()
        if self._role_watch is not None:
            self._role_watch.cancel()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.readers is not None:
            self.readers.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self.litefs is not None:  # after the writer, which reads the position per commit
            self.litefs.stop()

    async def wait(self) -> None:
        await self._stopped.wait()
