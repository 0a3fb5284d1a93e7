"""edgeq Python client: ``Client`` for producers and admins, ``Worker`` for consumers.

This module only re-exports the public names. ``_config`` owns channel creation (retry
policy, keepalive, limits), ``_errors`` the exceptions, ``_models`` the plain values and
their protobuf conversion, ``_client`` the Client and ``_worker`` the Worker; ``edgeq.aio``
is the Client for asyncio (grpc.aio), on the same helpers. The generated stubs live in
``edgeq.v1`` (``queue_pb2``, ``queue_pb2_grpc``).
"""

from ._client import AUTO_KEY_PREFIX, Client, auto_idempotency_key
from ._config import DEFAULT_TARGET, DEFAULT_TIMEOUT, TLS, channel_options, create_channel
from ._errors import (
    COMMITTED_NOT_REPLICATED,
    ERROR_DOMAIN,
    CommittedNotReplicated,
    DeadlineExceededError,
    EdgeqError,
    Fail,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Retry,
    UnauthenticatedError,
    UnavailableError,
)
from ._models import (
    Durability,
    EnqueueResult,
    Job,
    JobSpec,
    JobState,
    LeaseOutcome,
    NodeInfo,
    QueueStats,
    ReplicaPosition,
    Uniqueness,
)
from ._worker import Handler, LeasedJob, Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "AUTO_KEY_PREFIX",
    "COMMITTED_NOT_REPLICATED",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "TLS",
    "Client",
    "CommittedNotReplicated",
    "DeadlineExceededError",
    "Durability",
    "EdgeqError",
    "EnqueueResult",
    "Fail",
    "FailedPreconditionError",
    "Handler",
    "InvalidArgumentError",
    "Job",
    "JobSpec",
    "JobState",
    "LeaseOutcome",
    "LeasedJob",
    "NodeInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueStats",
    "ReplicaPosition",
    "ResourceExhaustedError",
    "Retry",
    "UnauthenticatedError",
    "UnavailableError",
    "Uniqueness",
    "Worker",
    "WorkerStats",
    "auto_idempotency_key",
    "channel_options",
    "create_channel",
]
