"""Domain objects to protobuf messages (the reverse of ``validate.py``)."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from edgeq.v1 import queue_pb2 as pb

from .clock import MICROS
from .dispatch import Delivery
from .models import Job, JobState, LeaseOutcome, ScheduleRow
from .store import QueueCounts

STATE_TO_PROTO = {
    JobState.PENDING: pb.JOB_STATE_PENDING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.COMPLETED: pb.JOB_STATE_COMPLETED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
PROTO_TO_STATE = {v: k for k, v in STATE_TO_PROTO.items()}
OUTCOME_TO_PROTO = {
    LeaseOutcome.OK: pb.LEASE_OUTCOME_OK,
    LeaseOutcome.STALE: pb.LEASE_OUTCOME_STALE,
    LeaseOutcome.INVALID: pb.LEASE_OUTCOME_INVALID,
    LeaseOutcome.CANCEL_REQUESTED: pb.LEASE_OUTCOME_CANCEL_REQUESTED,
}


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    s, rem = divmod(us, MICROS)
    return timestamp_pb2.Timestamp(seconds=s, nanos=rem * 1000)


def duration(us: int) -> duration_pb2.Duration:
    s, rem = divmod(us, MICROS)
    return duration_pb2.Duration(seconds=s, nanos=rem * 1000)


def job(j: Job) -> pb.Job:
    m = pb.Job(
        id=j.id,
        queue=j.queue,
        payload=j.payload,
        state=STATE_TO_PROTO[j.state],
        attempts=j.attempts,
        max_attempts=j.max_attempts,
        priority=j.priority,
        run_at=timestamp(j.run_at),
        created_at=timestamp(j.created_at),
        error_message=j.error_message or "",
        idempotency_key=j.idempotency_key or "",
        headers=j.headers,
        worker_id=j.worker_id or "",
        result=j.result or b"",
        unique_key=j.unique_key or "",
        progress=j.progress or 0.0,
        progress_message=j.progress_message or "",
        cancel_requested=j.cancel_requested,
        concurrency_key=j.concurrency_key or "",
        concurrency_limit=j.concurrency_limit,
        group=j.group,
    )
    if j.started_at is not None:
        m.started_at.CopyFrom(timestamp(j.started_at))
    if j.completed_at is not None:
        m.completed_at.CopyFrom(timestamp(j.completed_at))
    if j.lease_expires_at is not None:
        m.lease_expires_at.CopyFrom(timestamp(j.lease_expires_at))
    return m


def leased(d: Delivery) -> pb.LeasedJob:
    assert d.job.lease_expires_at is not None
    return pb.LeasedJob(job=job(d.job), lease_token=d.token, lease_expires_at=timestamp(d.job.lease_expires_at))


def queue_stats(c: QueueCounts, now: int) -> pb.QueueStats:
    age = 0 if c.oldest_ready_run_at is None else max(0, now - c.oldest_ready_run_at)
    stats = pb.QueueStats(
        queue=c.queue,
        pending=c.pending,
        scheduled=c.scheduled,
        running=c.running,
        completed=c.completed,
        failed=c.failed,
        cancelled=c.cancelled,
        oldest_pending_age=duration(age),
        paused=c.paused,
        rate_limit_jobs=c.rate_jobs,
        rate_limited=c.rate_limited,
        groups=c.groups,
    )
    if c.rate_jobs:
        stats.rate_limit_period.CopyFrom(duration(c.rate_period_us))
    if c.key_rate is not None:
        stats.key_rate_limit_header = c.key_rate.header
        stats.key_rate_limit_jobs = c.key_rate.jobs
        stats.key_rate_limit_period.CopyFrom(duration(c.key_rate.period_us))
    return stats


def schedule(sch: ScheduleRow) -> pb.Schedule:
    t = sch.template
    template = pb.JobSpec(
        queue=sch.queue, payload=t.payload, max_attempts=t.max_attempts, priority=t.priority, headers=t.headers,
        unique_key=t.unique_key or "",
        uniqueness=(pb.UNIQUENESS_UNSPECIFIED if not t.unique_key else
                    pb.UNIQUENESS_ACTIVE if t.unique_running else pb.UNIQUENESS_PENDING),
    )
    m = pb.Schedule(
        name=sch.name, queue=sch.queue, cron=sch.cron, time_zone=sch.time_zone, template=template,
        overlap=pb.OVERLAP_POLICY_SKIP if sch.overlap_skip else pb.OVERLAP_POLICY_ALLOW,
        missed=pb.MISSED_TICKS_RUN_ONCE if sch.missed_run_once else pb.MISSED_TICKS_SKIP,
        paused=sch.paused, last_job_id=sch.last_job_id or "",
    )
    if sch.next_run_at is not None:
        m.next_run_at.CopyFrom(timestamp(sch.next_run_at))
    if sch.last_run_at is not None:
        m.last_run_at.CopyFrom(timestamp(sch.last_run_at))
    return m
