"""edgeq Python client: ``Client`` for producers and admins, ``Worker`` for consumers.

This module only re-exports the public names. ``_config`` owns channel creation (retry
policy, keepalive, limits), ``_errors`` the exceptions, ``_models`` the plain values and
their protobuf conversion, ``_client`` the Client and ``_worker`` the Worker. The generated
stubs live in ``edgeq.v1`` (``queue_pb2``, ``queue_pb2_grpc``).
"""

from ._client import Client
from ._config import DEFAULT_TARGET, DEFAULT_TIMEOUT, channel_options, create_channel
from ._errors import (
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
from ._models import EnqueueResult, Job, JobSpec, JobState, LeaseOutcome, NodeInfo, QueueStats, ReplicaPosition
from ._worker import Handler, LeasedJob, Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "Client",
    "DeadlineExceededError",
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
    "Worker",
    "WorkerStats",
    "channel_options",
    "create_channel",
]
