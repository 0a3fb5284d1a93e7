"""Assembling and running one edgeq node: database threads, dispatcher, timers, the
grpc.aio server with QueueService, grpc.health.v1 and server reflection; and the orderly
shutdown (drain) that SIGTERM triggers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeq.v1 import queue_pb2 as pb

from . import db, logs, metrics, status, tracing
from . import replication_pb2 as repl_pb
from .auth import Guard, NodeAuth, Tokens
from .clock import MICROS, Clock, SystemClock
from .cluster import Cluster, Role
from .cluster import build as cluster_build
from .config import Config
from .dispatch import Dispatcher, End
from .limits import StreamLimits
from .maintenance import Maintenance, Retention
from .models import QueueDepth
from .readers import Readers
from .service import QueueService
from .store import Store
from .supervise import Supervisor
from .tls import ServerTLS
from .tokens import TokenCodec
from .wire import safe_deserializer
from .writer import Writer

if TYPE_CHECKING:
    from .dashboard import Dashboard

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QueueService"].full_name
REPLICATION_SERVICE = repl_pb.DESCRIPTOR.services_by_name["ReplicationService"].full_name
#: A node whose role is merely unknown (LiteFS's event stream blipped) keeps its Lease
#: streams this long before ending them; a node LiteFS demotes ends them at once.
ROLE_GRACE_SECONDS = 0.5
HEALTH_SECONDS = 0.5


def server_options(cfg: Config) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        # Accept client keepalive pings (workers ping idle Lease streams), even without calls.
        ("grpc.keepalive_permit_without_calls", 1),
        # Enforced: a peer pinging more often than every 0.5 s gets GOAWAY after 2 strikes
        # (nodes ping each other every second to notice a dead peer within ~2 s).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_rpcs_per_connection),
        *((("grpc.max_connection_idle_ms", int(cfg.max_connection_idle_seconds * 1000)),)
          if cfg.max_connection_idle_seconds else ()),
        *((("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * 1000)),
           ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_seconds * 1000)))
          if cfg.max_connection_age_seconds else ()),
        # Ping clients too, so dead workers' streams are noticed.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.so_reuseport", 0),
        *cfg.grpc_options,
    ]


class InFlight:
    """How many unary RPCs are being handled right now (the writer runs a small write on
    the event loop only while its RPC is the only one)."""

    def __init__(self) -> None:
        self.calls = 0

    def quiet(self) -> bool:
        return self.calls <= 1

    def track(self, fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        async def tracked(request: Any, context: Any) -> Any:
            self.calls += 1
            try:
                return await fn(request, context)
            finally:
                self.calls -= 1

        return tracked


def _traced(fn: Any, streaming: bool) -> Any:
    """The handler with ``logs.TRACE_ID`` set from the call's ``traceparent`` metadata, so
    the log lines written while handling it (and its post-commit bookkeeping) carry it."""
    if streaming:

        async def stream(request: Any, context: Any) -> Any:
            logs.TRACE_ID.set(logs.trace_id(context.invocation_metadata()))
            async for message in fn(request, context):
                yield message

        return stream

    async def unary(request: Any, context: Any) -> Any:
        logs.TRACE_ID.set(logs.trace_id(context.invocation_metadata()))
        return await fn(request, context)

    return unary


def method_handlers(
    service: QueueService,
    cluster: Cluster,
    guard: Guard | None = None,
    streams: StreamLimits | None = None,
    in_flight: InFlight | None = None,
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """One handler per RPC in the proto, wrapped by ``status`` and decoding safely, checked
    by the ``guard`` (auth on), routed by the cluster (on a LiteFS node, writes and Lease go
    to the primary, which checks the caller's token again), unary ones counted ``in_flight``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for m in pb.DESCRIPTOR.services_by_name["QueueService"].methods:
        req_cls = getattr(pb, m.input_type.name)
        resp_cls = getattr(pb, m.output_type.name)
        fn = _traced(cluster.route(m.name, getattr(service, m.name), streaming=m.server_streaming), m.server_streaming)
        if m.server_streaming and streams is not None:
            fn = streams.limit(fn)
        if guard is not None:
            fn = guard.stream(m.name, fn) if m.server_streaming else guard.unary(m.name, fn)
        if m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                status.stream(m.name, fn),
                request_deserializer=safe_deserializer(req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
        else:
            if in_flight is not None:
                fn = in_flight.track(fn)
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                status.unary(m.name, fn),
                request_deserializer=safe_deserializer(req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
    return handlers


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: Health service names beside "" (ready: can answer reads and take writes): SERVING only
#: on the node that applies writes; SERVING while the process works (liveness probes).
PRIMARY_HEALTH_SERVICE = "edgeq.primary"
LIVE_HEALTH_SERVICE = "edgeq.live"


def _status(serving: bool) -> int:
    return int(health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING)


class _DepthSource:
    """The queue depth gauges' read: its own read connection, opened on the first scrape
    (on the metrics HTTP thread), closed with the server."""

    def __init__(self, path: str, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self) -> list[QueueDepth]:
        with self._lock:
            if self._closed:
                return []
            if self._store is None:
                self._store = Store(db.connect(self._path))
            return self._store.queue_depths(self._clock.now())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._store is not None:
                self._store.conn.close()
                self._store = None


class EdgeqServer:
    """One node. ``await start()``, then ``await stop()`` (or ``wait()`` for termination).

    It owns the database threads, the dispatcher, the maintenance timers and the gRPC
    server; everything cluster-specific is ``self.cluster`` (``cluster.build``); every
    background loop runs under ``self.supervisor``.
    """

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.port = 0
        self.dashboard: Dashboard | None = None
        self.supervisor = Supervisor()
        self._in_flight = InFlight()
        #: Who each bearer token is (auth is on when any token is configured).
        self.tokens = Tokens(config.auth_token, config.client_token, config.tokens_file, config.cluster_secret)
        #: TLS of the port and of calls to other nodes (None: plaintext).
        self.tls: ServerTLS | None = (
            ServerTLS(config.tls_cert, config.tls_key, config.tls_client_ca, config.peer_ca)
            if config.tls_cert else None
        )
        self.cluster: Cluster = cluster_build(
            config, self.clock, self._committed, server_options(config), self.tls, self.tokens
        )
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lag grpcio
        self._checkpointer: db.Checkpointer | None = None
        self.writer: Writer | None = None
        self.readers: Readers | None = None
        self._depths: _DepthSource | None = None
        self.dispatcher: Dispatcher | None = None
        self.maintenance: Maintenance | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._serving: bool | None = None
        self._primary_serving: bool | None = None
        self._live: bool | None = None
        self._demotion: asyncio.TimerHandle | None = None

    def _committed(self) -> int:
        return self.writer.txid if self.writer is not None else 0

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._close_resources()  # a failed start leaves no thread or file open
            raise

    async def _start(self) -> None:
        cfg = self.config
        cluster = self.cluster
        await cluster.start()
        path = cluster.db_path
        self._checkpointer = db.Checkpointer(path)
        self.writer = Writer(
            path, self.clock, max_batch=cfg.write_batch, checkpointer=self._checkpointer,
            txid_after_commit=cluster.txid_after_commit, inline_when=self._in_flight.quiet,
        )
        await asyncio.to_thread(self.writer.start)  # opens the file and migrates
        self._checkpointer.start()
        self.readers = Readers(path, threads=cfg.read_threads)
        self._depths = _DepthSource(path, self.clock)
        metrics.QUEUE_DEPTHS.source = self._depths
        metrics.REPLICA_LAG.source = cluster.replica_lag
        codec = TokenCodec(await self.readers.run(lambda s: s.token_key()))
        self.dispatcher = Dispatcher(
            self.writer, codec, self.supervisor, on_leased=self._note_lease, on_throttled=self._note_throttled,
            is_primary=cluster.is_primary,
        )
        retention = Retention(
            completed_us=int(cfg.retention_completed_seconds * MICROS),
            failed_us=int(cfg.retention_failed_seconds * MICROS),
            cancelled_us=int(cfg.retention_cancelled_seconds * MICROS),
            interval_us=int(cfg.retention_interval_seconds * MICROS),
        )
        self.maintenance = Maintenance(
            self.writer, self.readers, self.dispatcher, self.clock, retention, is_primary=cluster.is_primary
        )
        await self.maintenance.load()
        service = QueueService(
            cfg, self.clock, self.writer, self.readers, self.dispatcher, self.maintenance, codec, cluster,
            node_info=self.node_info,
        )

        interceptors: list[Any] = []
        if cfg.tracing:
            interceptors.append(tracing.server_interceptor())
        guard: Guard | None = None
        if self.tokens.enabled:
            interceptors.append(NodeAuth(REPLICATION_SERVICE, self.tokens))
            guard = Guard(self.tokens, service.job_queue)
            self.supervisor.loop("tokens", guard.watch)
        server = grpc.aio.server(options=server_options(cfg), interceptors=interceptors)
        self._server = server
        server.add_registered_method_handlers(  # type: ignore[attr-defined]
            SERVICE_NAME,
            method_handlers(service, cluster, guard, StreamLimits(
                cfg.max_lease_streams, cfg.max_lease_streams_per_connection, cluster.from_node
            ), self._in_flight),
        )
        cluster.attach(server, self.supervisor, self._committed)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME, REPLICATION_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.http_port >= 0:
            from .dashboard import Dashboard  # aiohttp and Jinja2 load only when it is on

            self.dashboard = Dashboard(cfg, self.tokens, self.tls, self.cluster.primary_info)
            server.add_insecure_port(f"unix:{self.dashboard.socket}")  # its private way in (0700 dir)
        if self.tls is not None:
            self.port = server.add_secure_port(address, self.tls.credentials())
        else:
            self.port = server.add_insecure_port(address)
            if not _loopback(cfg.host):
                log.warning(
                    "serving plaintext gRPC on %s: tokens and jobs cross the network unencrypted;"
                    " give --tls-cert and --tls-key (docs/security.md)", address,
                )
        await server.start()
        self.dispatcher.start()
        self.maintenance.start(self.supervisor)
        cluster.on_role_change(self._role_changed)
        self._role_changed(cluster.role())
        if cfg.metrics_address:
            metrics.serve(cfg.metrics_address)
        if self.dashboard is not None:
            await self.dashboard.start()
        # Readiness: the database is open and migrated, timers loaded, dispatch running (and
        # in a cluster, a role from LiteFS and, on a replica, a primary answering).
        await self._update_health()
        self.supervisor.loop("health", self._watch_health)
        log.info(
            "edgeq serving on %s:%d (db %s, %s)", cfg.host, self.port, path,
            "standalone" if cluster.kind == "standalone" else
            f"LiteFS {cluster.role().value}, durability {cfg.durability}, edge log {cfg.edge_log}"
            f"{' (partition outbox on)' if cfg.outbox_path else ''}",
        )

    def _role_changed(self, role: Role) -> None:
        """Follow the cluster role: only a primary dispatches; a node that stops being
        primary ends its Lease streams (UNAVAILABLE: workers reconnect to the new primary)
        at once when LiteFS names another primary, and after ``ROLE_GRACE_SECONDS`` when
        the role is merely unknown (a LiteFS event stream blip must not end every stream)."""
        standalone = self.cluster.kind == "standalone"
        metrics.ROLE.set(3 if standalone else {Role.UNKNOWN: 0, Role.REPLICA: 1, Role.PRIMARY: 2}[role])
        if self._demotion is not None:
            self._demotion.cancel()
            self._demotion = None
        if self.dispatcher is None or self.maintenance is None:
            return
        if role is Role.PRIMARY:
            self.dispatcher.role_changed(True)
            self.maintenance.wake()
            return
        self.dispatcher.role_changed(False)
        if role is Role.REPLICA:
            self._demote(role)
        else:
            self._demotion = asyncio.get_running_loop().call_later(ROLE_GRACE_SECONDS, self._demote, role)

    def _demote(self, role: Role) -> None:
        self._demotion = None
        if self.dispatcher is None or self.cluster.is_primary():
            return
        n = self.dispatcher.end_streams(
            End(f"this node is not the primary any more ({role.value}); reconnect", "NOT_PRIMARY_ANY_MORE")
        )
        if n:
            log.warning("not primary (%s): ended %d local Lease stream(s); their workers reconnect", role.value, n)

    def _healthy(self) -> bool:
        if self.writer is not None and not self.writer.alive:
            return False
        return self.cluster.healthy()

    async def _update_health(self) -> None:
        if self._stopping:
            return
        serving = self._healthy()
        # PRIMARY_HEALTH_SERVICE: SERVING only where writes are applied (the primary, or a
        # single node), for probes and load balancers that must pick the primary.
        primary = serving and (self.cluster.kind == "standalone" or self.cluster.is_primary())
        if primary != self._primary_serving:
            self._primary_serving = primary
            await self._health.set(PRIMARY_HEALTH_SERVICE, _status(primary))
        # LIVE_HEALTH_SERVICE: the process can do its work at all (liveness); a node that
        # merely cannot reach the primary stays live (restarting it would not help).
        live = self.writer is not None and self.writer.alive
        if live != self._live:
            self._live = live
            await self._health.set(LIVE_HEALTH_SERVICE, _status(live))
        if serving == self._serving:
            return
        if self._serving is not None:
            log.warning("health: %s", "SERVING" if serving else "NOT_SERVING (writer stopped, or no primary reachable)")
        self._serving = serving
        for name in ("", SERVICE_NAME):
            await self._health.set(name, _status(serving))

    async def _watch_health(self) -> None:
        """Health follows real readiness: NOT_SERVING once the writer thread is gone, or in
        a cluster while the role is unknown or (replica) the primary does not answer."""
        while True:
            await asyncio.sleep(HEALTH_SECONDS)
            await self._update_health()

    def node_info(self) -> pb.GetNodeInfoResponse:
        """GetNodeInfo's answer: this node's role, primary, position, replicas, outbox."""
        cfg = self.config
        info = pb.GetNodeInfoResponse(
            address=cfg.address, durability=cfg.durability, loop_restarts=sum(self.supervisor.restarts.values())
        )
        self.cluster.describe(info)
        return info

    def _note_throttled(self, queue: str, at: int) -> None:
        if self.maintenance is not None:
            self.maintenance.note_due(queue, at)

    def _note_lease(self, expires_at: int) -> None:
        if self.maintenance is not None:
            self.maintenance.note_lease(expires_at)

    async def stop(self, drain_seconds: float | None = None, grace_seconds: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, end Lease streams, local and proxied (workers stop
        getting jobs but can still Ack/Nack what they hold) until no leases are outstanding
        or ``drain_seconds`` pass, then stop the gRPC server with a grace period, then close
        the database."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        cfg = self.config
        drain = cfg.drain_seconds if drain_seconds is None else drain_seconds
        grace = cfg.grace_seconds if grace_seconds is None else grace_seconds
        log.info("draining (up to %gs), then stopping with %gs grace", drain, grace)
        await self._health.enter_graceful_shutdown()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.cluster.drain()
        if self.dispatcher is not None:
            await self.dispatcher.drain()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain
            while self.dispatcher.outstanding and loop.time() < deadline:  # noqa: ASYNC110 - bounded drain poll
                await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.stop(grace)
        await self._close_resources()
        await asyncio.to_thread(db.final_checkpoint, self.cluster.db_path)
        log.info("stopped")
        self._stopped.set()

    async def _close_resources(self) -> None:
        if self._demotion is not None:
            self._demotion.cancel()
        if self._server is not None:
            await self._server.stop(0)
        await self.supervisor.stop()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.readers is not None:
            self.readers.close()
        if self._depths is not None:
            if metrics.QUEUE_DEPTHS.source is self._depths:
                metrics.QUEUE_DEPTHS.source = None
                metrics.REPLICA_LAG.source = None
            self._depths.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        await self.cluster.stop()  # after the writer, which reads the position per commit

    async def wait(self) -> None:
        await self._stopped.wait()
