"""Plain Python values for edgeq's messages, and their conversion to and from protobuf.

Owns ``JobState``, ``LeaseOutcome``, the frozen ``Job`` / ``QueueStats`` / ``EnqueueResult``
read models (timestamps as UTC datetimes, spans as float seconds, the message kept as
``.raw``), the ``JobSpec`` producers build, and the small helpers that turn floats,
timedeltas and datetimes into ``Duration`` / ``Timestamp``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from google.protobuf import duration_pb2, timestamp_pb2

from edgeq.v1 import queue_pb2 as pb

__all__ = [
    "EPOCH",
    "EnqueueResult",
    "Job",
    "JobSpec",
    "JobSpecLike",
    "JobState",
    "LeaseOutcome",
    "QueueStats",
    "to_datetime",
    "to_duration",
    "to_job_spec",
    "to_seconds",
    "to_timestamp",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Accepted at the edge: durable in the edge log of the node that answered the
    #: Enqueue, not yet stored on the primary (only that node's reads show it).
    ACCEPTED = "accepted"
    #: A state this client version does not know (never sent by a v1 server).
    UNSPECIFIED = "unspecified"

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        return _STATE_FROM_PROTO.get(value, cls.UNSPECIFIED)

    def to_proto(self) -> pb.JobState:
        return _STATE_TO_PROTO[self]


_STATE_TO_PROTO: dict[JobState, pb.JobState] = {
    JobState.PENDING: pb.JOB_STATE_PENDING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.COMPLETED: pb.JOB_STATE_COMPLETED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
    JobState.ACCEPTED: pb.JOB_STATE_ACCEPTED,
    JobState.UNSPECIFIED: pb.JOB_STATE_UNSPECIFIED,
}
_STATE_FROM_PROTO: dict[int, JobState] = {int(v): k for k, v in _STATE_TO_PROTO.items()}


class Uniqueness(enum.StrEnum):
    """Which existing jobs with the same ``unique_key`` make an Enqueue a duplicate."""

    #: One PENDING job per key (a running one does not block the next).
    PENDING = "pending"
    #: One PENDING or RUNNING job per key (the default with a unique_key).
    ACTIVE = "active"

    def to_proto(self) -> pb.Uniqueness:
        return pb.UNIQUENESS_PENDING if self is Uniqueness.PENDING else pb.UNIQUENESS_ACTIVE


class Durability(enum.StrEnum):
    """When an Enqueue is acknowledged (``Client(durability=...)`` or per call)."""

    #: Once fsynced in the edge log of the node that answers (replica or primary):
    #: sub-millisecond, accepted with no primary reachable; stored on the primary later,
    #: exactly once, under the returned id. Lost only with that node's disk before it drains.
    EDGE = "edge"
    #: Once committed on the primary.
    LOCAL = "local"
    #: Once committed on the primary and applied by its live replicas.
    REPLICATED = "replicated"

    def to_proto(self) -> pb.Durability:
        return {
            Durability.EDGE: pb.DURABILITY_EDGE,
            Durability.LOCAL: pb.DURABILITY_LOCAL,
            Durability.REPLICATED: pb.DURABILITY_REPLICATED,
        }[self]


class LeaseOutcome(enum.StrEnum):
    """The result of settling (Ack/Nack) or extending (Heartbeat) one lease."""

    #: The lease was live and the request took effect.
    OK = "ok"
    #: The lease expired, was re-leased, was settled already, or the job was cancelled.
    STALE = "stale"
    #: Not a token this server issued.
    INVALID = "invalid"
    #: Heartbeat only: CancelJob cancelled the job under this lease (stop the handler).
    CANCEL_REQUESTED = "cancel_requested"
    UNSPECIFIED = "unspecified"

    @classmethod
    def from_proto(cls, value: int) -> LeaseOutcome:
        return _OUTCOME_FROM_PROTO.get(value, cls.UNSPECIFIED)


_OUTCOME_FROM_PROTO: dict[int, LeaseOutcome] = {
    int(pb.LEASE_OUTCOME_OK): LeaseOutcome.OK,
    int(pb.LEASE_OUTCOME_STALE): LeaseOutcome.STALE,
    int(pb.LEASE_OUTCOME_INVALID): LeaseOutcome.INVALID,
    int(pb.LEASE_OUTCOME_CANCEL_REQUESTED): LeaseOutcome.CANCEL_REQUESTED,
}


# ---------------------------------------------------------------- time conversion


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A UTC datetime (microsecond precision), or None for an unset (zero) Timestamp."""
    if not ts.seconds and not ts.nanos:
        return None
    return EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def to_seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def to_duration(value: float | timedelta) -> duration_pb2.Duration:
    """A Duration from seconds (float) or a timedelta."""
    d = duration_pb2.Duration()
    if isinstance(value, timedelta):
        d.FromTimedelta(value)
    else:
        d.FromNanoseconds(round(value * 1e9))
    return d


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp from a timezone-aware datetime (naive ones are refused: ambiguous)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetimes sent to edgeq must be timezone-aware (e.g. datetime.now(UTC))")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# ---------------------------------------------------------------- read models


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the server reports it."""

    id: str
    queue: str
    payload: bytes
    state: JobState
    attempts: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    lease_expires_at: datetime | None
    error_message: str
    idempotency_key: str | None
    headers: Mapping[str, str] = field(hash=False)
    worker_id: str | None
    result: bytes | None
    raw: pb.Job = field(repr=False, compare=False, hash=False)
    #: The unique key it was enqueued with, if any.
    unique_key: str | None = None
    #: The last progress its handler reported (``LeasedJob.report_progress``), if any.
    progress: float | None = None
    progress_message: str | None = None
    #: CancelJob found it RUNNING (its worker is told to stop the handler).
    cancel_requested: bool = False
    #: Its concurrency key, if any, and how many of the key's jobs may run at once.
    concurrency_key: str | None = None
    concurrency_limit: int = 0
    #: Its fair group, if any (None: the default group).
    group: str | None = None

    @classmethod
    def from_proto(cls, m: pb.Job) -> Job:
        return cls(
            id=m.id,
            queue=m.queue,
            payload=m.payload,
            state=JobState.from_proto(m.state),
            attempts=m.attempts,
            max_attempts=m.max_attempts,
            priority=m.priority,
            run_at=to_datetime(m.run_at) or EPOCH,
            created_at=to_datetime(m.created_at) or EPOCH,
            started_at=to_datetime(m.started_at),
            completed_at=to_datetime(m.completed_at),
            lease_expires_at=to_datetime(m.lease_expires_at),
            error_message=m.error_message,
            idempotency_key=m.idempotency_key or None,
            headers=dict(m.headers),
            worker_id=m.worker_id or None,
            result=m.result or None,
            raw=m,
            unique_key=m.unique_key or None,
            progress=m.progress if m.progress or m.progress_message else None,
            progress_message=m.progress_message or None,
            cancel_requested=m.cancel_requested,
            concurrency_key=m.concurrency_key or None,
            concurrency_limit=m.concurrency_limit,
            group=m.group or None,
        )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's counts by state."""

    queue: str
    #: PENDING jobs that may run now.
    pending: int
    #: PENDING jobs whose run_at is in the future.
    scheduled: int
    running: int
    completed: int
    failed: int
    cancelled: int
    #: Age in seconds of the oldest job that may run now (0 when none).
    oldest_pending_age: float
    paused: bool
    #: Jobs accepted at the edge by the answering node, not yet on the primary.
    accepted: int
    raw: pb.QueueStats = field(repr=False, compare=False, hash=False)
    #: The rate limit (``Client.set_rate_limit``): jobs per ``rate_limit_period`` seconds (0: none).
    rate_limit_jobs: int = 0
    rate_limit_period: float = 0.0
    #: Ready jobs wait for the rate limit's tokens right now.
    rate_limited: bool = False
    #: Fair groups (``JobSpec.group``) with PENDING jobs.
    groups: int = 0
    #: The per-key rate limit (``Client.set_rate_limit`` with ``key_header``): the header
    #: (None: no such limit), jobs per ``key_rate_limit_period`` seconds for each key.
    key_rate_limit_header: str | None = None
    key_rate_limit_jobs: int = 0
    key_rate_limit_period: float = 0.0

    @classmethod
    def from_proto(cls, m: pb.QueueStats) -> QueueStats:
        return cls(
            queue=m.queue,
            pending=m.pending,
            scheduled=m.scheduled,
            running=m.running,
            completed=m.completed,
            failed=m.failed,
            cancelled=m.cancelled,
            oldest_pending_age=to_seconds(m.oldest_pending_age),
            paused=m.paused,
            accepted=m.accepted,
            raw=m,
            rate_limit_jobs=m.rate_limit_jobs,
            rate_limit_period=to_seconds(m.rate_limit_period),
            rate_limited=m.rate_limited,
            groups=m.groups,
            key_rate_limit_header=m.key_rate_limit_header or None,
            key_rate_limit_jobs=m.key_rate_limit_jobs,
            key_rate_limit_period=to_seconds(m.key_rate_limit_period),
        )


@dataclass(frozen=True, slots=True)
class ReplicaPosition:
    """A replica's last reported position, as the primary knows it."""

    node: str
    txid: int
    reported_at: datetime | None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The node that answered: its role in the cluster and its replication state."""

    #: "standalone", "primary", "replica", or "unknown" (no word from LiteFS yet).
    role: str
    #: The node's own address (its LiteFS lease.hostname).
    address: str
    #: On a replica, the primary's address ("" on a primary, standalone node, or a replica
    #: that has lost its primary).
    primary: str
    #: The txid this node has applied.
    txid: int
    #: On a replica: whether the primary answered its last health check.
    primary_reachable: bool
    #: On the primary: the connected replicas and their positions.
    replicas: tuple[ReplicaPosition, ...]
    #: The server's default Enqueue durability: "local", "replicated" or "edge".
    durability: str
    #: Enqueue requests waiting in this node's edge log.
    outbox_pending: int
    #: Edge-log requests the primary refused for good (kept in its dead table).
    outbox_dead: int
    #: Background loops the node restarted after a failure.
    loop_restarts: int
    #: Jobs waiting in this node's edge log, the age in seconds of the oldest, and the jobs
    #: per second its drain stored on the primary over the last 10 s.
    edge_log_jobs: int
    edge_log_oldest_age: float
    edge_log_drain_rate: float
    #: Bytes waiting in the edge log, and its cap (0: no edge log on this node).
    edge_log_bytes: int
    edge_log_capacity_bytes: int
    raw: pb.GetNodeInfoResponse = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_proto(cls, m: pb.GetNodeInfoResponse) -> NodeInfo:
        return cls(
            role=pb.NodeRole.Name(m.role).removeprefix("NODE_ROLE_").lower(),
            address=m.address,
            primary=m.primary,
            txid=m.txid,
            primary_reachable=m.primary_reachable,
            replicas=tuple(
                ReplicaPosition(r.node, r.txid, to_datetime(r.reported_at)) for r in m.replicas
            ),
            durability=m.durability,
            outbox_pending=m.outbox_pending,
            outbox_dead=m.outbox_dead,
            loop_restarts=m.loop_restarts,
            edge_log_jobs=m.edge_log_jobs,
            edge_log_oldest_age=to_seconds(m.edge_log_oldest_age),
            edge_log_drain_rate=m.edge_log_drain_rate,
            edge_log_bytes=m.edge_log_bytes,
            edge_log_capacity_bytes=m.edge_log_capacity_bytes,
            raw=m,
        )


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The outcome for one enqueued job."""

    #: The job's id (the first job's id when ``duplicate``).
    job_id: str
    #: True when an existing job with the same (queue, idempotency_key) was returned (never
    #: for a generated key: that can only be this call's own earlier attempt).
    duplicate: bool
    #: Consistency token of the write (pass as min_txid to read it back anywhere).
    txid: int
    #: The job's idempotency key: the caller's, or the ``auto-<UUIDv7>`` the client generated.
    idempotency_key: str = ""
    #: True when the job was accepted at the edge (``Durability.EDGE``, or a replica's
    #: partition outbox while the primary was unreachable): durable in the edge log of the
    #: node ``accepted_by``, stored on the primary later, exactly once, under ``job_id``;
    #: ``txid`` is then 0 and, until the drain, only that node's reads show the job (ACCEPTED).
    accepted_at_edge: bool = False
    accepted_by: str = ""

    @property
    def buffered(self) -> bool:
        """The same as ``accepted_at_edge`` (its earlier name)."""
        return self.accepted_at_edge


# ---------------------------------------------------------------- producer input


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to enqueue (``Client.enqueue_many`` also takes dicts with these keys)."""

    queue: str
    payload: bytes = b""
    #: Seconds (or a timedelta) before the job may run; exclusive with ``run_at``.
    delay: float | timedelta | None = None
    #: Earliest run time, timezone-aware; exclusive with ``delay``.
    run_at: datetime | None = None
    #: Higher runs first.
    priority: int = 0
    #: Attempts before the job fails for good; 0 means the server default (3).
    max_attempts: int = 0
    #: The same (queue, key) while the job is retained returns the first job's id.
    idempotency_key: str | None = None
    headers: Mapping[str, str] | None = field(default=None, hash=False)
    #: At most one active job per (queue, unique_key): while one is PENDING (or, with
    #: ``uniqueness`` ACTIVE, the default, RUNNING) an Enqueue returns it instead.
    unique_key: str | None = None
    uniqueness: Uniqueness | str | None = None
    #: At most ``concurrency_limit`` (default 1) jobs of this queue with this key are leased
    #: at once; the others wait, in order.
    concurrency_key: str | None = None
    concurrency_limit: int = 0
    #: Its fair group (a tenant): in a queue where any job has one, leasing takes turns
    #: between the groups with ready jobs, by weight (``Client.set_group_weight``). None:
    #: the default group.
    group: str | None = None

    def to_proto(self) -> pb.JobSpec:
        m = pb.JobSpec(
            queue=self.queue,
            payload=bytes(self.payload),
            priority=self.priority,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key or "",
            unique_key=self.unique_key or "",
            concurrency_key=self.concurrency_key or "",
            concurrency_limit=self.concurrency_limit,
            group=self.group or "",
        )
        if self.uniqueness is not None:
            m.uniqueness = Uniqueness(self.uniqueness).to_proto()
        if self.headers:
            m.headers.update(self.headers)
        if self.delay is not None:
            m.delay.CopyFrom(to_duration(self.delay))
        if self.run_at is not None:
            m.run_at.CopyFrom(to_timestamp(self.run_at))
        return m


#: What ``Client.enqueue_many`` accepts per job.
JobSpecLike: TypeAlias = JobSpec | Mapping[str, Any] | pb.JobSpec


def to_job_spec(spec: JobSpecLike) -> pb.JobSpec:
    if isinstance(spec, pb.JobSpec):
        return spec
    if isinstance(spec, JobSpec):
        return spec.to_proto()
    if isinstance(spec, Mapping):
        return JobSpec(**spec).to_proto()
    raise TypeError(f"expected a JobSpec, a mapping or an edgeq.v1 JobSpec, got {type(spec).__name__}")
