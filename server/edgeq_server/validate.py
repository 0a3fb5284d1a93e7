"""Request validation: protobuf requests in, checked domain values out.

Every rule raises ``InvalidArgument`` (malformed) or ``ResourceExhausted`` (over a size
limit) naming the field path, before anything is written. The limits come from Config.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from edgeq.v1 import queue_pb2 as pb

from .clock import MICROS
from .config import Config
from .convert import PROTO_TO_STATE
from .errors import InvalidArgument, ResourceExhausted
from .models import AckItem, JobSpec, JobState, NackItem, ScheduleRow, Selection
from .tokens import LeaseRef, TokenCodec

QUEUE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_WORKER_ID = 256
MAX_ERROR_MESSAGE = 64 * 1024
MAX_IN_FLIGHT = 10_000
MIN_LEASE_US = 1 * MICROS
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_ATTEMPTS = 1000
# Timestamp range of google.protobuf.Timestamp: 0001-01-01 .. 9999-12-31.
_TS_MIN, _TS_MAX = -62135596800, 253402300799


def queue_name(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not QUEUE_NAME.fullmatch(value):
        raise InvalidArgument(field, "must match [A-Za-z0-9._-]{1,128}")
    return value


def job_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not JOB_ID.fullmatch(value):
        raise InvalidArgument(field, "is not a job id (lowercase UUID text)")
    return value


def duration_us(d: duration_pb2.Duration, field: str, *, max_us: int) -> int:
    """A non-negative Duration in microseconds, at most ``max_us``."""
    if abs(d.nanos) >= 1_000_000_000 or (d.seconds > 0 and d.nanos < 0) or (d.seconds < 0 and d.nanos > 0):
        raise InvalidArgument(field, "is not a valid Duration")
    if d.seconds < 0 or d.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    us = d.seconds * MICROS + d.nanos // 1000
    if us > max_us:
        raise InvalidArgument(field, f"must be at most {max_us / MICROS:g}s")
    return us


def timestamp_us(t: timestamp_pb2.Timestamp, field: str) -> int:
    if not (_TS_MIN <= t.seconds <= _TS_MAX) or not 0 <= t.nanos < 1_000_000_000:
        raise InvalidArgument(field, "is not a valid Timestamp")
    return t.seconds * MICROS + t.nanos // 1000


def _batch(n: int, field: str, cfg: Config) -> None:
    if n == 0:
        raise InvalidArgument(field, "must not be empty")
    if n > cfg.max_batch:
        raise ResourceExhausted(field, f"has {n} items; at most {cfg.max_batch} per call")


#: Most jobs of one concurrency key leased at once.
MAX_CONCURRENCY_LIMIT = 1000


def job_spec(s: pb.JobSpec, field: str, cfg: Config, now: int) -> JobSpec:
    queue = queue_name(s.queue, f"{field}.queue")
    if len(s.payload) > cfg.max_payload_bytes:
        raise ResourceExhausted(f"{field}.payload", f"is {len(s.payload)} bytes; the limit is {cfg.max_payload_bytes}")
    max_delay = int(cfg.max_delay_seconds * MICROS)
    run_at: int | None = None
    if s.HasField("delay") and s.HasField("run_at"):
        raise InvalidArgument(f"{field}.delay", "delay and run_at are mutually exclusive")
    if s.HasField("delay"):
        run_at = now + duration_us(s.delay, f"{field}.delay", max_us=max_delay)
    elif s.HasField("run_at"):
        run_at = timestamp_us(s.run_at, f"{field}.run_at")
        if run_at > now + max_delay:
            raise InvalidArgument(f"{field}.run_at", f"is more than {cfg.max_delay_seconds:g}s in the future")
        run_at = max(run_at, now)
    if s.max_attempts < 0 or s.max_attempts > MAX_ATTEMPTS:
        raise InvalidArgument(f"{field}.max_attempts", f"must be 0 (default) to {MAX_ATTEMPTS}")
    key = s.idempotency_key
    if len(key) > cfg.max_idempotency_key_length:
        raise InvalidArgument(
            f"{field}.idempotency_key", f"must be at most {cfg.max_idempotency_key_length} characters"
        )
    headers = dict(s.headers)
    if len(headers) > cfg.max_headers:
        raise ResourceExhausted(f"{field}.headers", f"has {len(headers)} entries; at most {cfg.max_headers}")
    size = 0
    for k, v in headers.items():
        if not k or len(k) > cfg.max_header_key_length:
            raise InvalidArgument(f"{field}.headers", f"keys must be 1..{cfg.max_header_key_length} characters")
        size += len(k.encode()) + len(v.encode())
    if size > cfg.max_headers_bytes:
        raise ResourceExhausted(f"{field}.headers", f"are {size} bytes; at most {cfg.max_headers_bytes}")
    unique = s.unique_key
    if len(unique) > cfg.max_idempotency_key_length:
        raise InvalidArgument(f"{field}.unique_key", f"must be at most {cfg.max_idempotency_key_length} characters")
    if s.uniqueness not in (pb.UNIQUENESS_UNSPECIFIED, pb.UNIQUENESS_PENDING, pb.UNIQUENESS_ACTIVE):
        raise InvalidArgument(f"{field}.uniqueness", f"unknown Uniqueness {s.uniqueness}")
    if s.uniqueness != pb.UNIQUENESS_UNSPECIFIED and not unique:
        raise InvalidArgument(f"{field}.unique_key", "is required with uniqueness")
    ckey = s.concurrency_key
    if len(ckey) > cfg.max_idempotency_key_length:
        raise InvalidArgument(
            f"{field}.concurrency_key", f"must be at most {cfg.max_idempotency_key_length} characters"
        )
    if not 0 <= s.concurrency_limit <= MAX_CONCURRENCY_LIMIT:
        raise InvalidArgument(f"{field}.concurrency_limit", f"must be 0 (one) to {MAX_CONCURRENCY_LIMIT}")
    if s.concurrency_limit and not ckey:
        raise InvalidArgument(f"{field}.concurrency_key", "is required with concurrency_limit")
    group = group_name(s.group, f"{field}.group")
    return JobSpec(
        queue=queue,
        payload=s.payload,
        run_at=run_at,
        max_attempts=s.max_attempts or cfg.default_max_attempts,
        priority=s.priority,
        idempotency_key=key or None,
        headers=headers,
        job_id=job_id(s.job_id, f"{field}.job_id") if s.job_id else None,
        unique_key=unique or None,
        unique_running=s.uniqueness != pb.UNIQUENESS_PENDING,
        concurrency_key=ckey or None,
        concurrency_limit=s.concurrency_limit or 1,
        group=group,
    )


def enqueue(req: pb.EnqueueRequest, cfg: Config, now: int) -> list[JobSpec]:
    durability(req)
    _batch(len(req.jobs), "jobs", cfg)
    return [job_spec(s, f"jobs[{i}]", cfg, now) for i, s in enumerate(req.jobs)]


#: ``EnqueueRequest.durability`` -> ``Config.durability`` name.
DURABILITY_NAMES = {
    pb.DURABILITY_LOCAL: "local", pb.DURABILITY_REPLICATED: "replicated", pb.DURABILITY_EDGE: "edge",
}


def durability(req: pb.EnqueueRequest) -> str | None:
    """The acknowledgement level the request asks for (None: the server's default)."""
    if req.durability == pb.DURABILITY_UNSPECIFIED:
        return None
    name = DURABILITY_NAMES.get(req.durability)
    if name is None:
        raise InvalidArgument("durability", f"unknown value {req.durability}")
    return name


@dataclass(frozen=True, slots=True)
class LeaseParams:
    queues: tuple[str, ...]
    worker_id: str
    max_in_flight: int
    lease_us: int


def lease(req: pb.LeaseRequest, cfg: Config) -> LeaseParams:
    if not req.queues:
        raise InvalidArgument("queues", "must name at least one queue")
    if len(req.queues) > cfg.max_queues_per_lease:
        raise InvalidArgument("queues", f"must name at most {cfg.max_queues_per_lease} queues")
    queues = tuple(queue_name(q, f"queues[{i}]") for i, q in enumerate(req.queues))
    if len(req.worker_id) > MAX_WORKER_ID:
        raise InvalidArgument("worker_id", f"must be at most {MAX_WORKER_ID} characters")
    if req.max_in_flight < 0 or req.max_in_flight > MAX_IN_FLIGHT:
        raise InvalidArgument("max_in_flight", f"must be 0 (means 1) to {MAX_IN_FLIGHT}")
    lease_us = int(cfg.default_lease_seconds * MICROS)
    if req.HasField("lease_duration"):
        given = duration_us(req.lease_duration, "lease_duration", max_us=int(cfg.max_lease_seconds * MICROS))
        if given:
            if given < MIN_LEASE_US:
                raise InvalidArgument("lease_duration", "must be at least 1s")
            lease_us = given
    return LeaseParams(queues, req.worker_id, req.max_in_flight or 1, lease_us)


def token(codec: TokenCodec, value: str) -> LeaseRef | None:
    """The delivery a lease token names; None when it names none this cluster signed —
    empty, malformed, too long or with a bad signature alike. Batch calls answer such an
    item LEASE_OUTCOME_INVALID and settle the others (as SQS reports a bad receipt handle
    per entry): one bad token never fails its neighbours."""
    if not value:
        return None
    try:
        return codec.parse(value)
    except ValueError:
        return None


def ack(req: pb.AckRequest, codec: TokenCodec, cfg: Config) -> list[AckItem]:
    _batch(len(req.items), "items", cfg)
    out = []
    for i, item in enumerate(req.items):
        ref = token(codec, item.lease_token)
        if len(item.result) > cfg.max_payload_bytes:
            raise ResourceExhausted(
                f"items[{i}].result", f"is {len(item.result)} bytes; the limit is {cfg.max_payload_bytes}"
            )
        out.append(AckItem(ref, item.result))
    return out


def nack(req: pb.NackRequest, codec: TokenCodec, cfg: Config) -> list[NackItem]:
    _batch(len(req.items), "items", cfg)
    out = []
    max_delay = int(cfg.max_delay_seconds * MICROS)
    for i, item in enumerate(req.items):
        ref = token(codec, item.lease_token)
        if len(item.error_message) > MAX_ERROR_MESSAGE:
            raise ResourceExhausted(f"items[{i}].error_message", f"must be at most {MAX_ERROR_MESSAGE} characters")
        delay: int | None = None
        if item.HasField("retry_delay"):
            delay = duration_us(item.retry_delay, f"items[{i}].retry_delay", max_us=max_delay) or None
        out.append(NackItem(ref, item.error_message, delay, item.terminal))
    return out


#: Longest progress message, in bytes.
MAX_PROGRESS_MESSAGE = 256


def heartbeat(
    req: pb.HeartbeatRequest, codec: TokenCodec, cfg: Config
) -> tuple[list[LeaseRef | None], int | None, dict[int, tuple[float, str]]]:
    """(refs, extend_by µs or None, {index of a lease in refs: (progress value, message)})."""
    _batch(len(req.lease_tokens), "lease_tokens", cfg)
    refs = [token(codec, t) for t in req.lease_tokens]
    extend: int | None = None
    if req.HasField("extend_by"):
        extend = duration_us(req.extend_by, "extend_by", max_us=int(cfg.max_lease_seconds * MICROS)) or None
        if extend is not None and extend < MIN_LEASE_US:
            raise InvalidArgument("extend_by", "must be at least 1s")
    index = {t: i for i, t in enumerate(req.lease_tokens)}
    progress: dict[int, tuple[float, str]] = {}
    for i, p in enumerate(req.progress):
        where = index.get(p.lease_token)
        if where is None:
            raise InvalidArgument(f"progress[{i}].lease_token", "must be one of lease_tokens")
        if not math.isfinite(p.value):
            raise InvalidArgument(f"progress[{i}].value", "must be a finite number")
        if len(p.message.encode()) > MAX_PROGRESS_MESSAGE:
            raise InvalidArgument(f"progress[{i}].message", f"must be at most {MAX_PROGRESS_MESSAGE} bytes")
        progress[where] = (p.value, p.message)
    return refs, extend, progress


def schedule(req: pb.UpsertScheduleRequest, cfg: Config, now: int) -> ScheduleRow:
    """An UpsertSchedule's schedule, checked (without its next tick: the caller's)."""
    from . import schedules  # croniter loads with the first schedule

    sch = req.schedule
    name = queue_name(sch.name, "schedule.name")
    queue = queue_name(sch.queue, "schedule.queue")
    schedules.check(sch.cron, sch.time_zone)
    t = sch.template
    for field_name in ("idempotency_key", "job_id", "delay", "run_at"):
        if t.HasField(field_name) if field_name in ("delay", "run_at") else getattr(t, field_name):
            raise InvalidArgument(f"schedule.template.{field_name}", "is set per tick by the schedule; leave it empty")
    if t.queue and t.queue != queue:
        raise InvalidArgument("schedule.template.queue", "must be empty or the schedule's queue")
    template = pb.JobSpec()
    template.CopyFrom(t)
    template.queue = queue
    spec = job_spec(template, "schedule.template", cfg, now)
    if sch.overlap not in (pb.OVERLAP_POLICY_UNSPECIFIED, pb.OVERLAP_POLICY_ALLOW, pb.OVERLAP_POLICY_SKIP):
        raise InvalidArgument("schedule.overlap", f"unknown OverlapPolicy {sch.overlap}")
    if sch.missed not in (pb.MISSED_TICKS_UNSPECIFIED, pb.MISSED_TICKS_SKIP, pb.MISSED_TICKS_RUN_ONCE):
        raise InvalidArgument("schedule.missed", f"unknown MissedTicks {sch.missed}")
    return ScheduleRow(
        name, queue, sch.cron.strip(), sch.time_zone or "UTC", spec, sch.overlap == pb.OVERLAP_POLICY_SKIP,
        sch.missed == pb.MISSED_TICKS_RUN_ONCE, False, None,
    )


#: Smallest rate-limit period.
MIN_RATE_PERIOD_US = 1000


def rate_limit(req: pb.SetRateLimitRequest) -> tuple[str, int, int, str]:
    """SetRateLimit's (queue, jobs, period µs, key header); jobs 0 (period 0) removes the
    limit (the per-key one when a key header is named)."""
    queue = queue_name(req.queue, "queue")
    header = req.key_header
    if len(header.encode()) > MAX_HEADER_NAME_BYTES:
        raise InvalidArgument("key_header", f"is longer than {MAX_HEADER_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in header):
        raise InvalidArgument("key_header", "must not contain control characters")
    if req.jobs < 0 or req.jobs > 1_000_000_000:
        raise InvalidArgument("jobs", "must be 0 (no limit) to 1e9")
    if req.jobs == 0:
        return queue, 0, 0, header
    if not req.HasField("period"):
        raise InvalidArgument("period", "is required with jobs")
    period = duration_us(req.period, "period", max_us=366 * 86400 * MICROS)
    if period < MIN_RATE_PERIOD_US:
        raise InvalidArgument("period", "must be at least 1ms")
    return queue, int(req.jobs), period, header


#: Longest header name a per-key rate limit may name, in bytes.
MAX_HEADER_NAME_BYTES = 128


#: Longest fair group name, in bytes.
MAX_GROUP_BYTES = 128
#: Largest group weight.
MAX_GROUP_WEIGHT = 1000


def group_name(value: str, field: str) -> str:
    """A fair group (JobSpec.group): '' (the default group) or at most 128 bytes of
    printable text."""
    if len(value.encode()) > MAX_GROUP_BYTES:
        raise InvalidArgument(field, f"is longer than {MAX_GROUP_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def group_weight(req: pb.SetGroupWeightRequest) -> tuple[str, str, int]:
    """SetGroupWeight's (queue, group, weight)."""
    queue = queue_name(req.queue, "queue")
    group = group_name(req.group, "group")
    if not 1 <= req.weight <= MAX_GROUP_WEIGHT:
        raise InvalidArgument("weight", f"must be 1 to {MAX_GROUP_WEIGHT}")
    return queue, group, req.weight


def list_groups(req: pb.ListGroupsRequest) -> tuple[str, str | None, int]:
    """ListGroups' (queue, the last group of the previous page or None, page size)."""
    queue = queue_name(req.queue, "queue")
    if req.page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    size = min(req.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = None
    if req.page_token:
        try:
            padded = req.page_token + "=" * (-len(req.page_token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            after, token_queue = str(data["g"]), str(data["q"])
        except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
            raise InvalidArgument("page_token", "is not a token from ListGroups") from None
        if token_queue != queue:
            raise InvalidArgument("page_token", "was issued for another queue")
    return queue, after, size


def encode_group_token(queue: str, group: str) -> str:
    raw = json.dumps({"q": queue, "g": group}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def schedule_name(value: str) -> str:
    return queue_name(value, "name")


#: Most jobs one RetryJobs / CancelJobs call changes (and its default).
MAX_BULK = 1000


def selection(req: pb.RetryJobsRequest | pb.CancelJobsRequest, allowed: tuple[JobState, ...]) -> tuple[Selection, int]:
    """A bulk call's (selection, limit): the queue is required, the state one of
    ``allowed`` (the first when unset), the time range ordered, the limit 0..MAX_BULK."""
    sel = req.selection
    queue = queue_name(sel.queue, "selection.queue")
    state = state_filter(sel.state, "selection.state") or allowed[0]
    if state not in allowed:
        names = " or ".join(s.value.upper() for s in allowed)
        raise InvalidArgument("selection.state", f"must be {names} here (got {state.value.upper()})")
    after = timestamp_us(sel.created_after, "selection.created_after") if sel.HasField("created_after") else None
    before = timestamp_us(sel.created_before, "selection.created_before") if sel.HasField("created_before") else None
    if after is not None and before is not None and after >= before:
        raise InvalidArgument("selection.created_before", "must be after selection.created_after")
    if not 0 <= req.limit <= MAX_BULK:
        raise InvalidArgument("limit", f"must be 0..{MAX_BULK} (0: {MAX_BULK})")
    return Selection(queue, state, after, before), req.limit or MAX_BULK


def state_filter(value: int, field: str = "state") -> JobState | None:
    if value == pb.JOB_STATE_UNSPECIFIED:
        return None
    if value == pb.JOB_STATE_ACCEPTED:
        raise InvalidArgument(
            field, "ACCEPTED jobs are in one node's edge log, not listed: GetJob or GetQueueStats (accepted) show them"
        )
    state: JobState | None = PROTO_TO_STATE.get(value)  # type: ignore[call-overload]
    if state is None:
        raise InvalidArgument(field, f"unknown JobState {value}")
    return state


@dataclass(frozen=True, slots=True)
class ListParams:
    queue: str | None
    state: JobState | None
    page_size: int
    after_rowid: int
    search: str = ""


#: Longest ListJobs ``search`` text, in bytes.
MAX_SEARCH_BYTES = 256


def _filter_key(queue: str | None, state: JobState | None, search: str = "") -> str:
    key = f"{queue or ''}/{state.value if state else ''}"
    return f"{key}/{search}" if search else key


def encode_page_token(after_rowid: int, queue: str | None, state: JobState | None, search: str = "") -> str:
    raw = json.dumps({"a": after_rowid, "f": _filter_key(queue, state, search)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def list_jobs(req: pb.ListJobsRequest) -> ListParams:
    queue = queue_name(req.queue, "queue") if req.queue else None
    state = state_filter(req.state)
    if req.page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    search = req.search
    if len(search.encode()) > MAX_SEARCH_BYTES:
        raise InvalidArgument("search", f"is longer than {MAX_SEARCH_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in search):
        raise InvalidArgument("search", "must not contain control characters")
    size = min(req.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = 0
    if req.page_token:
        try:
            padded = req.page_token + "=" * (-len(req.page_token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            after = int(data["a"])
            token_filter = str(data["f"])
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError, binascii.Error):
            raise InvalidArgument("page_token", "is not a token from ListJobs") from None
        if not 0 <= after < 2**63:
            raise InvalidArgument("page_token", "is not a token from ListJobs")
        if token_filter != _filter_key(queue, state, search):
            raise InvalidArgument("page_token", "was issued for different filters")
    return ListParams(queue, state, size, after, search)


def queue_list(values: Sequence[str], field: str = "queues") -> list[str]:
    return [queue_name(q, f"{field}[{i}]") for i, q in enumerate(values)]
