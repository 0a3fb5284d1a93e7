"""``Client``: the synchronous producer and admin API over one gRPC channel.

Owns the unary calls (each with a deadline, retried on UNAVAILABLE by the channel's own
retry policy, failures mapped to ``EdgeqError``), batching of ``enqueue_many`` into calls
of at most 1000 jobs, paging of ``list``, and session consistency (the highest txid seen
from writes is sent as ``min_txid`` on reads when ``session_consistency=True``).

Retried writes never duplicate: every job is sent with an idempotency key (the caller's,
or ``auto-<UUIDv7>`` generated once per job before the first attempt), and a write the
server answers with ``CommittedNotReplicated`` (committed on the primary, replicas not
confirmed in time) is sent again as the very same request, with jittered backoff, within
the call's deadline. The server dedupes it (Enqueue by key; Ack, Nack, Heartbeat, CancelJob,
RetryJob by token or job), so the retry returns the first outcome once replicas confirm.
"""

from __future__ import annotations

import builtins
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

from . import _tracing
from ._config import DEFAULT_TARGET, DEFAULT_TIMEOUT, TLSOption, create_channel
from ._errors import CommittedNotReplicated, DeadlineExceededError, EdgeqError, error_from_rpc
from ._models import (
    Durability,
    EnqueueResult,
    Job,
    JobSpec,
    JobSpecLike,
    JobState,
    LeaseOutcome,
    NodeInfo,
    QueueStats,
    Uniqueness,
    to_duration,
    to_job_spec,
    to_timestamp,
)

__all__ = ["AUTO_KEY_PREFIX", "BATCH_MAX", "Client", "auto_idempotency_key"]

#: Most jobs (or Ack / Nack / Heartbeat items) the server takes in one call.
BATCH_MAX = 1000
#: Prefix of the idempotency keys the client generates for jobs sent without one.
AUTO_KEY_PREFIX = "auto-"
#: Backoff between retries of a write answered CommittedNotReplicated: (initial, max)
#: seconds, doubling, full jitter (at least the server's RetryInfo delay when it sends one).
_WRITE_BACKOFF = (0.05, 1.0)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _uuid7() -> str:
    """A UUIDv7 string (RFC 9562): 48-bit Unix milliseconds, version 7, 74 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def auto_idempotency_key() -> str:
    """A fresh key as the client generates it for a job sent without one: ``auto-<UUIDv7>``."""
    return AUTO_KEY_PREFIX + _uuid7()


def _chunks(items: Sequence[_Req], size: int) -> Iterator[Sequence[_Req]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _WriteRetry:
    """When a write answered CommittedNotReplicated is sent again (the same request, so the
    same keys and tokens): jittered backoff, at least the server's RetryInfo delay, all
    attempts within one deadline. Shared by the sync and the asyncio Client, which only do
    the sleeping and the calling."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.backoff, self.max_backoff = _WRITE_BACKOFF
        self.last: CommittedNotReplicated | None = None

    def remaining(self) -> float:
        """The next attempt's timeout; raises the last CommittedNotReplicated when none is left."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 and self.last is not None:
            raise self.last
        return max(remaining, 0.001)

    def pause(self, err: CommittedNotReplicated) -> float:
        """Seconds to wait before sending again; raises ``err`` when that passes the deadline."""
        self.last = err
        pause = max(random.uniform(0, self.backoff), err.retry_delay or 0.0)
        if time.monotonic() + pause >= self.deadline:
            raise err
        self.backoff = min(self.backoff * 2, self.max_backoff)
        return pause

    def deadline_exceeded(self, err: DeadlineExceededError) -> EdgeqError:
        """What to raise when an attempt ran out of time: the write did commit if an earlier
        attempt said so (CommittedNotReplicated), else the deadline."""
        return self.last if self.last is not None else err


def _enqueue_request(
    messages: Sequence[pb.JobSpec], level: Durability | None
) -> tuple[pb.EnqueueRequest, set[int]]:
    """The request (copies: the caller's messages stay as they are), with a generated key
    for every job sent without one; and the indexes of those jobs."""
    request = pb.EnqueueRequest(jobs=messages)
    if level is not None:
        request.durability = level.to_proto()
    auto: set[int] = set()
    for i, job in enumerate(request.jobs):
        if not job.idempotency_key:
            job.idempotency_key = auto_idempotency_key()
            auto.add(i)
        _tracing.inject(job.headers)  # the caller's trace context, for the worker's span
    return request, auto


def _enqueue_results(
    request: pb.EnqueueRequest, resp: pb.EnqueueResponse, auto: set[int], txid: int
) -> list[EnqueueResult]:
    # A generated key is unique to this call: "duplicate" by that key can only mean that an
    # earlier attempt of this very call stored the job, which the caller enqueued once. A
    # duplicate by unique_key (another job holds it) is reported whatever the key.
    return [
        EnqueueResult(
            r.job_id,
            r.duplicate and (i not in auto or r.unique),
            txid,
            r.idempotency_key or request.jobs[i].idempotency_key,
            resp.accepted_at_edge or resp.buffered,
            resp.accepted_by,
        )
        for i, r in enumerate(resp.results)
    ]


def _ack_items(items: Iterable[str | tuple[str, bytes | None] | pb.AckItem]) -> list[pb.AckItem]:
    messages: list[pb.AckItem] = []
    for it in items:
        if isinstance(it, str):
            messages.append(pb.AckItem(lease_token=it))
        elif isinstance(it, tuple):
            messages.append(pb.AckItem(lease_token=it[0], result=it[1] or b""))
        else:
            messages.append(it)
    return messages


def _nack_items(
    items: Iterable[str | pb.NackItem], error_message: str, retry_delay: float | timedelta | None, terminal: bool
) -> list[pb.NackItem]:
    messages: list[pb.NackItem] = []
    for it in items:
        if isinstance(it, str):
            m = pb.NackItem(lease_token=it, error_message=error_message, terminal=terminal)
            if retry_delay is not None:
                m.retry_delay.CopyFrom(to_duration(retry_delay))
            messages.append(m)
        else:
            messages.append(it)
    return messages


def _heartbeat_request(
    chunk: Sequence[str], extend_by: float | timedelta | None, progress: Mapping[str, pb.Progress] | None = None
) -> pb.HeartbeatRequest:
    req = pb.HeartbeatRequest(lease_tokens=chunk)
    if extend_by is not None:
        req.extend_by.CopyFrom(to_duration(extend_by))
    if progress:
        req.progress.extend(progress[t] for t in chunk if t in progress)
    return req


def _list_request(
    queue: str | None, state: JobState | str | None, page_size: int, min_txid: int, search: str = ""
) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(
        queue=queue or "",
        state=JobState(state.lower()).to_proto() if state is not None else pb.JOB_STATE_UNSPECIFIED,
        page_size=page_size,
        min_txid=min_txid,
        search=search,
    )


def _selection(
    queue: str, state: JobState | str | None, created_after: datetime | None, created_before: datetime | None
) -> pb.JobSelection:
    sel = pb.JobSelection(queue=queue)
    if state is not None:
        sel.state = JobState(state.lower()).to_proto()
    if created_after is not None:
        sel.created_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        sel.created_before.CopyFrom(to_timestamp(created_before))
    return sel


#: ``upsert_schedule``'s policy names.
_OVERLAP = {"allow": pb.OVERLAP_POLICY_ALLOW, "skip": pb.OVERLAP_POLICY_SKIP}
_MISSED = {"skip": pb.MISSED_TICKS_SKIP, "run_once": pb.MISSED_TICKS_RUN_ONCE}


def _rate_limit_request(
    queue: str, jobs: int, per: float | timedelta, key_header: str | None
) -> pb.SetRateLimitRequest:
    request = pb.SetRateLimitRequest(queue=queue, jobs=jobs, key_header=key_header or "")
    if jobs:
        request.period.CopyFrom(to_duration(per))
    return request


def _upsert_schedule_request(
    name: str, queue: str, cron: str, payload: bytes, time_zone: str, headers: Mapping[str, str] | None,
    priority: int, max_attempts: int, overlap: str, missed: str,
) -> pb.UpsertScheduleRequest:
    template = pb.JobSpec(payload=payload, priority=priority, max_attempts=max_attempts)
    if headers:
        template.headers.update(headers)
    sch = pb.Schedule(
        name=name, queue=queue, cron=cron, time_zone=time_zone, template=template,
        overlap=_OVERLAP[overlap], missed=_MISSED[missed],
    )
    return pb.UpsertScheduleRequest(schedule=sch)


def _lease_request(
    queues: Sequence[str], worker_id: str, max_in_flight: int, lease_duration: float | timedelta | None
) -> pb.LeaseRequest:
    req = pb.LeaseRequest(queues=queues, worker_id=worker_id, max_in_flight=max_in_flight)
    if lease_duration is not None:
        req.lease_duration.CopyFrom(to_duration(lease_duration))
    return req


class Client:
    """A connection to an edgeq server.

    ``Client("host:port")`` opens (and ``close()`` closes) its own channel; pass ``channel=``
    to share one you manage. Every call has a deadline of ``timeout`` seconds and raises an
    ``EdgeqError`` subclass on failure. Thread-safe: one Client may serve many threads.

    With ``session_consistency=True`` reads carry the highest txid this client has seen
    from its writes as ``min_txid``, so a read after a write sees it (read-your-writes)
    even on a replica. ``token`` is sent as a bearer token when the server has auth on.
    ``durability`` ("edge", "local", "replicated"; None: the server's default) is when its
    Enqueues are acknowledged; ``enqueue``/``enqueue_many`` can override it per call.
    ``tls``: ``True`` (system roots), a ``TLS`` (CA, client certificate for mTLS, server
    name) or gRPC channel credentials; a target ``edgeqs://host:port`` means TLS too.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
        session_consistency: bool = False,
        token: str | None = None,
        durability: Durability | str | None = None,
        tls: TLSOption = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.durability = None if durability is None else Durability(durability)
        self.target = target
        self.timeout = timeout
        self.session_consistency = session_consistency
        self._owns_channel = channel is None
        self._channel: grpc.Channel = channel if channel is not None else create_channel(target, tls=tls)
        #: The generated stub, for anything this class does not wrap.
        self.stub = pb_grpc.QueueServiceStub(self._channel)
        self.metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {token}"),) if token else None
        )
        self._txid = 0
        self._txid_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    @property
    def last_txid(self) -> int:
        """The highest txid returned by this client's writes (0 before any)."""
        return self._txid

    def close(self) -> None:
        """Close the channel if this Client created it. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, timeout: float | None = None
    ) -> _Resp:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def _write(self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        """A write: ``request`` (the same object, so the same keys and tokens) is sent again
        while the server answers CommittedNotReplicated, with jittered backoff, until the
        call's deadline (``timeout`` for all attempts together). Raises the last
        CommittedNotReplicated when the deadline runs out first."""
        retry = _WriteRetry(self.timeout)
        while True:
            try:
                return self._call(method, request, retry.remaining())
            except CommittedNotReplicated as err:
                time.sleep(retry.pause(err))
            except DeadlineExceededError as err:
                raise retry.deadline_exceeded(err)  # noqa: B904 - err is its context either way

    def _note_txid(self, txid: int) -> int:
        if txid > self._txid:
            with self._txid_lock:
                if txid > self._txid:
                    self._txid = txid
        return txid

    def _min_txid(self) -> int:
        return self._txid if self.session_consistency else 0

    # ------------------------------------------------------------------ producing

    def enqueue(
        self,
        queue: str,
        payload: bytes,
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | str | None = None,
        unique_key: str | None = None,
        uniqueness: Uniqueness | str | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int = 0,
        group: str | None = None,
    ) -> EnqueueResult:
        """Add one job. ``delay`` (seconds or timedelta) and ``run_at`` (timezone-aware) are
        exclusive; ``max_attempts=0`` means the server default (3). Without an
        ``idempotency_key`` the client sends one it generates (``auto-<UUIDv7>``), so its
        own retries cannot add the job twice; the result's ``idempotency_key`` names it.
        With a ``unique_key``, while a job of this queue with that key is PENDING (or
        RUNNING, unless ``uniqueness="pending"``) that job is returned (duplicate=True).
        With a ``concurrency_key``, at most ``concurrency_limit`` (default 1) of the queue's
        jobs with that key are leased at once, in order.
        With a ``group`` (a tenant), leasing takes turns between the queue's groups that
        have ready jobs, in proportion to their weights (``set_group_weight``).
        ``durability`` overrides the client's for this call."""
        spec = JobSpec(
            queue, payload, delay, run_at, priority, max_attempts, idempotency_key, headers, unique_key, uniqueness,
            concurrency_key, concurrency_limit, group,
        )
        return self._enqueue([spec.to_proto()], durability)[0]

    def enqueue_many(
        self, specs: Iterable[JobSpecLike], *, durability: Durability | str | None = None
    ) -> builtins.list[EnqueueResult]:
        """Add many jobs (``JobSpec``, dicts with JobSpec's keys, or ``edgeq.v1`` JobSpecs).

        Sent in calls of at most 1000 jobs; each call is atomic, the whole batch is not: if
        a later call fails, the jobs of earlier calls stay enqueued. Results are in order.
        """
        messages = [to_job_spec(s) for s in specs]
        results: builtins.list[EnqueueResult] = []
        for chunk in _chunks(messages, BATCH_MAX):
            results.extend(self._enqueue(chunk, durability))
        return results

    def _enqueue(
        self, messages: Sequence[pb.JobSpec], durability: Durability | str | None = None
    ) -> builtins.list[EnqueueResult]:
        request, auto = _enqueue_request(messages, self.durability if durability is None else Durability(durability))
        try:
            resp = self._write(self.stub.Enqueue, request)
        except CommittedNotReplicated as err:
            err.idempotency_keys = tuple(job.idempotency_key for job in request.jobs)
            raise
        return _enqueue_results(request, resp, auto, self._note_txid(resp.txid))

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job:
        """One job; ``NotFoundError`` if there is none with this id."""
        resp = self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id, min_txid=self._min_txid()))
        return Job.from_proto(resp.job)

    def list(
        self, queue: str | None = None, state: JobState | str | None = None, page_size: int = 100, *,
        search: str = "",
    ) -> Iterator[Job]:
        """Jobs in enqueue order, optionally one queue and/or one state, and only those whose
        id or idempotency key begins with ``search``; pages are fetched lazily
        (``page_size`` per call) as the iterator advances."""
        return self._pages(_list_request(queue, state, page_size, self._min_txid(), search))

    def _pages(self, req: pb.ListJobsRequest) -> Iterator[Job]:
        while True:
            resp = self._call(self.stub.ListJobs, req)
            for m in resp.jobs:
                yield Job.from_proto(m)
            if not resp.next_page_token:
                return
            req.page_token = resp.next_page_token

    def stats(self, *queues: str) -> builtins.list[QueueStats]:
        """Counts per queue, sorted by name; no arguments means every known queue."""
        resp = self._call(self.stub.GetQueueStats, pb.GetQueueStatsRequest(queues=queues, min_txid=self._min_txid()))
        return [QueueStats.from_proto(s) for s in resp.stats]

    def node_info(self) -> NodeInfo:
        """The answering node's role (standalone, primary, replica), primary, txid, replica
        positions and outbox backlog. Describes whichever node the channel reached."""
        return NodeInfo.from_proto(self._call(self.stub.GetNodeInfo, pb.GetNodeInfoRequest()))

    # ------------------------------------------------------------------ admin

    def cancel(self, job_id: str) -> Job:
        """Cancel a PENDING or RUNNING job (its lease becomes stale); returns the job after.
        ``FailedPreconditionError`` for jobs already in a final state."""
        resp = self._write(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id))
        self._note_txid(resp.txid)
        return Job.from_proto(resp.job)

    def retry(self, job_id: str) -> Job:
        """Move a FAILED or CANCELLED job back to PENDING, attempts reset (dead-letter redrive)."""
        resp = self._write(self.stub.RetryJob, pb.RetryJobRequest(job_id=job_id))
        self._note_txid(resp.txid)
        return Job.from_proto(resp.job)

    def retry_jobs(
        self, queue: str, state: JobState | str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, batch: int = 0,
    ) -> int:
        """Redrive every FAILED (or, with ``state``, CANCELLED) job of ``queue``, optionally
        only those created in [created_after, created_before): RetryJobs calls of at most
        ``batch`` jobs each (0: the server's 1000), until none is left. Returns how many."""
        request = pb.RetryJobsRequest(selection=_selection(queue, state, created_after, created_before), limit=batch)
        return self._bulk(self.stub.RetryJobs, request)

    def cancel_jobs(
        self, queue: str, state: JobState | str | None = None, *, created_after: datetime | None = None,
        created_before: datetime | None = None, batch: int = 0,
    ) -> int:
        """Cancel every PENDING (or, with ``state``, RUNNING) job of ``queue``, as
        ``retry_jobs`` does in bounded CancelJobs calls. Returns how many."""
        request = pb.CancelJobsRequest(selection=_selection(queue, state, created_after, created_before), limit=batch)
        return self._bulk(self.stub.CancelJobs, request)

    def _bulk(self, method: Any, request: Any) -> int:
        total = 0
        while True:
            resp = self._write(method, request)
            self._note_txid(resp.txid)
            total += int(resp.count)
            if not resp.more:
                return total

    def set_rate_limit(
        self, queue: str, jobs: int, per: float | timedelta = 1.0, *, key_header: str | None = None
    ) -> None:
        """Lease at most ``jobs`` of ``queue`` per ``per`` seconds (a token bucket on the
        primary shared by every worker; leases wait, nothing is refused); ``jobs=0``
        removes the limit. With ``key_header`` the limit is per key instead: each distinct
        value of that header on the queue's jobs gets its own bucket (a queue has at most
        one queue-wide and one per-key limit; both apply)."""
        request = _rate_limit_request(queue, jobs, per, key_header)
        self._note_txid(self._write(self.stub.SetRateLimit, request).txid)

    # ------------------------------------------------------------------ fair groups

    def set_group_weight(self, queue: str, group: str, weight: int) -> None:
        """Give ``group`` (``JobSpec.group``; "" is the default group) of ``queue`` a share
        of its leases of ``weight`` (1..1000; default 1) relative to the queue's other
        groups while it has ready jobs."""
        request = pb.SetGroupWeightRequest(queue=queue, group=group, weight=weight)
        self._note_txid(self._write(self.stub.SetGroupWeight, request).txid)

    def list_groups(self, queue: str) -> builtins.list[pb.Group]:
        """Every fair group of ``queue``, by name, with its weight and its ready (pending)
        and running jobs (all pages)."""
        request = pb.ListGroupsRequest(queue=queue, min_txid=self._min_txid())
        groups: builtins.list[pb.Group] = []
        while True:
            resp = self._call(self.stub.ListGroups, request)
            groups.extend(resp.groups)
            if not resp.next_page_token:
                return groups
            request.page_token = resp.next_page_token

    # ------------------------------------------------------------------ schedules

    def upsert_schedule(
        self, name: str, queue: str, cron: str, payload: bytes = b"", *, time_zone: str = "UTC",
        headers: Mapping[str, str] | None = None, priority: int = 0, max_attempts: int = 0,
        overlap: str = "allow", missed: str = "skip",
    ) -> pb.Schedule:
        """Create or replace the cron schedule ``name``: at every tick of ``cron`` (5 fields, or
        6 with seconds last) in ``time_zone`` one job with this payload goes to ``queue``,
        exactly once per tick. ``overlap="skip"`` skips a tick while the previous tick's job
        is pending or running; ``missed="run_once"`` runs one job for ticks missed while no
        primary ran them (default: skip them). Returns the schedule with its next tick."""
        request = _upsert_schedule_request(
            name, queue, cron, payload, time_zone, headers, priority, max_attempts, overlap, missed
        )
        resp = self._write(self.stub.UpsertSchedule, request)
        self._note_txid(resp.txid)
        return resp.schedule

    def schedules(self) -> builtins.list[pb.Schedule]:
        """Every schedule, by name, with its next and last tick."""
        return list(self._call(self.stub.ListSchedules, pb.ListSchedulesRequest(min_txid=self._min_txid())).schedules)

    def delete_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs stay); False if there was none."""
        resp = self._write(self.stub.DeleteSchedule, pb.DeleteScheduleRequest(name=name))
        self._note_txid(resp.txid)
        return bool(resp.deleted)

    def pause_schedule(self, name: str) -> pb.Schedule:
        resp = self._write(self.stub.PauseSchedule, pb.PauseScheduleRequest(name=name))
        self._note_txid(resp.txid)
        return resp.schedule

    def resume_schedule(self, name: str) -> pb.Schedule:
        """Resume from the next tick after now (ticks while paused do not run)."""
        resp = self._write(self.stub.ResumeSchedule, pb.ResumeScheduleRequest(name=name))
        self._note_txid(resp.txid)
        return resp.schedule

    def pause(self, queue: str) -> None:
        """Stop delivery from ``queue``; enqueues are still accepted."""
        self._note_txid(self._write(self.stub.PauseQueue, pb.PauseQueueRequest(queue=queue)).txid)

    def resume(self, queue: str) -> None:
        """Restart delivery from a paused ``queue``."""
        self._note_txid(self._write(self.stub.ResumeQueue, pb.ResumeQueueRequest(queue=queue)).txid)

    # ------------------------------------------------------------------ leases (low level)
    # Workers normally use ``Worker``, which batches these. Each takes any number of items
    # (split into calls of at most 1000) and returns one outcome per item, in order. Like
    # every write, each call is resent unchanged on CommittedNotReplicated (see ``_write``).

    def ack(self, items: Iterable[str | tuple[str, bytes | None] | pb.AckItem]) -> builtins.list[LeaseOutcome]:
        """Complete leases: lease tokens, ``(token, result)`` pairs or ``AckItem``s."""
        return [LeaseOutcome.from_proto(o) for o in self.ack_raw(_ack_items(items)).outcomes]

    def nack(
        self,
        items: Iterable[str | pb.NackItem],
        *,
        error_message: str = "",
        retry_delay: float | timedelta | None = None,
        terminal: bool = False,
    ) -> builtins.list[LeaseOutcome]:
        """Fail leases. Tokens get the keyword arguments (``retry_delay=None``: the server's
        backoff; ``terminal``: FAILED now); ``NackItem``s are sent as they are."""
        messages = _nack_items(items, error_message, retry_delay, terminal)
        return [LeaseOutcome.from_proto(o) for o in self.nack_raw(messages).outcomes]

    def heartbeat(
        self, lease_tokens: Iterable[str], *, extend_by: float | timedelta | None = None
    ) -> builtins.list[LeaseOutcome]:
        """Extend leases to now + ``extend_by`` (None: each lease's own duration)."""
        resp = self.heartbeat_raw(builtins.list(lease_tokens), extend_by=extend_by)
        return [LeaseOutcome.from_proto(o) for o in resp.outcomes]

    def ack_raw(self, items: Sequence[pb.AckItem]) -> pb.AckResponse:
        """Ack as protobuf in and out (outcomes of all calls concatenated)."""
        out = pb.AckResponse()
        out.txid = self._settle(self.stub.Ack, pb.AckRequest, items, out.outcomes)
        return out

    def nack_raw(self, items: Sequence[pb.NackItem]) -> pb.NackResponse:
        """Nack as protobuf in and out (outcomes of all calls concatenated)."""
        out = pb.NackResponse()
        out.txid = self._settle(self.stub.Nack, pb.NackRequest, items, out.outcomes)
        return out

    def _settle(self, method: Any, request: Any, items: Sequence[Any], outcomes: Any) -> int:
        """Send ``items`` in calls of at most BATCH_MAX; collect outcomes; return the last txid."""
        txid = 0
        for chunk in _chunks(items, BATCH_MAX):
            resp = self._write(method, request(items=chunk))
            outcomes.extend(resp.outcomes)
            txid = self._note_txid(max(txid, resp.txid))
        return txid

    def heartbeat_raw(
        self, lease_tokens: Sequence[str], *, extend_by: float | timedelta | None = None,
        progress: Mapping[str, pb.Progress] | None = None,
    ) -> pb.HeartbeatResponse:
        """Heartbeat as protobuf out: outcomes and new expiries for all tokens, in order;
        ``progress`` ({lease token: Progress}) reports some of these jobs' progress."""
        out = pb.HeartbeatResponse()
        for chunk in _chunks(lease_tokens, BATCH_MAX):
            resp = self._write(self.stub.Heartbeat, _heartbeat_request(chunk, extend_by, progress))
            out.outcomes.extend(resp.outcomes)
            out.lease_expires_at.extend(resp.lease_expires_at)
            out.txid = self._note_txid(max(out.txid, resp.txid))
        return out

    def lease_stream(
        self,
        queues: Sequence[str],
        *,
        worker_id: str = "",
        max_in_flight: int = 1,
        lease_duration: float | timedelta | None = None,
    ) -> grpc.CallIterator[pb.LeaseResponse]:
        """Open a raw Lease stream (no deadline). Iterate it for ``LeaseResponse`` messages
        and ``cancel()`` it when done; errors arrive as ``grpc.RpcError`` while iterating."""
        return self.stub.Lease(_lease_request(queues, worker_id, max_in_flight, lease_duration), metadata=self.metadata)

    def __repr__(self) -> str:
        return f"Client({self.target!r}, timeout={self.timeout:g})"
