"""The job model: states, legal transitions, row and spec types, the retry backoff. No I/O.

State machine (docs/architecture.md draws it)::

    Enqueue -> PENDING --lease--> RUNNING --ack--> COMPLETED
                 ^  ^               |  |  \\--nack(terminal) / attempts exhausted--> FAILED
       RetryJob  |  \\--nack/expiry-/  |
    FAILED/CANCELLED                  \\--CancelJob--> CANCELLED (from PENDING too)

The database enforces the same with CHECK constraints (``db.py``); this module is the
Python-side statement of it, used by the store and by tests. A retried request that finds
the job where its first attempt left it (Ack/Nack by the lease that settled it, CancelJob
on CANCELLED, RetryJob on PENDING) is no transition: the store answers as before and
changes nothing.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import NamedTuple

from .tokens import LeaseRef


class JobState(enum.StrEnum):
    """Stored value of ``jobs.status``; the proto's JobState minus UNSPECIFIED."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

#: Every legal (from, to) pair. Anything else is a bug or a FAILED_PRECONDITION.
TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.PENDING, JobState.RUNNING),  # lease
        (JobState.PENDING, JobState.CANCELLED),  # CancelJob
        (JobState.RUNNING, JobState.COMPLETED),  # Ack
        (JobState.RUNNING, JobState.PENDING),  # Nack / expiry with attempts left
        (JobState.RUNNING, JobState.FAILED),  # Nack terminal / attempts exhausted
        (JobState.RUNNING, JobState.CANCELLED),  # CancelJob
        (JobState.FAILED, JobState.PENDING),  # RetryJob
        (JobState.CANCELLED, JobState.PENDING),  # RetryJob
    }
)


class LeaseOutcome(enum.IntEnum):
    """Per-item result of Ack, Nack and Heartbeat (values match the proto enum)."""

    OK = 1
    STALE = 2
    INVALID = 3
    CANCEL_REQUESTED = 4  # Heartbeat only: CancelJob cancelled the job under this lease


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job to enqueue. Times are absolute microseconds."""

    queue: str
    payload: bytes
    run_at: int | None  # None => now (at commit)
    max_attempts: int
    priority: int = 0
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None  # chosen by the sender (an edge node); None: assigned at insert
    unique_key: str | None = None
    unique_running: bool = True  # the unique key is blocked by a RUNNING job too (ACTIVE)
    concurrency_key: str | None = None
    concurrency_limit: int = 1  # jobs of the key leased at once
    group: str = ""  # the fair group ('' : the default group)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of ``jobs`` as the store returns it."""

    id: str
    queue: str
    payload: bytes
    state: JobState
    attempts: int
    max_attempts: int
    priority: int
    run_at: int
    created_at: int
    started_at: int | None
    completed_at: int | None
    lease_expires_at: int | None
    lease_id: str | None
    worker_id: str | None
    error_message: str | None
    idempotency_key: str | None
    headers: dict[str, str]
    result: bytes | None
    unique_key: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    cancel_requested: bool = False
    concurrency_key: str | None = None
    concurrency_limit: int = 0
    group: str = ""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    job_id: str
    duplicate: bool
    queue: str
    run_at: int
    unique: bool = False  # the duplicate is the job holding the unique key


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter for retries that name no delay.

    Attempt n (1-based) waits ``min(max, base * 2**(n-1))``, then "equal jitter": half of
    that fixed, the other half uniform random, so retries of a burst spread out instead
    of returning in lockstep (what Faktory, Sidekiq and River do with attempt**4 + rand).
    """

    base_us: int = 1_000_000
    max_us: int = 3_600_000_000

    def delay_us(self, attempt: int, rng: random.Random | None = None) -> int:
        uniform = (rng or random).random
        capped = min(self.max_us, self.base_us << max(0, min(attempt - 1, 40)))
        half = capped // 2
        return half + int(uniform() * (capped - half))


# ---------------------------------------------------------------------- records between layers


class AckItem(NamedTuple):
    """One validated Ack item: its lease (None: a token this server did not issue)."""

    ref: LeaseRef | None
    result: bytes


class NackItem(NamedTuple):
    """One validated Nack item."""

    ref: LeaseRef | None
    error_message: str
    retry_delay_us: int | None  # None: the server's backoff
    terminal: bool


class Extended(NamedTuple):
    """What a Heartbeat did to one lease: its outcome and, when OK, the new expiry."""

    outcome: LeaseOutcome
    lease_expires_at: int | None


class Cancelled(NamedTuple):
    """A CancelJob's result: the job as it is now, and whether it was RUNNING (its lease ended)."""

    job: Job
    was_running: bool


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One cron schedule as stored. Times in µs; ``template`` is the job each tick
    enqueues (its queue is ``queue``; no key, id or time of its own)."""

    name: str
    queue: str
    cron: str
    time_zone: str
    template: JobSpec
    overlap_skip: bool
    missed_run_once: bool
    paused: bool
    next_run_at: int | None  # None while paused
    last_run_at: int | None = None
    last_job_id: str | None = None


class Selection(NamedTuple):
    """The jobs a bulk RetryJobs / CancelJobs acts on: one queue, one state, an optional
    created_at range [after, before) in µs."""

    queue: str
    state: JobState
    created_after: int | None
    created_before: int | None


class Bulk(NamedTuple):
    """What a bulk call did: the jobs it changed (as they are now), which of them were
    RUNNING (their leases ended), and whether more jobs matched than its limit."""

    jobs: list[Job]
    ended: list[str]
    more: bool


class DueAt(NamedTuple):
    """The earliest run_at of a queue's scheduled jobs."""

    queue: str
    run_at: int


class QueueDepth(NamedTuple):
    """One queue's backlog, as the depth gauges show it."""

    queue: str
    ready: int  # PENDING and due
    scheduled: int  # PENDING, due later
    running: int
    oldest_ready_age_seconds: float  # 0 when none is ready
