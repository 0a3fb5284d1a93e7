"""The Worker's decisions, without I/O: shared by ``edgeq.Worker`` (threads) and
``edgeq.aio.Worker`` (asyncio tasks), so the two follow docs/worker-contract.md from one
copy of its rules.

- ``Settings``: the constructor's options, validated once (the same errors for both).
- What a handler's end becomes (``done`` / ``failed``): Ack with the result; Nack with the
  error text, a ``Retry`` delay, ``Fail`` terminal, ``panic: ...`` for a BaseException; the
  hand-back Nacks of a stopping worker and the Nack of a handler past its timeout.
- ``Ledger``: the leases held (received, not yet settled) and the counters; which leases a
  heartbeat tick extends, what a heartbeat's and a settle's outcomes mean (a lease lost,
  logged once; a STALE heartbeat while this worker's own settle is on its way is not one).
- Settle batching and resend policy: ``split`` (one Ack and one Nack call per flush, the
  handler runs counted), ``isolate`` (one bad item refuses a whole call: send them one by
  one), ``refused_ack`` (an Ack refused for its result fails the attempt instead),
  ``resend_after`` (transient errors retried with backoff while the leases may be live),
  and ``reconnect_delay`` (full jitter).

The drivers own only the waiting: threads and queues in ``_worker``, tasks in ``aio``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2

from edgeq.v1 import queue_pb2 as pb

from ._client import BATCH_MAX
from ._errors import EdgeqError, Fail, Retry
from ._models import Job, to_datetime, to_duration

log = logging.getLogger("edgeq.worker")

#: Stream errors that retrying cannot fix: the worker stops and ``run()`` raises.
FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
#: Settle errors worth retrying (the server may have been restarting or draining).
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)
#: A Nack's retry_delay of 0 means "the server's backoff"; this is the smallest non-zero one.
IMMEDIATE = duration_pb2.Duration(nanos=1000)
MAX_ERROR_MESSAGE = 8192
OK = pb.LEASE_OUTCOME_OK
#: How long a stop waits for running handlers when nothing else says (Ctrl-C, a fatal error).
DEFAULT_DRAIN_SECONDS = 30.0


class LeasedJob:
    """One delivery, as a handler sees it.

    ``payload``, ``id``, ``queue``, ``headers``, ``attempts`` (this delivery included) come
    from the job; ``job`` converts the whole of it. ``lease_lost`` is set when a heartbeat
    or the settle call finds the lease stale (expired, re-leased or the job cancelled): the
    handler may stop early, since its outcome will be ignored. ``cancelled`` is set then too,
    and also when the handler times out or a stop's drain timeout passes: whenever the
    worker no longer waits for this handler (docs/worker-contract.md, §5). (Under
    ``edgeq.aio.Worker`` the handler's task is also cancelled then.)
    """

    __slots__ = (
        "_due", "_job", "_progress", "_settling", "_started", "cancelled", "lease_expires_at", "lease_lost",
        "lease_token", "raw",
    )

    def __init__(self, raw: pb.LeasedJob, due: float) -> None:
        self.raw = raw
        self.lease_token: str = raw.lease_token
        #: When the lease lapses unless extended (updated by heartbeats).
        self.lease_expires_at: datetime | None = to_datetime(raw.lease_expires_at)
        self.lease_lost = threading.Event()
        self.cancelled = threading.Event()
        self._due = due  # monotonic time of the next heartbeat
        self._started: float | None = None  # monotonic time the handler began
        self._settling = False  # its Ack / Nack is queued or sent: heartbeats no longer judge the lease
        self._job: Job | None = None
        self._progress: pb.Progress | None = None  # reported, not yet sent

    def report_progress(self, value: float, message: str = "") -> None:
        """Report how far the handler got (a finite number in its own unit, and a note of at
        most 256 bytes): sent with the worker's next heartbeat tick (at most a few seconds
        later; the last report wins), stored on the job, shown by GetJob, the CLI and the
        dashboard. Thread-safe; costs no call of its own."""
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("progress value must be a finite number")
        if len(message.encode()) > 256:
            raise ValueError("progress message must be at most 256 bytes")
        self._progress = pb.Progress(lease_token=self.lease_token, value=value, message=message)

    @property
    def id(self) -> str:
        return self.raw.job.id

    @property
    def queue(self) -> str:
        return self.raw.job.queue

    @property
    def payload(self) -> bytes:
        return self.raw.job.payload

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.job.headers

    @property
    def attempts(self) -> int:
        return self.raw.job.attempts

    @property
    def max_attempts(self) -> int:
        return self.raw.job.max_attempts

    @property
    def priority(self) -> int:
        return self.raw.job.priority

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = Job.from_proto(self.raw.job)
        return self._job

    def __repr__(self) -> str:
        return f"LeasedJob(id={self.id!r}, queue={self.queue!r}, attempts={self.attempts})"


# (job, item to send, True when it is a handler's outcome rather than a drain give-back)
Outcome: TypeAlias = tuple[LeasedJob, pb.AckItem | pb.NackItem, bool]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counters since the worker started."""

    #: Handler runs finished (outcome queued).
    processed: int
    #: Acks and Nacks the server applied (outcome OK).
    acked: int
    nacked: int
    #: Acks / Nacks refused as STALE or INVALID (lease lost before settling).
    stale: int
    #: Leases a heartbeat found lost.
    lease_lost: int
    #: Lease streams reopened after a failure.
    reconnects: int
    #: Leases held right now (received, not yet settled).
    in_flight: int


@dataclass(frozen=True)
class Settings:
    """A Worker's options, validated (``Settings.parse`` raises ValueError naming the option)."""

    queues: tuple[str, ...]
    concurrency: int
    max_in_flight: int
    lease_duration: float
    handler_timeout: float | None
    worker_id: str
    heartbeat: bool
    ack_batch_max: int
    ack_flush_interval: float
    reconnect_backoff: tuple[float, float]

    @classmethod
    def parse(
        cls, queues: str | Sequence[str], *, concurrency: int, max_in_flight: int | None,
        lease_duration: float | timedelta, handler_timeout: float | timedelta | None, worker_id: str | None,
        heartbeat: bool, ack_batch_max: int, ack_flush_interval: float, reconnect_backoff: tuple[float, float],
    ) -> Settings:
        names = (queues,) if isinstance(queues, str) else tuple(queues)
        if not names:
            raise ValueError("queues must name at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        lease = lease_duration.total_seconds() if isinstance(lease_duration, timedelta) else float(lease_duration)
        if lease < 1:
            raise ValueError("lease_duration must be at least 1 second")
        timeout = handler_timeout.total_seconds() if isinstance(handler_timeout, timedelta) else handler_timeout
        if timeout is not None and timeout <= 0:
            raise ValueError("handler_timeout must be positive")
        if not 1 <= ack_batch_max <= BATCH_MAX:
            raise ValueError(f"ack_batch_max must be 1..{BATCH_MAX}")
        if ack_flush_interval < 0:
            raise ValueError("ack_flush_interval must not be negative")
        initial, maximum = reconnect_backoff
        if not 0 < initial <= maximum:
            raise ValueError("reconnect_backoff must be (initial, max) with 0 < initial <= max")
        in_flight = max_in_flight if max_in_flight is not None else 4 * concurrency
        if in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        return cls(
            names, concurrency, in_flight, lease, timeout,
            worker_id if worker_id is not None else f"{socket.gethostname()}-{os.getpid()}",
            heartbeat, ack_batch_max, ack_flush_interval, (initial, maximum),
        )

    @property
    def half(self) -> float:
        """A lease is extended when about half of it is used."""
        return self.lease_duration / 2

    @property
    def tick(self) -> float:
        """How often the heartbeat loop looks (and judges handler timeouts)."""
        tick = min(max(self.lease_duration / 8, 0.05), 5.0)
        if self.handler_timeout is not None:
            tick = min(tick, max(self.handler_timeout / 10, 0.01))
        return tick

    def lease_request(self) -> pb.LeaseRequest:
        req = pb.LeaseRequest(queues=self.queues, worker_id=self.worker_id, max_in_flight=self.max_in_flight)
        req.lease_duration.CopyFrom(to_duration(self.lease_duration))
        return req

    def reconnect_delay(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^failures)]."""
        initial, maximum = self.reconnect_backoff
        return random.uniform(0, min(maximum, initial * 2 ** min(failures, 32)))


# ---------------------------------------------------------------------- outcomes


def clip(message: str) -> str:
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."


def done(lj: LeasedJob, result: Any) -> pb.AckItem:
    """A handler's return: Ack, with bytes as the job's result."""
    if result is None:
        return pb.AckItem(lease_token=lj.lease_token)
    if isinstance(result, bytes | bytearray | memoryview):
        return pb.AckItem(lease_token=lj.lease_token, result=bytes(result))
    raise TypeError(f"handler returned {type(result).__name__}; expected bytes or None")


def failed(lj: LeasedJob, exc: BaseException) -> pb.NackItem:
    """A handler's exception: ``Retry`` (its delay), ``Fail`` (terminal), any other
    Exception (server backoff, its repr), any other BaseException (``panic: ...``)."""
    token = lj.lease_token
    if isinstance(exc, Retry):
        item = pb.NackItem(lease_token=token, error_message=clip(str(exc)))
        if exc.delay is not None:
            item.retry_delay.CopyFrom(to_duration(exc.delay) if exc.delay > 0 else IMMEDIATE)
        return item
    if isinstance(exc, Fail):
        return pb.NackItem(lease_token=token, error_message=clip(str(exc)), terminal=True)
    if isinstance(exc, Exception):
        log.warning("job %s failed (attempt %d of %d)", lj.id, lj.attempts, lj.max_attempts, exc_info=exc)
        return pb.NackItem(lease_token=token, error_message=clip(repr(exc)))
    log.error("job %s panicked (attempt %d of %d)", lj.id, lj.attempts, lj.max_attempts, exc_info=exc)
    return pb.NackItem(lease_token=token, error_message=clip(f"panic: {type(exc).__name__}: {exc}"))


def handback(lj: LeasedJob, why: str) -> pb.NackItem:
    """A job this worker gives back unfinished (stopping): retried at once, elsewhere."""
    return pb.NackItem(lease_token=lj.lease_token, error_message=why, retry_delay=IMMEDIATE)


def timed_out(lj: LeasedJob, timeout: float) -> pb.NackItem:
    log.warning("job %s: handler timed out after %.3gs; nacking it", lj.id, timeout)
    return pb.NackItem(lease_token=lj.lease_token, error_message=f"handler timed out after {timeout:g}s")


def isolate(err: EdgeqError) -> bool:
    """Whether a refused settle call may be one bad item refusing the whole call."""
    return err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def refused_ack(lj: LeasedJob, err: EdgeqError) -> pb.NackItem:
    """An Ack refused on its own (e.g. a result over the size limit): fail the attempt instead."""
    log.error("ack of job %s refused (%s); nacking it", lj.id, err)
    return pb.NackItem(lease_token=lj.lease_token, error_message=clip(f"ack refused: {err}"))


def resend_after(what: str, err: EdgeqError, now: float, delay: float, limit: float) -> bool:
    """Whether to send a failed settle again after ``delay`` (transient, and in time)."""
    if err.code not in TRANSIENT or now + delay >= limit:
        return False
    log.warning("%s failed (%s); retrying in %.2fs", what, err, delay)
    return True


def split(batch: Sequence[Outcome]) -> tuple[list[tuple[LeasedJob, pb.AckItem]], list[tuple[LeasedJob, pb.NackItem]],
                                             int]:
    """A flush's outcomes as (acks, nacks, handler runs among them)."""
    acks: list[tuple[LeasedJob, pb.AckItem]] = []
    nacks: list[tuple[LeasedJob, pb.NackItem]] = []
    runs = 0
    for lj, item, from_handler in batch:
        runs += from_handler
        if isinstance(item, pb.AckItem):
            acks.append((lj, item))
        else:
            nacks.append((lj, item))
    return acks, nacks, runs


# ---------------------------------------------------------------------- leases held


class Ledger:
    """The leases a worker holds and its counters (thread-safe: the sync Worker's threads
    and the aio Worker's tasks both use it)."""

    def __init__(self, settings: Settings, now: Callable[[], float]) -> None:
        self._settings = settings
        self._now = now
        self._held: dict[str, LeasedJob] = {}
        self._lock = threading.Lock()
        self.processed = self.acked = self.nacked = self.stale = self.lost = self.reconnects = 0

    def receive(self, jobs: Sequence[pb.LeasedJob]) -> list[LeasedJob]:
        """Jobs pushed on the stream, now held (heartbeated until settled)."""
        due = self._now() + self._settings.half
        leased = [LeasedJob(j, due) for j in jobs]
        with self._lock:
            for lj in leased:
                self._held[lj.lease_token] = lj
        return leased

    def release(self, jobs: Sequence[LeasedJob]) -> None:
        with self._lock:
            for lj in jobs:
                self._held.pop(lj.lease_token, None)

    def due(self, horizon: float) -> list[LeasedJob]:
        """Held leases whose extension is due by ``horizon``, or with progress to send."""
        with self._lock:
            return [
                lj for lj in self._held.values()
                if (lj._due <= horizon or lj._progress is not None) and not lj.lease_lost.is_set()
            ]

    @staticmethod
    def progress(due: Sequence[LeasedJob]) -> dict[str, pb.Progress]:
        """The progress reports to send with a heartbeat of ``due`` (taken: sent once)."""
        out: dict[str, pb.Progress] = {}
        for lj in due:
            report, lj._progress = lj._progress, None
            if report is not None:
                out[lj.lease_token] = report
        return out

    def settled(self, what: str, jobs: Sequence[LeasedJob], outcomes: Sequence[int]) -> list[LeasedJob]:
        """An Ack/Nack call's outcomes: counts them, marks lost leases (logged once),
        releases the jobs. Returns the jobs whose lease was lost."""
        ok, lost = 0, []
        for lj, outcome in zip(jobs, outcomes, strict=False):
            if outcome == OK:
                ok += 1
            else:
                self.stale += 1
                lj.lease_lost.set()
                lost.append(lj)
                log.warning("%s of job %s: %s (lease expired, re-leased or cancelled; nothing changed)",
                            what, lj.id, _outcome_name(outcome))
        if what == "ack":
            self.acked += ok
        else:
            self.nacked += ok
        self.release(jobs)
        return lost

    def gave_up(self, what: str, jobs: Sequence[LeasedJob], err: EdgeqError) -> None:
        log.error("%s of %d jobs failed (%s); their leases will expire and they will be redelivered",
                  what, len(jobs), err)
        self.release(jobs)

    def extended(self, due: Sequence[LeasedJob], resp: pb.HeartbeatResponse, sent: float) -> list[LeasedJob]:
        """A heartbeat's outcomes: OK moves the next extension half a lease on; anything
        else on a job whose outcome is not being settled is a lost lease (both events set,
        logged once). Returns the jobs lost."""
        lost = []
        for i, (lj, outcome) in enumerate(zip(due, resp.outcomes, strict=False)):
            if outcome == OK:
                lj._due = sent + self._settings.half
                if i < len(resp.lease_expires_at):
                    lj.lease_expires_at = to_datetime(resp.lease_expires_at[i]) or lj.lease_expires_at
            elif lj._settling:
                # This worker's own Ack / Nack got there first (or is on its way and will
                # report STALE itself if the lease really was lost): not a lost lease.
                log.debug("heartbeat of job %s: %s while its outcome is being settled", lj.id, _outcome_name(outcome))
            else:
                self.lost += 1
                lj.lease_lost.set()
                lj.cancelled.set()
                lost.append(lj)
                if outcome == pb.LEASE_OUTCOME_CANCEL_REQUESTED:
                    log.info("job %s cancelled (CancelJob): the handler is told to stop, nothing is sent", lj.id)
                else:
                    log.warning("lease of job %s lost (%s): the handler's outcome will be ignored",
                                lj.id, _outcome_name(outcome))
        return lost

    def stats(self) -> WorkerStats:
        return WorkerStats(
            self.processed, self.acked, self.nacked, self.stale, self.lost, self.reconnects, len(self._held)
        )


class Counters:
    """The read-only counters both Workers expose, from their ``Ledger``."""

    _ledger: Ledger

    @property
    def processed(self) -> int:
        return self._ledger.processed

    @property
    def acked(self) -> int:
        return self._ledger.acked

    @property
    def nacked(self) -> int:
        return self._ledger.nacked

    @property
    def reconnects(self) -> int:
        return self._ledger.reconnects

    @property
    def stats(self) -> WorkerStats:
        return self._ledger.stats()


def _outcome_name(outcome: int) -> str:
    return pb.LeaseOutcome.Name(outcome) if outcome in pb.LeaseOutcome.values() else str(outcome)
