import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_COMPLETED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_ACCEPTED: _ClassVar[JobState]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_LOCAL: _ClassVar[Durability]
    DURABILITY_REPLICATED: _ClassVar[Durability]
    DURABILITY_EDGE: _ClassVar[Durability]

class LeaseOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_OUTCOME_UNSPECIFIED: _ClassVar[LeaseOutcome]
    LEASE_OUTCOME_OK: _ClassVar[LeaseOutcome]
    LEASE_OUTCOME_STALE: _ClassVar[LeaseOutcome]
    LEASE_OUTCOME_INVALID: _ClassVar[LeaseOutcome]
    LEASE_OUTCOME_CANCEL_REQUESTED: _ClassVar[LeaseOutcome]

class Uniqueness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNIQUENESS_UNSPECIFIED: _ClassVar[Uniqueness]
    UNIQUENESS_PENDING: _ClassVar[Uniqueness]
    UNIQUENESS_ACTIVE: _ClassVar[Uniqueness]

class OverlapPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLAP_POLICY_UNSPECIFIED: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_ALLOW: _ClassVar[OverlapPolicy]
    OVERLAP_POLICY_SKIP: _ClassVar[OverlapPolicy]

class MissedTicks(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSED_TICKS_UNSPECIFIED: _ClassVar[MissedTicks]
    MISSED_TICKS_SKIP: _ClassVar[MissedTicks]
    MISSED_TICKS_RUN_ONCE: _ClassVar[MissedTicks]

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    NODE_ROLE_STANDALONE: _ClassVar[NodeRole]
    NODE_ROLE_PRIMARY: _ClassVar[NodeRole]
    NODE_ROLE_REPLICA: _ClassVar[NodeRole]
    NODE_ROLE_UNKNOWN: _ClassVar[NodeRole]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_COMPLETED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_ACCEPTED: JobState
DURABILITY_UNSPECIFIED: Durability
DURABILITY_LOCAL: Durability
DURABILITY_REPLICATED: Durability
DURABILITY_EDGE: Durability
LEASE_OUTCOME_UNSPECIFIED: LeaseOutcome
LEASE_OUTCOME_OK: LeaseOutcome
LEASE_OUTCOME_STALE: LeaseOutcome
LEASE_OUTCOME_INVALID: LeaseOutcome
LEASE_OUTCOME_CANCEL_REQUESTED: LeaseOutcome
UNIQUENESS_UNSPECIFIED: Uniqueness
UNIQUENESS_PENDING: Uniqueness
UNIQUENESS_ACTIVE: Uniqueness
OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy
OVERLAP_POLICY_ALLOW: OverlapPolicy
OVERLAP_POLICY_SKIP: OverlapPolicy
MISSED_TICKS_UNSPECIFIED: MissedTicks
MISSED_TICKS_SKIP: MissedTicks
MISSED_TICKS_RUN_ONCE: MissedTicks
NODE_ROLE_UNSPECIFIED: NodeRole
NODE_ROLE_STANDALONE: NodeRole
NODE_ROLE_PRIMARY: NodeRole
NODE_ROLE_REPLICA: NodeRole
NODE_ROLE_UNKNOWN: NodeRole

class JobSpec(_message.Message):
    __slots__ = ("queue", "payload", "idempotency_key", "delay", "run_at", "max_attempts", "priority", "headers", "job_id", "unique_key", "uniqueness", "concurrency_key", "concurrency_limit", "group")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIQUENESS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    queue: str
    payload: bytes
    idempotency_key: str
    delay: _duration_pb2.Duration
    run_at: _timestamp_pb2.Timestamp
    max_attempts: int
    priority: int
    headers: _containers.ScalarMap[str, str]
    job_id: str
    unique_key: str
    uniqueness: Uniqueness
    concurrency_key: str
    concurrency_limit: int
    group: str
    def __init__(self, queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_attempts: _Optional[int] = ..., priority: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., job_id: _Optional[str] = ..., unique_key: _Optional[str] = ..., uniqueness: _Optional[_Union[Uniqueness, str]] = ..., concurrency_key: _Optional[str] = ..., concurrency_limit: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "queue", "payload", "state", "attempts", "max_attempts", "priority", "run_at", "created_at", "started_at", "completed_at", "lease_expires_at", "error_message", "idempotency_key", "headers", "worker_id", "result", "unique_key", "progress", "progress_message", "cancel_requested", "concurrency_key", "concurrency_limit", "group")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    queue: str
    payload: bytes
    state: JobState
    attempts: int
    max_attempts: int
    priority: int
    run_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    lease_expires_at: _timestamp_pb2.Timestamp
    error_message: str
    idempotency_key: str
    headers: _containers.ScalarMap[str, str]
    worker_id: str
    result: bytes
    unique_key: str
    progress: float
    progress_message: str
    cancel_requested: bool
    concurrency_key: str
    concurrency_limit: int
    group: str
    def __init__(self, id: _Optional[str] = ..., queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., state: _Optional[_Union[JobState, str]] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., priority: _Optional[int] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_message: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., worker_id: _Optional[str] = ..., result: _Optional[bytes] = ..., unique_key: _Optional[str] = ..., progress: _Optional[float] = ..., progress_message: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., concurrency_key: _Optional[str] = ..., concurrency_limit: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class EnqueueRequest(_message.Message):
    __slots__ = ("jobs", "durability")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSpec]
    durability: Durability
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSpec, _Mapping]]] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class EnqueueResult(_message.Message):
    __slots__ = ("job_id", "duplicate", "idempotency_key", "unique")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    duplicate: bool
    idempotency_key: str
    unique: bool
    def __init__(self, job_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., unique: _Optional[bool] = ...) -> None: ...

class EnqueueResponse(_message.Message):
    __slots__ = ("results", "txid", "buffered", "accepted_at_edge", "accepted_by")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_EDGE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_BY_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EnqueueResult]
    txid: int
    buffered: bool
    accepted_at_edge: bool
    accepted_by: str
    def __init__(self, results: _Optional[_Iterable[_Union[EnqueueResult, _Mapping]]] = ..., txid: _Optional[int] = ..., buffered: _Optional[bool] = ..., accepted_at_edge: _Optional[bool] = ..., accepted_by: _Optional[str] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("queues", "worker_id", "max_in_flight", "lease_duration")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    worker_id: str
    max_in_flight: int
    lease_duration: _duration_pb2.Duration
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., worker_id: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class LeasedJob(_message.Message):
    __slots__ = ("job", "lease_token", "lease_expires_at")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    lease_token: str
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., lease_token: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[LeasedJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[LeasedJob, _Mapping]]] = ...) -> None: ...

class AckItem(_message.Message):
    __slots__ = ("lease_token", "result")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    result: bytes
    def __init__(self, lease_token: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AckItem]
    def __init__(self, items: _Optional[_Iterable[_Union[AckItem, _Mapping]]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("outcomes", "txid")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[LeaseOutcome]
    txid: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[LeaseOutcome, str]]] = ..., txid: _Optional[int] = ...) -> None: ...

class NackItem(_message.Message):
    __slots__ = ("lease_token", "error_message", "retry_delay", "terminal")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    error_message: str
    retry_delay: _duration_pb2.Duration
    terminal: bool
    def __init__(self, lease_token: _Optional[str] = ..., error_message: _Optional[str] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., terminal: _Optional[bool] = ...) -> None: ...

class NackRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[NackItem, _Mapping]]] = ...) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ("outcomes", "txid")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[LeaseOutcome]
    txid: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[LeaseOutcome, str]]] = ..., txid: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("lease_tokens", "extend_by", "progress")
    LEASE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    lease_tokens: _containers.RepeatedScalarFieldContainer[str]
    extend_by: _duration_pb2.Duration
    progress: _containers.RepeatedCompositeFieldContainer[Progress]
    def __init__(self, lease_tokens: _Optional[_Iterable[str]] = ..., extend_by: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., progress: _Optional[_Iterable[_Union[Progress, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("lease_token", "value", "message")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    value: float
    message: str
    def __init__(self, lease_token: _Optional[str] = ..., value: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("outcomes", "txid", "lease_expires_at")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[LeaseOutcome]
    txid: int
    lease_expires_at: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[LeaseOutcome, str]]] = ..., txid: _Optional[int] = ..., lease_expires_at: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id", "min_txid")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_TXID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    min_txid: int
    def __init__(self, job_id: _Optional[str] = ..., min_txid: _Optional[int] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("queue", "state", "page_size", "page_token", "min_txid", "search")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MIN_TXID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: JobState
    page_size: int
    page_token: str
    min_txid: int
    search: str
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., min_txid: _Optional[int] = ..., search: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ("queues", "min_txid")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MIN_TXID_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    min_txid: int
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., min_txid: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("queue", "pending", "scheduled", "running", "completed", "failed", "cancelled", "oldest_pending_age", "paused", "accepted", "rate_limit_jobs", "rate_limit_period", "rate_limited", "groups", "key_rate_limit_header", "key_rate_limit_jobs", "key_rate_limit_period")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_JOBS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    KEY_RATE_LIMIT_HEADER_FIELD_NUMBER: _ClassVar[int]
    KEY_RATE_LIMIT_JOBS_FIELD_NUMBER: _ClassVar[int]
    KEY_RATE_LIMIT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    queue: str
    pending: int
    scheduled: int
    running: int
    completed: int
    failed: int
    cancelled: int
    oldest_pending_age: _duration_pb2.Duration
    paused: bool
    accepted: int
    rate_limit_jobs: int
    rate_limit_period: _duration_pb2.Duration
    rate_limited: bool
    groups: int
    key_rate_limit_header: str
    key_rate_limit_jobs: int
    key_rate_limit_period: _duration_pb2.Duration
    def __init__(self, queue: _Optional[str] = ..., pending: _Optional[int] = ..., scheduled: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., oldest_pending_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., paused: _Optional[bool] = ..., accepted: _Optional[int] = ..., rate_limit_jobs: _Optional[int] = ..., rate_limit_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate_limited: _Optional[bool] = ..., groups: _Optional[int] = ..., key_rate_limit_header: _Optional[str] = ..., key_rate_limit_jobs: _Optional[int] = ..., key_rate_limit_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetQueueStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[QueueStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job", "txid")
    JOB_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    job: Job
    txid: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., txid: _Optional[int] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job", "txid")
    JOB_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    job: Job
    txid: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., txid: _Optional[int] = ...) -> None: ...

class JobSelection(_message.Message):
    __slots__ = ("queue", "state", "created_after", "created_before")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: JobState
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetryJobsRequest(_message.Message):
    __slots__ = ("selection", "limit")
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    selection: JobSelection
    limit: int
    def __init__(self, selection: _Optional[_Union[JobSelection, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class RetryJobsResponse(_message.Message):
    __slots__ = ("count", "more", "txid")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    count: int
    more: bool
    txid: int
    def __init__(self, count: _Optional[int] = ..., more: _Optional[bool] = ..., txid: _Optional[int] = ...) -> None: ...

class CancelJobsRequest(_message.Message):
    __slots__ = ("selection", "limit")
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    selection: JobSelection
    limit: int
    def __init__(self, selection: _Optional[_Union[JobSelection, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class CancelJobsResponse(_message.Message):
    __slots__ = ("count", "more", "txid")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    count: int
    more: bool
    txid: int
    def __init__(self, count: _Optional[int] = ..., more: _Optional[bool] = ..., txid: _Optional[int] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("name", "queue", "cron", "time_zone", "template", "overlap", "missed", "paused", "next_run_at", "last_run_at", "last_job_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: str
    cron: str
    time_zone: str
    template: JobSpec
    overlap: OverlapPolicy
    missed: MissedTicks
    paused: bool
    next_run_at: _timestamp_pb2.Timestamp
    last_run_at: _timestamp_pb2.Timestamp
    last_job_id: str
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[str] = ..., cron: _Optional[str] = ..., time_zone: _Optional[str] = ..., template: _Optional[_Union[JobSpec, _Mapping]] = ..., overlap: _Optional[_Union[OverlapPolicy, str]] = ..., missed: _Optional[_Union[MissedTicks, str]] = ..., paused: _Optional[bool] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_job_id: _Optional[str] = ...) -> None: ...

class UpsertScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class UpsertScheduleResponse(_message.Message):
    __slots__ = ("schedule", "txid")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    txid: int
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., txid: _Optional[int] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("min_txid",)
    MIN_TXID_FIELD_NUMBER: _ClassVar[int]
    min_txid: int
    def __init__(self, min_txid: _Optional[int] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ("deleted", "txid")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    txid: int
    def __init__(self, deleted: _Optional[bool] = ..., txid: _Optional[int] = ...) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule", "txid")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    txid: int
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., txid: _Optional[int] = ...) -> None: ...

class ResumeScheduleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResumeScheduleResponse(_message.Message):
    __slots__ = ("schedule", "txid")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    txid: int
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., txid: _Optional[int] = ...) -> None: ...

class SetRateLimitRequest(_message.Message):
    __slots__ = ("queue", "jobs", "period", "key_header")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    KEY_HEADER_FIELD_NUMBER: _ClassVar[int]
    queue: str
    jobs: int
    period: _duration_pb2.Duration
    key_header: str
    def __init__(self, queue: _Optional[str] = ..., jobs: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., key_header: _Optional[str] = ...) -> None: ...

class SetRateLimitResponse(_message.Message):
    __slots__ = ("txid",)
    TXID_FIELD_NUMBER: _ClassVar[int]
    txid: int
    def __init__(self, txid: _Optional[int] = ...) -> None: ...

class SetGroupWeightRequest(_message.Message):
    __slots__ = ("queue", "group", "weight")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    group: str
    weight: int
    def __init__(self, queue: _Optional[str] = ..., group: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class SetGroupWeightResponse(_message.Message):
    __slots__ = ("txid",)
    TXID_FIELD_NUMBER: _ClassVar[int]
    txid: int
    def __init__(self, txid: _Optional[int] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ("queue", "page_size", "page_token", "min_txid")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MIN_TXID_FIELD_NUMBER: _ClassVar[int]
    queue: str
    page_size: int
    page_token: str
    min_txid: int
    def __init__(self, queue: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., min_txid: _Optional[int] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group", "weight", "pending", "running")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    group: str
    weight: int
    pending: int
    running: int
    def __init__(self, group: _Optional[str] = ..., weight: _Optional[int] = ..., pending: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class ListGroupsResponse(_message.Message):
    __slots__ = ("groups", "next_page_token")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    next_page_token: str
    def __init__(self, groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ("txid",)
    TXID_FIELD_NUMBER: _ClassVar[int]
    txid: int
    def __init__(self, txid: _Optional[int] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ("txid",)
    TXID_FIELD_NUMBER: _ClassVar[int]
    txid: int
    def __init__(self, txid: _Optional[int] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaPosition(_message.Message):
    __slots__ = ("node", "txid", "reported_at", "verified")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    node: str
    txid: int
    reported_at: _timestamp_pb2.Timestamp
    verified: bool
    def __init__(self, node: _Optional[str] = ..., txid: _Optional[int] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verified: _Optional[bool] = ...) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("role", "address", "primary", "txid", "primary_reachable", "replicas", "durability", "outbox_pending", "outbox_dead", "loop_restarts", "edge_log_jobs", "edge_log_oldest_age", "edge_log_drain_rate", "edge_log_bytes", "edge_log_capacity_bytes")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_PENDING_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEAD_FIELD_NUMBER: _ClassVar[int]
    LOOP_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    EDGE_LOG_JOBS_FIELD_NUMBER: _ClassVar[int]
    EDGE_LOG_OLDEST_AGE_FIELD_NUMBER: _ClassVar[int]
    EDGE_LOG_DRAIN_RATE_FIELD_NUMBER: _ClassVar[int]
    EDGE_LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    EDGE_LOG_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    role: NodeRole
    address: str
    primary: str
    txid: int
    primary_reachable: bool
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaPosition]
    durability: str
    outbox_pending: int
    outbox_dead: int
    loop_restarts: int
    edge_log_jobs: int
    edge_log_oldest_age: _duration_pb2.Duration
    edge_log_drain_rate: float
    edge_log_bytes: int
    edge_log_capacity_bytes: int
    def __init__(self, role: _Optional[_Union[NodeRole, str]] = ..., address: _Optional[str] = ..., primary: _Optional[str] = ..., txid: _Optional[int] = ..., primary_reachable: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[ReplicaPosition, _Mapping]]] = ..., durability: _Optional[str] = ..., outbox_pending: _Optional[int] = ..., outbox_dead: _Optional[int] = ..., loop_restarts: _Optional[int] = ..., edge_log_jobs: _Optional[int] = ..., edge_log_oldest_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., edge_log_drain_rate: _Optional[float] = ..., edge_log_bytes: _Optional[int] = ..., edge_log_capacity_bytes: _Optional[int] = ...) -> None: ...
