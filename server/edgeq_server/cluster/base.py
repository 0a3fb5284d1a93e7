"""The one interface between edgeq's core and everything cluster-specific.

The core (``app.py``: service, writer, dispatcher, maintenance) never asks "is this a
cluster?". It asks a ``Cluster``:

- ``role()``: UNKNOWN, REPLICA or PRIMARY. Only the primary writes (claims, expiry,
  retention); a standalone node is always PRIMARY. ``on_role_change`` tells the core when
  the role changes, so a demoted node ends its Lease streams and stops dispatching.
- ``route(name, handler)``: wraps an RPC handler; a cluster forwards writes (and proxies
  Lease streams) to the primary when this node is not it, and buffers Enqueue at the edge.
- ``wait_durable(txid)``: returns once a committed write is as durable as the node's
  durability setting asks (replicated: enough replicas applied it), else raises
  ``CommittedNotReplicated``.
- ``position``: this node's data position, for reads with ``min_txid``.
- ``txid_after_commit``: where the writer reads the txid after COMMIT (LiteFS: ``-pos``).
- ``accepted(job_id)`` / ``accepted_by_queue()``: what the node's edge log holds (GetJob
  shows such a job as ACCEPTED; GetQueueStats counts them).
- ``healthy()``, ``describe(info)`` (GetNodeInfo), ``primary_info`` (the primary's, from a
  replica: the dashboard's cluster page), and the lifecycle ``start`` (before the
  database opens), ``attach`` (register services and start loops under the node's
  supervisor), ``drain`` and ``stop``.

Implementations: ``Standalone`` (a plain file; trivially local) and ``LiteFSCluster``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from edgeq.v1 import queue_pb2 as pb

from .. import validate
from ..errors import FailedPrecondition

if TYPE_CHECKING:
    from ..store import EdgeJob
    from ..supervise import Supervisor

Handler = Callable[..., Any]

#: How often ``Position.wait_for`` looks again while waiting, and (at most) reads the
#: position with its blocking ``refresh``.
POLL_SECONDS = 0.005
REFRESH_SECONDS = 0.1


class Role(enum.Enum):
    """What a node may do. Only LiteFS's own statement makes a LiteFS node PRIMARY."""

    UNKNOWN = "unknown"  # no word from LiteFS yet, or its /events stream is down
    REPLICA = "replica"  # LiteFS says another node is (or will be) primary
    PRIMARY = "primary"  # LiteFS says this node holds the lease (or: standalone)


class Position:
    """This node's data position (``current()``), and a bounded wait for it (read-your-writes).

    ``current`` must be cheap (in memory); ``refresh`` (optional, blocking: e.g. a FUSE
    read) is run on a thread while a wait is behind, never on the event loop."""

    def __init__(self, current: Callable[[], int], refresh: Callable[[], int] | None = None) -> None:
        self.current = current
        self._refresh = refresh

    async def wait_for(self, txid: int, seconds: float) -> bool:
        """True once the position reaches ``txid``; False if ``seconds`` pass first."""
        if txid <= 0 or self.current() >= txid:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        refreshed = -REFRESH_SECONDS
        while True:
            # ``current`` follows LiteFS events; the blocking read is a fallback, not per poll.
            if self._refresh is not None and loop.time() - refreshed >= REFRESH_SECONDS:
                refreshed = loop.time()
                if await asyncio.to_thread(self._refresh) >= txid:
                    return True
            if self.current() >= txid:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Accepted:
    """What GetJob learns from this node's edge log: a job still waiting there (``job``,
    state ACCEPTED, or FAILED if the primary refused it for good), or one drained to the
    primary, stored as ``stored_id`` at ``txid`` (wait for that txid, then read it)."""

    job: pb.Job | None = None
    stored_id: str = ""
    txid: int = 0

    @classmethod
    def of(cls, found: EdgeJob, default_max_attempts: int) -> Accepted:
        if found.request is None:
            return cls(stored_id=found.stored_id or found.job_id, txid=found.drained_txid or 0)
        spec = pb.EnqueueRequest.FromString(found.request).jobs[found.index]
        job = pb.Job(
            id=found.job_id, queue=spec.queue, payload=spec.payload, state=pb.JOB_STATE_ACCEPTED,
            max_attempts=spec.max_attempts or default_max_attempts, priority=spec.priority,
            idempotency_key=spec.idempotency_key, headers=dict(spec.headers),
        )
        job.created_at.FromMicroseconds(found.created_at)
        if spec.HasField("run_at"):
            job.run_at.CopyFrom(spec.run_at)
        else:
            job.run_at.FromMicroseconds(found.created_at)
        if found.rejected is not None:  # refused for good: it will never run
            job.state = pb.JOB_STATE_FAILED
            job.error_message = f"refused by the primary: {found.rejected}"
        return cls(job=job)


class ReplicaLag(NamedTuple):
    """A replica as its primary sees it: TXIDs behind the primary, seconds since it reported."""

    replica: str
    txids_behind: int
    report_age_seconds: float


class Cluster(abc.ABC):
    """See the module docstring. Subclasses: ``Standalone``, ``LiteFSCluster``."""

    #: "standalone" or "litefs"
    kind: str
    #: The SQLite file the writer and readers open.
    db_path: str
    position: Position
    #: The writer's txid source after COMMIT; None: the writer's own counter.
    txid_after_commit: Callable[[], int] | None = None

    def __init__(self) -> None:
        self._role_listeners: list[Callable[[Role], None]] = []

    @abc.abstractmethod
    def role(self) -> Role: ...

    def is_primary(self) -> bool:
        return self.role() is Role.PRIMARY

    def on_role_change(self, listener: Callable[[Role], None]) -> None:
        """Call ``listener(new_role)`` on the event loop whenever the role changes."""
        self._role_listeners.append(listener)

    def _role_changed(self, role: Role) -> None:
        for listener in self._role_listeners:
            listener(role)

    async def start(self) -> None:
        """Before the database is opened (LiteFS: learn the role, wait for the schema)."""
        return None

    def attach(self, server: grpc.aio.Server, supervisor: Supervisor, committed: Callable[[], int]) -> None:
        """Register cluster services on ``server`` and start the cluster's loops under
        ``supervisor``; ``committed()`` is the writer's last txid."""
        return None

    def route(self, name: str, handler: Handler, *, streaming: bool = False) -> Handler:
        """Wrap one QueueService handler (``name`` is the RPC's name)."""
        return handler

    def from_node(self, context: Any) -> bool:
        """Whether another node of this cluster made this call (forwarded or proxied;
        authenticated with the cluster secret when auth is on)."""
        return False

    async def wait_durable(self, txid: int) -> None:
        """Return once the write that committed at ``txid`` is durable enough to acknowledge."""
        return None

    def healthy(self) -> bool:
        return True

    async def accepted(self, job_id: str) -> Accepted | None:
        """What this node's edge log knows of ``job_id`` (None: nothing)."""
        return None

    async def accepted_by_queue(self) -> dict[str, int]:
        """Jobs per queue waiting in this node's edge log."""
        return {}

    @abc.abstractmethod
    def describe(self, info: pb.GetNodeInfoResponse) -> None:
        """Fill this node's role, primary, position and cluster state into ``info``."""

    def replica_lag(self) -> list[ReplicaLag]:
        """On a primary: how far each replica is behind, from memory (cheap: read at each
        metrics scrape). Elsewhere: none."""
        return []

    async def primary_info(self, metadata: tuple[tuple[str, str], ...]) -> pb.GetNodeInfoResponse | None:
        """On a replica: the primary's GetNodeInfo (with its replicas' positions), asked with
        the caller's ``metadata`` (its token); None where this node is the primary, or when
        the primary does not answer."""
        return None

    async def drain(self) -> None:
        """Shutdown, first step: end proxied streams (workers reconnect elsewhere)."""
        return None

    async def stop(self) -> None:
        """Shutdown, last step (after the writer closed)."""
        return None


class Standalone(Cluster):
    """One node on a plain SQLite file: always primary, nothing to forward or wait for."""

    kind = "standalone"

    def __init__(self, db_path: str, committed: Callable[[], int]) -> None:
        super().__init__()
        self.db_path = db_path
        self.position = Position(committed)

    def role(self) -> Role:
        return Role.PRIMARY

    def route(self, name: str, handler: Handler, *, streaming: bool = False) -> Handler:
        if name != "Enqueue":
            return handler

        async def routed(request: Any, context: Any) -> Any:
            # "edge" is "local" here: the file is already this node's own.
            if validate.durability(request) == "replicated":
                raise FailedPrecondition(
                    "durability: a standalone server has no replicas; use local or edge", reason="NO_REPLICAS"
                )
            return await handler(request, context)

        return routed

    def describe(self, info: pb.GetNodeInfoResponse) -> None:
        info.role = pb.NODE_ROLE_STANDALONE
        info.txid = self.position.current()

