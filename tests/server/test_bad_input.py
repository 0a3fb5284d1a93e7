"""Bad requests over a real channel. Each one must get the exact gRPC code, a details
string naming the offending field, write nothing, and leave the server serving."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from support.e2e_fixtures import Harness, dur, rpc_error

from edgeq.v1 import queue_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
UUID = "01890a5d-ac96-774b-bcce-b302099a8057"
#: Shaped like a lease token, signed by nobody: it parses, so validation goes on to the
#: fields after it (its outcome would be INVALID, but the request never gets that far).
WELL_FORMED_TOKEN = f"{UUID}.0123456789abcdef.0123456789abcdef"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, max_payload_bytes=1024) as harness:
        yield harness


async def refused(h: Harness, call: Any, code: grpc.StatusCode, field: str | None) -> grpc.aio.AioRpcError:
    """``call`` fails with ``code`` naming ``field`` (None: gRPC's own message); nothing
    was written; the server still serves a good request afterwards."""
    txid = h.txid
    jobs_before = [j.id for j in await h.all_jobs()]
    queues_before = sorted(await h.stats())
    err = await rpc_error(call)
    assert err.code() == code, (err.code(), err.details())
    details = err.details() or ""
    assert field is None or details.startswith((field + ":", field + " ")), details
    assert h.txid == txid, "a refused request committed a write"
    assert [j.id for j in await h.all_jobs()] == jobs_before
    assert sorted(await h.stats()) == queues_before
    good = await h.put(queue="after")
    assert (await h.job(good)).state == pb.JOB_STATE_PENDING
    return err


def spec(**kw: Any) -> pb.JobSpec:
    kw.setdefault("queue", "q")
    return pb.JobSpec(**kw)


def enqueue(h: Harness, *specs: pb.JobSpec) -> Any:
    return h.stub.Enqueue(pb.EnqueueRequest(jobs=list(specs)))


# ---------------------------------------------------------------------- Enqueue


async def test_enqueue_with_an_unknown_durability_is_refused_naming_the_field(h: Harness) -> None:
    request = pb.EnqueueRequest(jobs=[spec(payload=b"x")], durability=42)  # type: ignore[arg-type]
    await refused(h, h.stub.Enqueue(request), INVALID, "durability")


async def test_replicated_durability_on_a_standalone_server_is_refused_and_edge_means_local(h: Harness) -> None:
    request = pb.EnqueueRequest(jobs=[spec(payload=b"x")], durability=pb.DURABILITY_REPLICATED)
    err = await refused(h, h.stub.Enqueue(request), grpc.StatusCode.FAILED_PRECONDITION, "durability")
    assert "standalone" in (err.details() or "")
    edge = await h.stub.Enqueue(pb.EnqueueRequest(jobs=[spec(payload=b"e")], durability=pb.DURABILITY_EDGE))
    assert not edge.accepted_at_edge and edge.txid > 0
    assert (await h.job(edge.results[0].job_id)).state == pb.JOB_STATE_PENDING


@pytest.mark.parametrize(
    "queue",
    ["", "has space", "x" * 129, "slash/name", "uni\u00e9", "tab\t", "new\nline"],
    ids=["empty", "space", "129-chars", "slash", "non-ascii", "tab", "newline"],
)
async def test_enqueue_invalid_queue_name(h: Harness, queue: str) -> None:
    await refused(h, enqueue(h, spec(queue=queue)), INVALID, "jobs[0].queue")


async def test_enqueue_invalid_queue_name_later_in_batch(h: Harness) -> None:
    await refused(h, enqueue(h, spec(), spec(), spec(queue="bad name")), INVALID, "jobs[2].queue")


async def test_enqueue_128_char_queue_name_is_fine(h: Harness) -> None:
    resp = await enqueue(h, spec(queue="a" * 128))
    assert (await h.job(resp.results[0].job_id)).queue == "a" * 128


async def test_enqueue_empty_jobs(h: Harness) -> None:
    await refused(h, h.stub.Enqueue(pb.EnqueueRequest()), INVALID, "jobs")


async def test_enqueue_1001_jobs(h: Harness) -> None:
    await refused(h, enqueue(h, *(spec() for _ in range(1001))), EXHAUSTED, "jobs")


async def test_enqueue_payload_over_limit(h: Harness) -> None:
    await refused(h, enqueue(h, spec(payload=b"x" * 1025)), EXHAUSTED, "jobs[0].payload")


async def test_enqueue_payload_over_limit_after_a_valid_job_stores_nothing(h: Harness) -> None:
    await refused(h, enqueue(h, spec(payload=b"ok"), spec(payload=b"x" * 1025)), EXHAUSTED, "jobs[1].payload")


async def test_enqueue_payload_at_limit_is_fine(h: Harness) -> None:
    resp = await enqueue(h, spec(payload=b"x" * 1024))
    assert len((await h.job(resp.results[0].job_id)).payload) == 1024


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


NOW_S = 1_800_000_000  # ManualClock's start


@pytest.mark.parametrize(
    ("kw", "code", "field"),
    [
        ({"delay": duration_pb2.Duration(seconds=-1)}, INVALID, "jobs[0].delay"),
        ({"delay": duration_pb2.Duration(nanos=-1)}, INVALID, "jobs[0].delay"),
        ({"delay": dur(400 * 86400)}, INVALID, "jobs[0].delay"),
        ({"delay": duration_pb2.Duration(seconds=1, nanos=-1)}, INVALID, "jobs[0].delay"),
        ({"delay": duration_pb2.Duration(seconds=-1, nanos=1)}, INVALID, "jobs[0].delay"),
        ({"delay": duration_pb2.Duration(seconds=0, nanos=1_000_000_000)}, INVALID, "jobs[0].delay"),
        ({"delay": dur(1), "run_at": _ts(NOW_S + 10)}, INVALID, "jobs[0].delay"),
        ({"run_at": _ts(NOW_S + 400 * 86400)}, INVALID, "jobs[0].run_at"),
        ({"run_at": _ts(NOW_S, -1)}, INVALID, "jobs[0].run_at"),
        ({"run_at": _ts(300_000_000_000)}, INVALID, "jobs[0].run_at"),
        ({"max_attempts": -1}, INVALID, "jobs[0].max_attempts"),
        ({"max_attempts": 1001}, INVALID, "jobs[0].max_attempts"),
        ({"idempotency_key": "k" * 300}, INVALID, "jobs[0].idempotency_key"),
        ({"headers": {f"h{i}": "v" for i in range(70)}}, EXHAUSTED, "jobs[0].headers"),
        ({"headers": {"big": "v" * 20 * 1024}}, EXHAUSTED, "jobs[0].headers"),
        ({"headers": {"": "empty key"}}, INVALID, "jobs[0].headers"),
        ({"headers": {"k" * 129: "long key"}}, INVALID, "jobs[0].headers"),
        ({"job_id": "not-a-uuid"}, INVALID, "jobs[0].job_id"),
        ({"job_id": "0190F3C2-0000-7000-8000-000000000001"}, INVALID, "jobs[0].job_id"),
        ({"unique_key": "u" * 300}, INVALID, "jobs[0].unique_key"),
        ({"uniqueness": pb.UNIQUENESS_ACTIVE}, INVALID, "jobs[0].unique_key"),
        ({"unique_key": "u", "uniqueness": 7}, INVALID, "jobs[0].uniqueness"),
        ({"concurrency_key": "c" * 300}, INVALID, "jobs[0].concurrency_key"),
        ({"concurrency_key": "c", "concurrency_limit": 1001}, INVALID, "jobs[0].concurrency_limit"),
        ({"concurrency_key": "c", "concurrency_limit": -1}, INVALID, "jobs[0].concurrency_limit"),
        ({"concurrency_limit": 3}, INVALID, "jobs[0].concurrency_key"),
        ({"group": "g" * 129}, INVALID, "jobs[0].group"),
        ({"group": "tenant\n1"}, INVALID, "jobs[0].group"),
    ],
    ids=[
        "negative-delay",
        "negative-delay-nanos",
        "delay-400-days",
        "delay-mixed-signs",
        "delay-mixed-signs-2",
        "delay-nanos-overflow",
        "delay-and-run_at",
        "run_at-400-days",
        "run_at-negative-nanos",
        "run_at-out-of-range",
        "negative-max_attempts",
        "max_attempts-1001",
        "idempotency_key-300",
        "70-headers",
        "20KiB-header",
        "empty-header-key",
        "long-header-key",
        "job_id-not-a-uuid",
        "job_id-uppercase",
        "unique-key-too-long",
        "uniqueness-without-key",
        "unknown-uniqueness",
        "concurrency-key-too-long",
        "concurrency-limit-too-big",
        "concurrency-limit-negative",
        "concurrency-limit-without-key",
        "group-too-long",
        "group-control-character",
    ],
)
async def test_enqueue_bad_spec(h: Harness, kw: dict[str, Any], code: grpc.StatusCode, field: str) -> None:
    await refused(h, enqueue(h, spec(**kw)), code, field)


def _patched(req: pb.EnqueueRequest, marker: bytes, replacement: bytes) -> bytes:
    raw = req.SerializeToString()
    assert raw.count(marker) == 1 and len(replacement) == len(marker)
    return raw.replace(marker, replacement)


def _raw_enqueue(h: Harness) -> Callable[[bytes], Any]:
    assert h.channel is not None
    return h.channel.unary_unary(
        "/edgeq.v1.QueueService/Enqueue",
        request_serializer=lambda b: b,
        response_deserializer=pb.EnqueueResponse.FromString,
    )


@pytest.mark.parametrize(
    ("where", "field"),
    # The details name the map entry (value) or say that a key is at fault.
    [("value", "jobs[0].headers['k']"), ("key", "jobs[0].headers (a key)"), ("queue", "jobs[0].queue")],
)
async def test_enqueue_non_utf8_string(h: Harness, where: str, field: str) -> None:
    marker = b"MARKER"
    if where == "value":
        req = pb.EnqueueRequest(jobs=[spec(headers={"k": marker.decode()})])
    elif where == "key":
        req = pb.EnqueueRequest(jobs=[spec(headers={marker.decode(): "v"})])
    else:
        req = pb.EnqueueRequest(jobs=[spec(queue=marker.decode())])
    raw = _patched(req, marker, b"\xff\xfe" + marker[2:])
    await refused(h, _raw_enqueue(h)(raw), INVALID, field)


async def test_enqueue_non_utf8_names_the_right_job(h: Harness) -> None:
    req = pb.EnqueueRequest(jobs=[spec(), spec(headers={"k": "MARKER"})])
    raw = _patched(req, b"MARKER", b"\xc3\x28RKER")  # invalid 2-byte sequence
    await refused(h, _raw_enqueue(h)(raw), INVALID, "jobs[1].headers['k']")


@pytest.mark.parametrize(
    ("method", "req", "field"),
    [
        ("Lease", pb.LeaseRequest(queues=["ok", "MARKER"]), "queues[1]"),
        ("Lease", pb.LeaseRequest(queues=["q"], worker_id="MARKER"), "worker_id"),
        (
            "Nack",
            pb.NackRequest(items=[pb.NackItem(lease_token=WELL_FORMED_TOKEN, error_message="MARKER")]),
            "items[0].error_message",
        ),
        ("Ack", pb.AckRequest(items=[pb.AckItem(lease_token="MARKER")]), "items[0].lease_token"),
        ("Heartbeat", pb.HeartbeatRequest(lease_tokens=["ok", "MARKER"]), "lease_tokens[1]"),
        ("GetJob", pb.GetJobRequest(job_id="MARKER"), "job_id"),
        ("ListJobs", pb.ListJobsRequest(page_token="MARKER"), "page_token"),
        ("GetQueueStats", pb.GetQueueStatsRequest(queues=["MARKER"]), "queues[0]"),
        ("PauseQueue", pb.PauseQueueRequest(queue="MARKER"), "queue"),
    ],
    ids=lambda v: v if isinstance(v, str) and v[0].isupper() else None,
)
async def test_non_utf8_string_in_other_requests(h: Harness, method: str, req: Any, field: str) -> None:
    assert h.channel is not None
    raw = req.SerializeToString()
    assert raw.count(b"MARKER") == 1
    raw = raw.replace(b"MARKER", b"MA\x80KER")
    if method == "Lease":
        call = h.channel.unary_stream(f"/edgeq.v1.QueueService/{method}", request_serializer=lambda b: b)(raw)
        await refused(h, call.read(), INVALID, field)
    else:
        call = h.channel.unary_unary(f"/edgeq.v1.QueueService/{method}", request_serializer=lambda b: b)
        await refused(h, call(raw), INVALID, field)


async def test_message_over_the_transport_limit(tmp_path: Path) -> None:
    async with Harness(tmp_path, max_payload_bytes=1024, max_message_bytes=4096) as h:
        await refused(h, enqueue(h, spec(payload=b"x" * 8192)), EXHAUSTED, None)


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", b"\x0a\xff\xff", b"\x0a\x05ab", b"\x07", b"\x0b\x00"],
    ids=["varint-overflow", "bad-length", "truncated", "bad-wire-type", "group-start"],
)
async def test_request_that_is_not_protobuf(h: Harness, data: bytes) -> None:
    await refused(h, _raw_enqueue(h)(data), INVALID, "request")


@pytest.mark.parametrize("method", ["GetJob", "Ack", "PauseQueue", "ListJobs"])
async def test_garbage_bytes_to_other_methods(h: Harness, method: str) -> None:
    assert h.channel is not None
    call = h.channel.unary_unary(f"/edgeq.v1.QueueService/{method}", request_serializer=lambda b: b)
    await refused(h, call(b"\x0a\xff\xff\xff\xff"), INVALID, "request")


async def test_garbage_bytes_to_lease(h: Harness) -> None:
    assert h.channel is not None
    call = h.channel.unary_stream("/edgeq.v1.QueueService/Lease", request_serializer=lambda b: b)(b"\xff\xff\xff")
    await refused(h, call.read(), INVALID, "request")


# ---------------------------------------------------------------------- Lease


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({}, "queues"),
        ({"queues": ["has space"]}, "queues[0]"),
        ({"queues": ["ok", ""]}, "queues[1]"),
        ({"queues": [f"q{i}" for i in range(101)]}, "queues"),
        ({"queues": ["q"], "max_in_flight": -1}, "max_in_flight"),
        ({"queues": ["q"], "max_in_flight": 10_001}, "max_in_flight"),
        ({"queues": ["q"], "lease_duration": duration_pb2.Duration(seconds=-5)}, "lease_duration"),
        ({"queues": ["q"], "lease_duration": dur(0.5)}, "lease_duration"),
        ({"queues": ["q"], "lease_duration": dur(13 * 3600)}, "lease_duration"),
        ({"queues": ["q"], "lease_duration": duration_pb2.Duration(seconds=5, nanos=-1)}, "lease_duration"),
        ({"queues": ["q"], "worker_id": "w" * 257}, "worker_id"),
    ],
    ids=[
        "no-queues",
        "invalid-queue",
        "empty-second-queue",
        "101-queues",
        "negative-max_in_flight",
        "huge-max_in_flight",
        "negative-lease",
        "half-second-lease",
        "13h-lease",
        "invalid-duration",
        "long-worker_id",
    ],
)
async def test_lease_bad_request(h: Harness, kw: dict[str, Any], field: str) -> None:
    await h.put()  # something to lease, which must stay PENDING
    call = h.stub.Lease(pb.LeaseRequest(**kw))
    await refused(h, call.read(), INVALID, field)
    assert (await h.stats("q"))["q"].running == 0
    assert h.server.dispatcher is not None and h.server.dispatcher.stream_count == 0


# ---------------------------------------------------------------------- Ack / Nack / Heartbeat


def _ack(h: Harness, *tokens: str) -> Any:
    return h.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=t) for t in tokens]))


def _nack(h: Harness, *tokens: str) -> Any:
    return h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=t, terminal=True) for t in tokens]))


def _heartbeat(h: Harness, *tokens: str) -> Any:
    return h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=list(tokens)))


SETTLE = {"Ack": (_ack, "items"), "Nack": (_nack, "items"), "Heartbeat": (_heartbeat, "lease_tokens")}


def _token_field(rpc: str, i: int) -> str:
    return f"items[{i}].lease_token" if rpc != "Heartbeat" else f"lease_tokens[{i}]"


@pytest.mark.parametrize("rpc", list(SETTLE))
async def test_settle_empty_items(h: Harness, rpc: str) -> None:
    fn, field = SETTLE[rpc]
    await refused(h, fn(h), INVALID, field)


@pytest.mark.parametrize("rpc", list(SETTLE))
async def test_settle_1001_items(h: Harness, rpc: str) -> None:
    fn, field = SETTLE[rpc]
    await refused(h, fn(h, *[WELL_FORMED_TOKEN] * 1001), EXHAUSTED, field)


@pytest.mark.parametrize("token", ["", "abc", WELL_FORMED_TOKEN + "\n", WELL_FORMED_TOKEN.upper(), "x" * 200])
@pytest.mark.parametrize("rpc", list(SETTLE))
async def test_settle_malformed_token_is_that_items_invalid_outcome(h: Harness, rpc: str, token: str) -> None:
    """A malformed token names no delivery: its item answers LEASE_OUTCOME_INVALID (as a
    token with a bad signature does), the call succeeds, nothing is written."""
    fn, _ = SETTLE[rpc]
    before = h.server.writer.txid if h.server.writer else 0
    resp = await fn(h, token)
    assert list(resp.outcomes) == [pb.LEASE_OUTCOME_INVALID]
    assert (h.server.writer.txid if h.server.writer else 0) == before


@pytest.mark.parametrize("rpc", list(SETTLE))
async def test_settle_malformed_token_beside_a_live_one_fails_only_itself(h: Harness, rpc: str) -> None:
    """One bad token in a batch is that item's INVALID; the live token beside it is settled."""
    job_id = await h.put(queue="live")
    call = await h.lease("live")
    (leased,) = await h.take(call, 1)
    fn, _ = SETTLE[rpc]
    resp = await fn(h, leased.lease_token, "abc")
    assert list(resp.outcomes) == [pb.LEASE_OUTCOME_OK, pb.LEASE_OUTCOME_INVALID]
    job = await h.job(job_id)
    expected = {"Ack": pb.JOB_STATE_COMPLETED, "Nack": pb.JOB_STATE_FAILED, "Heartbeat": pb.JOB_STATE_RUNNING}[rpc]
    assert job.state == expected


@pytest.mark.parametrize(
    "delay",
    [duration_pb2.Duration(seconds=-1), duration_pb2.Duration(seconds=1, nanos=-1), dur(400 * 86400)],
    ids=["negative", "invalid", "400-days"],
)
async def test_nack_bad_retry_delay(h: Harness, delay: duration_pb2.Duration) -> None:
    job_id = await h.put(queue="live")
    call = await h.lease("live")
    (leased,) = await h.take(call, 1)
    before = await h.job(job_id)
    req = pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token, retry_delay=delay)])
    await refused(h, h.stub.Nack(req), INVALID, "items[0].retry_delay")
    assert await h.job(job_id) == before


async def test_nack_error_message_too_long(h: Harness) -> None:
    req = pb.NackRequest(items=[pb.NackItem(lease_token=WELL_FORMED_TOKEN, error_message="e" * (64 * 1024 + 1))])
    await refused(h, h.stub.Nack(req), EXHAUSTED, "items[0].error_message")


async def test_ack_result_too_large(h: Harness) -> None:
    req = pb.AckRequest(items=[pb.AckItem(lease_token=WELL_FORMED_TOKEN, result=b"r" * 1025)])
    await refused(h, h.stub.Ack(req), EXHAUSTED, "items[0].result")


@pytest.mark.parametrize(
    "extend", [duration_pb2.Duration(seconds=-1), dur(0.5), dur(13 * 3600)], ids=["negative", "half-second", "13h"]
)
async def test_heartbeat_bad_extend_by(h: Harness, extend: duration_pb2.Duration) -> None:
    req = pb.HeartbeatRequest(lease_tokens=[WELL_FORMED_TOKEN], extend_by=extend)
    await refused(h, h.stub.Heartbeat(req), INVALID, "extend_by")


# ---------------------------------------------------------------------- job ids


JOB_RPCS = {
    "GetJob": lambda h, v: h.stub.GetJob(pb.GetJobRequest(job_id=v)),
    "CancelJob": lambda h, v: h.stub.CancelJob(pb.CancelJobRequest(job_id=v)),
    "RetryJob": lambda h, v: h.stub.RetryJob(pb.RetryJobRequest(job_id=v)),
}


@pytest.mark.parametrize("value", ["", "not-a-uuid", UUID.upper(), UUID + " ", "x" * 10_000])
@pytest.mark.parametrize("rpc", list(JOB_RPCS))
async def test_bad_job_id(h: Harness, rpc: str, value: str) -> None:
    await h.put()
    await refused(h, JOB_RPCS[rpc](h, value), INVALID, "job_id")


@pytest.mark.parametrize(
    "progress, field",
    [
        (pb.Progress(lease_token="elsewhere", value=1), "progress[0].lease_token"),
        (pb.Progress(lease_token=WELL_FORMED_TOKEN, value=float("nan")), "progress[0].value"),
        (pb.Progress(lease_token=WELL_FORMED_TOKEN, value=float("inf")), "progress[0].value"),
        (pb.Progress(lease_token=WELL_FORMED_TOKEN, value=1, message="m" * 257), "progress[0].message"),
    ],
    ids=["token-not-in-the-call", "nan", "infinite", "message-too-long"],
)
async def test_heartbeat_progress_names_the_bad_field(h: Harness, progress: pb.Progress, field: str) -> None:
    call = h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[WELL_FORMED_TOKEN], progress=[progress]))
    await refused(h, call, INVALID, field)


def _schedule(**kw: Any) -> pb.UpsertScheduleRequest:
    fields: dict[str, Any] = {"name": "s", "queue": "q", "cron": "* * * * *"}
    fields.update(kw)
    return pb.UpsertScheduleRequest(schedule=pb.Schedule(**fields))


@pytest.mark.parametrize(
    "request_, field",
    [
        (_schedule(name=""), "schedule.name"),
        (_schedule(queue="no spaces"), "schedule.queue"),
        (_schedule(cron="61 * * * *"), "schedule.cron"),
        (_schedule(cron="* * *"), "schedule.cron"),
        (_schedule(time_zone="Mars/Olympus"), "schedule.time_zone"),
        (_schedule(template=pb.JobSpec(idempotency_key="k")), "schedule.template.idempotency_key"),
        (_schedule(template=pb.JobSpec(delay=duration_pb2.Duration(seconds=5))), "schedule.template.delay"),
        (_schedule(template=pb.JobSpec(queue="other")), "schedule.template.queue"),
        (_schedule(template=pb.JobSpec(max_attempts=-1)), "schedule.template.max_attempts"),
        (_schedule(overlap=9), "schedule.overlap"),
        (_schedule(missed=9), "schedule.missed"),
    ],
    ids=["no-name", "bad-queue", "minute-61", "three-fields", "zone", "key", "delay", "other-queue", "attempts",
         "overlap", "missed"],
)
async def test_upsert_schedule_names_the_bad_field(h: Harness, request_: pb.UpsertScheduleRequest, field: str) -> None:
    await refused(h, h.stub.UpsertSchedule(request_), INVALID, field)
    assert list((await h.stub.ListSchedules(pb.ListSchedulesRequest())).schedules) == []


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.SetRateLimitRequest(queue="no spaces", jobs=1, period=dur(1)), "queue"),
        (pb.SetRateLimitRequest(queue="q", jobs=-1, period=dur(1)), "jobs"),
        (pb.SetRateLimitRequest(queue="q", jobs=5), "period"),
        (pb.SetRateLimitRequest(queue="q", jobs=5, period=duration_pb2.Duration(nanos=1000)), "period"),
        (pb.SetRateLimitRequest(queue="q", jobs=5, period=duration_pb2.Duration(seconds=-1)), "period"),
        (pb.SetRateLimitRequest(queue="q", jobs=5, period=dur(1), key_header="a\x00b"), "key_header"),
        (pb.SetRateLimitRequest(queue="q", jobs=5, period=dur(1), key_header="h" * 129), "key_header"),
    ],
    ids=["queue", "negative-jobs", "no-period", "period-under-1ms", "negative-period", "key-header-control",
         "key-header-long"],
)
async def test_set_rate_limit_names_the_bad_field(h: Harness, request_: pb.SetRateLimitRequest, field: str) -> None:
    await refused(h, h.stub.SetRateLimit(request_), INVALID, field)
    (stats,) = (await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["q"]))).stats
    assert stats.rate_limit_jobs == 0 and stats.key_rate_limit_jobs == 0


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.SetGroupWeightRequest(queue="", group="g", weight=1), "queue"),
        (pb.SetGroupWeightRequest(queue="q", group="g", weight=0), "weight"),
        (pb.SetGroupWeightRequest(queue="q", group="g", weight=1001), "weight"),
        (pb.SetGroupWeightRequest(queue="q", group="g\x7f", weight=2), "group"),
    ],
    ids=["queue", "zero-weight", "weight-over-1000", "group-control"],
)
async def test_set_group_weight_names_the_bad_field(h: Harness, request_: pb.SetGroupWeightRequest, field: str) -> None:
    await refused(h, h.stub.SetGroupWeight(request_), INVALID, field)
    assert list((await h.stub.ListGroups(pb.ListGroupsRequest(queue="q"))).groups) == []


async def test_list_groups_names_the_bad_field(h: Harness) -> None:
    await h.enqueue(*[pb.JobSpec(queue="lg", group=f"t{i}") for i in range(3)])
    page = await h.stub.ListGroups(pb.ListGroupsRequest(queue="lg", page_size=2))
    assert page.next_page_token
    await refused(h, h.stub.ListGroups(pb.ListGroupsRequest(queue="other", page_token=page.next_page_token)),
                  INVALID, "page_token")
    await refused(h, h.stub.ListGroups(pb.ListGroupsRequest(queue="lg", page_token="%%%")), INVALID, "page_token")
    await refused(h, h.stub.ListGroups(pb.ListGroupsRequest(queue="lg", page_size=-1)), INVALID, "page_size")
    await refused(h, h.stub.ListGroups(pb.ListGroupsRequest()), INVALID, "queue")
    rest = await h.stub.ListGroups(pb.ListGroupsRequest(queue="lg", page_size=2, page_token=page.next_page_token))
    assert [g.group for g in page.groups] + [g.group for g in rest.groups] == ["t0", "t1", "t2"]
    assert not rest.next_page_token


# ---------------------------------------------------------------------- RetryJobs / CancelJobs


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


@pytest.mark.parametrize(
    "rpc, request_, field",
    [
        ("RetryJobs", pb.RetryJobsRequest(), "selection.queue"),
        ("CancelJobs", pb.CancelJobsRequest(selection=pb.JobSelection(queue="has space")), "selection.queue"),
        ("RetryJobs", pb.RetryJobsRequest(selection=pb.JobSelection(queue="q", state=pb.JOB_STATE_PENDING)),
         "selection.state"),
        ("CancelJobs", pb.CancelJobsRequest(selection=pb.JobSelection(queue="q", state=pb.JOB_STATE_COMPLETED)),
         "selection.state"),
        ("CancelJobs", pb.CancelJobsRequest(selection=pb.JobSelection(queue="q", state=99)), "selection.state"),  # type: ignore[arg-type]
        ("RetryJobs", pb.RetryJobsRequest(
            selection=pb.JobSelection(queue="q", created_after=_ts(20), created_before=_ts(10))
        ), "selection.created_before"),
        ("RetryJobs", pb.RetryJobsRequest(selection=pb.JobSelection(queue="q", created_after=_ts(-10**12))),
         "selection.created_after"),
        ("CancelJobs", pb.CancelJobsRequest(selection=pb.JobSelection(queue="q"), limit=1001), "limit"),
        ("RetryJobs", pb.RetryJobsRequest(selection=pb.JobSelection(queue="q"), limit=-1), "limit"),
    ],
)
async def test_bulk_calls_name_the_bad_field(h: Harness, rpc: str, request_: Any, field: str) -> None:
    await h.put("q")
    await refused(h, getattr(h.stub, rpc)(request_), INVALID, field)


# ---------------------------------------------------------------------- ListJobs


@pytest.mark.parametrize("state", [99, -1, 6])
async def test_list_jobs_unknown_state(h: Harness, state: int) -> None:
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(state=state)), INVALID, "state")  # type: ignore[arg-type]


async def test_list_jobs_negative_page_size(h: Harness) -> None:
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(page_size=-1)), INVALID, "page_size")


async def test_list_jobs_invalid_queue(h: Harness) -> None:
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(queue="has space")), INVALID, "queue")


@pytest.mark.parametrize("search", ["x" * 257, "a\nb", "\x7f"], ids=["too-long", "newline", "del"])
async def test_list_jobs_bad_search(h: Harness, search: str) -> None:
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(search=search)), INVALID, "search")


async def test_list_jobs_page_token_is_bound_to_its_search(h: Harness) -> None:
    for i in range(3):
        await h.stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="s", payload=b"x", idempotency_key=f"k-{i}")]))
    page = await h.stub.ListJobs(pb.ListJobsRequest(search="k-", page_size=2))
    assert [j.idempotency_key for j in page.jobs] == ["k-0", "k-1"] and page.next_page_token
    rest = await h.stub.ListJobs(pb.ListJobsRequest(search="k-", page_size=2, page_token=page.next_page_token))
    assert [j.idempotency_key for j in rest.jobs] == ["k-2"]
    other = h.stub.ListJobs(pb.ListJobsRequest(search="k-1", page_token=page.next_page_token))
    await refused(h, other, INVALID, "page_token")


@pytest.mark.parametrize(
    "token",
    ["garbage!", "bm90IGpzb24", "e30", "eyJhIjoieCIsImYiOiIvIn0", "W10", "\u00e9"],
    ids=["not-base64", "not-json", "empty-object", "non-int-rowid", "json-list", "non-ascii"],
)
async def test_list_jobs_garbage_page_token(h: Harness, token: str) -> None:
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(page_token=token)), INVALID, "page_token")


def _token(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        '{"a":Infinity,"f":"/"}',
        '{"a":1e400,"f":"/"}',
        '{"a":NaN,"f":"/"}',
        '{"a":100000000000000000000000000000,"f":"/"}',
        '{"a":-100000000000000000000000000000,"f":"/"}',
        "[" * 50_000 + "]" * 50_000,
    ],
    ids=["infinity", "float-overflow", "nan", "rowid-over-int64", "rowid-under-int64", "deeply-nested"],
)
async def test_list_jobs_hostile_page_token(h: Harness, raw: str) -> None:
    """Well-formed base64 JSON that is still not a token ListJobs could have issued."""
    await refused(h, h.stub.ListJobs(pb.ListJobsRequest(page_token=_token(raw))), INVALID, "page_token")


@pytest.mark.parametrize(
    "other",
    [{"queue": "b"}, {"queue": ""}, {"state": pb.JOB_STATE_PENDING}, {"queue": "a", "state": pb.JOB_STATE_RUNNING}],
    ids=["other-queue", "all-queues", "state", "queue-and-other-state"],
)
async def test_list_jobs_page_token_with_different_filters(h: Harness, other: dict[str, Any]) -> None:
    await h.enqueue(spec(queue="a"), spec(queue="a"), spec(queue="b"))
    first = await h.stub.ListJobs(pb.ListJobsRequest(queue="a", page_size=1))
    assert first.next_page_token
    again = await h.stub.ListJobs(pb.ListJobsRequest(queue="a", page_size=1, page_token=first.next_page_token))
    assert len(again.jobs) == 1  # same filters: fine
    req = pb.ListJobsRequest(page_size=1, page_token=first.next_page_token, **other)
    await refused(h, h.stub.ListJobs(req), INVALID, "page_token")


# ---------------------------------------------------------------------- queues


async def test_get_queue_stats_invalid_queue(h: Harness) -> None:
    req = pb.GetQueueStatsRequest(queues=["ok", "has space"])
    await refused(h, h.stub.GetQueueStats(req), INVALID, "queues[1]")


@pytest.mark.parametrize("queue", ["", "has space", "x" * 129])
@pytest.mark.parametrize("rpc", ["PauseQueue", "ResumeQueue"])
async def test_pause_resume_bad_queue(h: Harness, rpc: str, queue: str) -> None:
    if rpc == "PauseQueue":
        call = h.stub.PauseQueue(pb.PauseQueueRequest(queue=queue))
    else:
        call = h.stub.ResumeQueue(pb.ResumeQueueRequest(queue=queue))
    await refused(h, call, INVALID, "queue")


# ---------------------------------------------------------------------- limits are inclusive


@pytest.mark.parametrize(
    "kw",
    [
        {"queue": "A-z.0_9" + "x" * 121},
        {"payload": b"x" * 1024},
        {"delay": dur(366 * 86400)},
        {"run_at": _ts(NOW_S + 366 * 86400)},
        {"run_at": _ts(1)},  # long past: runs now
        {"max_attempts": 1000},
        {"idempotency_key": "k" * 256},
        {"headers": {f"h{i:02}": "v" for i in range(64)}},
        {"headers": {"k" * 128: "v" * (16 * 1024 - 128)}},
        {"priority": -(2**31)},
        {"priority": 2**31 - 1},
    ],
    ids=[
        "128-char-queue",
        "payload-at-limit",
        "delay-366-days",
        "run_at-366-days",
        "run_at-past",
        "max_attempts-1000",
        "idempotency_key-256",
        "64-headers",
        "16KiB-headers",
        "min-priority",
        "max-priority",
    ],
)
async def test_enqueue_at_the_limits_is_accepted(h: Harness, kw: dict[str, Any]) -> None:
    resp = await enqueue(h, spec(**kw))
    job = await h.job(resp.results[0].job_id)
    assert job.state == pb.JOB_STATE_PENDING
    for name, value in kw.items():
        if name not in ("delay", "run_at"):
            assert getattr(job, name) == value


@pytest.mark.parametrize(
    ("max_in_flight", "seconds"), [(10_000, 1), (1, 12 * 3600), (0, 0)], ids=["max-credits-1s", "12h", "defaults"]
)
async def test_lease_at_the_limits_is_accepted(h: Harness, max_in_flight: int, seconds: float) -> None:
    job_id = await h.put()
    call = await h.lease("q", max_in_flight=max_in_flight, lease_seconds=seconds)
    (leased,) = await h.take(call, 1)
    expected = seconds or 30  # 0 => the server default
    assert leased.job.id == job_id
    assert leased.lease_expires_at.ToMicroseconds() == h.clock.now() + int(expected * 1_000_000)


async def test_a_batch_repeating_one_key_or_job_id_stores_one_job_and_says_so(h: Harness) -> None:
    """Not an error: the repeats are answered as duplicates of the first, in the same call."""
    keyed = await h.stub.Enqueue(pb.EnqueueRequest(jobs=[
        pb.JobSpec(queue="dup", payload=b"1", idempotency_key="k"),
        pb.JobSpec(queue="dup", payload=b"2", idempotency_key="k"),
    ]))
    first, second = keyed.results
    assert second.job_id == first.job_id and second.duplicate and not first.duplicate
    job_id = "0190a0a0-0000-7000-8000-0000000000aa"
    named = await h.stub.Enqueue(pb.EnqueueRequest(jobs=[
        pb.JobSpec(queue="dup", payload=b"3", job_id=job_id),
        pb.JobSpec(queue="other", payload=b"4", job_id=job_id),
    ]))
    assert [r.job_id for r in named.results] == [job_id, job_id] and named.results[1].duplicate
    assert (await h.job(job_id)).queue == "dup" and (await h.job(job_id)).payload == b"3"
    assert (await h.stats())["dup"].pending == 2


@pytest.mark.parametrize("worker_id", ["w\x00", "\u202eevil", "x" * 257])
async def test_lease_worker_id_with_control_characters_or_too_long(h: Harness, worker_id: str) -> None:
    call = h.stub.Lease(pb.LeaseRequest(queues=["q"], worker_id=worker_id))
    if len(worker_id) > 256:
        await refused(h, call.read(), INVALID, "worker_id")
    else:  # free-form text: kept as given, never interpreted
        await call.initial_metadata()
        call.cancel()
