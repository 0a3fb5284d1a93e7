"""Server configuration: one dataclass, defaults as named values, loaded from flags and
``EDGEQ_*`` environment variables (flags win). Validated at construction."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024
#: Enqueue acknowledgement levels (``--durability``).
DURABILITIES = ("local", "replicated", "edge")


def parse_bool(raw: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


@dataclass(frozen=True)
class Config:
    #: Address to listen on; port 0 picks a free port.
    host: str = "127.0.0.1"
    port: int = 50051
    #: SQLite database file (created if missing).
    db_path: str = "./edgeq.db"
    #: LiteFS mode: the LiteFS FUSE mount directory and the database name in it (the
    #: database is then <litefs_mount>/<litefs_db>, and txids are LiteFS TXIDs).
    litefs_mount: str = ""
    litefs_db: str = "edgeq.db"
    #: LiteFS's own HTTP API (its ``http.addr``): a replica follows ``/events`` there to
    #: report its position to the primary as soon as it moves.
    litefs_http: str = "127.0.0.1:20202"
    #: This node's address as other nodes reach it (its LiteFS ``lease.hostname``); empty
    #: means host:port.
    advertise_address: str = ""
    #: "local": a write is acknowledged once committed on the primary (a failover can lose
    #: the last ones). "replicated": only once every live replica (one that reported its
    #: position within the last second) applied it, and at least ``durability_replicas``:
    #: with a Consul lease any candidate may become the next primary, so every one that can
    #: must hold the write. Waits up to ``durability_timeout_seconds``, then answers ABORTED
    #: (COMMITTED_NOT_REPLICATED). LiteFS mode only. "edge": once fsynced in the answering
    #: node's edge log (``edge_log_path``), drained to the primary in the background; on
    #: a standalone server the same as "local". A request's ``durability`` overrides it.
    durability: str = "local"
    durability_replicas: int = 1
    durability_timeout_seconds: float = 5.0
    #: The edge log (LiteFS mode): a local SQLite file outside the mount holding Enqueues
    #: accepted at the edge until the drain stores them on the primary. Empty: next to the
    #: mount, ``<litefs_mount>.edge-log.db``.
    edge_log_path: str = ""
    #: Cap on the bytes of requests waiting in the edge log; past it Enqueue answers
    #: RESOURCE_EXHAUSTED with a retry delay (never unbounded disk, never a silent drop).
    edge_log_max_bytes: int = 1024 * MiB
    #: What the primary must reach before a drained job leaves the edge log: "replicated"
    #: (applied by its live replicas: a failover cannot lose it) or "local".
    edge_drain_durability: str = "replicated"
    #: How long a drained request stays in the edge log after the primary stored it, to be
    #: offered again (the primary dedupes by job id) when this node sees a new primary or
    #: restarts. LiteFS elects whichever candidate takes the Consul lock first, not the
    #: most up to date: a replica that was down and comes back just before the primary
    #: dies can win without the primary's last transactions, and they are gone from every
    #: node. The edge logs that held those jobs give them back. 0: deleted once stored.
    edge_log_keep_seconds: float = 60.0
    #: Partition outbox: with a path, "local"/"replicated" Enqueues on a node that cannot
    #: reach the primary are accepted at the edge instead of failing (the path is then the
    #: edge log's). Empty: they answer UNAVAILABLE.
    outbox_path: str = ""
    #: With the outbox on: how long a forwarded Enqueue may wait for the primary before
    #: the replica buffers it instead.
    outbox_forward_timeout_seconds: float = 1.0
    #: Largest payload (and Ack result) accepted, in bytes.
    max_payload_bytes: int = 1 * MiB
    #: Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = 64 * MiB
    #: Most jobs (or Ack/Nack/Heartbeat items) in one call.
    max_batch: int = 1000
    #: Per job: headers (entries, key length, bytes of keys and values), idempotency key
    #: length (at most 256, the database's own bound).
    max_headers: int = 64
    max_header_key_length: int = 128
    max_headers_bytes: int = 16 * 1024
    max_idempotency_key_length: int = 256
    #: Queues one Lease stream may name.
    max_queues_per_lease: int = 100
    #: max_attempts when a JobSpec leaves it 0.
    default_max_attempts: int = 3
    #: Lease length when a LeaseRequest leaves it unset, and the longest allowed.
    default_lease_seconds: float = 30.0
    max_lease_seconds: float = 12 * 3600.0
    #: Longest delay, retry delay or run_at horizon accepted.
    max_delay_seconds: float = 366 * 24 * 3600.0
    #: Open Lease streams allowed in total on this node, and per client connection; past
    #: either, Lease answers RESOURCE_EXHAUSTED (TOO_MANY_STREAMS) with a retry delay.
    max_lease_streams: int = 10_000
    max_lease_streams_per_connection: int = 100
    #: Concurrent RPCs per client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: more
    #: wait in the client until one ends). A replica proxies all its workers' Lease streams
    #: over one connection to the primary: keep it above the most workers one node serves.
    max_concurrent_rpcs_per_connection: int = 10_000
    #: A connection with no RPC for this long is closed (0: never).
    max_connection_idle_seconds: float = 3600.0
    #: A connection older than this is asked to reconnect (GOAWAY; its RPCs get
    #: ``max_connection_age_grace_seconds`` to finish; 0: never). Spreads long-lived workers
    #: over nodes and caps what one client holds.
    max_connection_age_seconds: float = 0.0
    max_connection_age_grace_seconds: float = 30.0
    #: Keepalive message interval on idle Lease streams.
    keepalive_seconds: float = 15.0
    #: Retry backoff for Nack without retry_delay: base * 2**(attempt-1), capped, jittered.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 3600.0
    #: Retention of final jobs; 0 keeps them forever.
    retention_completed_seconds: float = 24 * 3600.0
    retention_failed_seconds: float = 7 * 24 * 3600.0
    retention_cancelled_seconds: float = 24 * 3600.0
    retention_interval_seconds: float = 60.0
    #: How long reads wait for min_txid before UNAVAILABLE.
    min_txid_wait_seconds: float = 5.0
    #: On SIGTERM: how long acks/nacks are still taken after Lease streams end, then
    #: how long in-flight RPCs get to finish.
    drain_seconds: float = 10.0
    grace_seconds: float = 5.0
    #: Reader threads (each with its own SQLite connection).
    read_threads: int = 4
    #: Most writes grouped into one transaction.
    write_batch: int = 512
    #: Bearer token with full access; with client_token, turns authentication on.
    auth_token: str = ""
    #: Bearer token for producers and workers (no CancelJob/RetryJob/PauseQueue/ResumeQueue).
    client_token: str = ""
    #: TOML file of named, scoped tokens (their SHA-256, never the tokens): see auth.py and
    #: docs/security.md. Re-read when it changes; a removed token is revoked at once.
    tokens_file: str = ""
    #: How nodes of a LiteFS cluster authenticate to each other (node-to-node RPCs, the
    #: forwarded-call marker, the edge log's drain). Empty: auth_token.
    cluster_secret: str = ""
    #: TLS: the server's certificate chain and key (PEM files). With both the gRPC port
    #: serves TLS only; the files are re-read when they change (or on SIGHUP).
    tls_cert: str = ""
    tls_key: str = ""
    #: With TLS: a CA (PEM) whose signature every client certificate must carry (mTLS).
    tls_client_ca: str = ""
    #: With TLS: the CA other nodes' certificates are verified against when this node calls
    #: them. Empty: the client CA, else the system roots.
    peer_ca: str = ""
    #: host:port for the Prometheus /metrics endpoint; empty turns it off.
    metrics_address: str = ""
    #: The web dashboard's port on ``host`` (HTTPS with the gRPC port's certificate when TLS
    #: is on; the same tokens). -1: off; 0: a free port (logged).
    http_port: int = -1
    #: Log level name.
    log_level: str = "INFO"
    #: Log lines as ``text`` or ``json`` (one object per line: time, level, logger, message,
    #: trace_id of the RPC, job_id and queue of job events).
    log_format: str = "text"
    #: OpenTelemetry: a server span per RPC (opentelemetry-instrumentation-grpc), exported by
    #: OTLP as the standard OTEL_* variables say. Needs ``pip install 'edgeq-server[otel]'``.
    tracing: bool = False
    #: Extra gRPC server options (tests).
    grpc_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int | float) and not isinstance(v, bool) and v < 0 and f.name != "http_port":
                raise ValueError(f"{f.name} must not be negative (got {v})")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (got {self.port})")
        if self.max_lease_streams < 1 or self.max_lease_streams_per_connection < 1:
            raise ValueError("max_lease_streams and max_lease_streams_per_connection must be at least 1")
        if not 1 <= self.max_idempotency_key_length <= 256:
            raise ValueError("max_idempotency_key_length must be 1..256")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json (got {self.log_format!r})")
        per_job = (self.max_headers, self.max_header_key_length, self.max_headers_bytes, self.max_queues_per_lease)
        if min(per_job) < 1:
            raise ValueError(
                "max_headers, max_header_key_length, max_headers_bytes and max_queues_per_lease must be at least 1"
            )
        if self.max_concurrent_rpcs_per_connection < 1:
            raise ValueError("max_concurrent_rpcs_per_connection must be at least 1")
        if self.max_batch < 1 or self.write_batch < 1 or self.read_threads < 1:
            raise ValueError("max_batch, write_batch and read_threads must be at least 1")
        if not 1 <= self.default_max_attempts <= 1000:
            raise ValueError("default_max_attempts must be 1..1000")
        if not 0 < self.default_lease_seconds <= self.max_lease_seconds:
            raise ValueError("default_lease_seconds must be > 0 and <= max_lease_seconds")
        if self.keepalive_seconds <= 0:
            raise ValueError("keepalive_seconds must be > 0")
        if self.retention_interval_seconds <= 0:
            raise ValueError("retention_interval_seconds must be > 0")
        if self.durability not in DURABILITIES:
            raise ValueError(f"durability must be 'local', 'replicated' or 'edge' (got {self.durability!r})")
        if self.edge_drain_durability not in ("local", "replicated"):
            raise ValueError(
                f"edge_drain_durability must be 'local' or 'replicated' (got {self.edge_drain_durability!r})"
            )
        if not self.litefs_mount and (self.durability == "replicated" or self.outbox_path or self.edge_log_path):
            raise ValueError("durability=replicated, outbox_path and edge_log_path need LiteFS mode (litefs_mount)")
        if self.outbox_path and self.edge_log_path and self.outbox_path != self.edge_log_path:
            raise ValueError("outbox_path and edge_log_path name the same file (the edge log); give one")
        if not -1 <= self.http_port <= 65535:
            raise ValueError("http_port must be -1 (off), 0 (any free port) or a port number")
        if self.durability_replicas < 1:
            raise ValueError("durability_replicas must be at least 1")
        needs_secret = self.client_token or self.tokens_file
        if self.litefs_mount and needs_secret and not (self.auth_token or self.cluster_secret):
            raise ValueError(
                "in LiteFS mode, auth needs cluster_secret (or auth_token): nodes use it to talk to each other"
            )
        if self.outbox_forward_timeout_seconds <= 0:
            raise ValueError("outbox_forward_timeout_seconds must be > 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both (TLS) or neither")
        if (self.tls_client_ca or self.peer_ca) and not self.tls_cert:
            raise ValueError("tls_client_ca and peer_ca need TLS on (tls_cert and tls_key)")
        if self.max_payload_bytes >= self.max_message_bytes:
            raise ValueError("max_payload_bytes must be below max_message_bytes")

    @property
    def edge_log(self) -> str:
        """The edge log's file ("" without LiteFS: a standalone server has no edge log)."""
        if not self.litefs_mount:
            return ""
        return self.edge_log_path or self.outbox_path or self.litefs_mount.rstrip("/") + ".edge-log.db"

    @property
    def address(self) -> str:
        """How other nodes reach this one."""
        return self.advertise_address or f"{self.host}:{self.port}"

    @classmethod
    def env_name(cls, name: str) -> str:
        return "EDGEQ_" + name.upper()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then ``EDGEQ_<FIELD>`` variables, then non-None ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "grpc_options":
                continue
            raw = env.get(cls.env_name(f.name))
            if raw is not None:
                kind: Any = type(f.default)
                try:
                    values[f.name] = parse_bool(raw) if kind is bool else kind(raw)
                except ValueError:
                    raise ValueError(f"{cls.env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
