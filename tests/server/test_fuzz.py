"""Wire-level fuzzing (issue 11): random bytes and mutated valid requests sent to every
QueueService method must never crash the server, never answer INTERNAL/UNKNOWN, and never
corrupt the database. Hypothesis drives it, bounded in examples and time."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import apsw
import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.serverthread import ServerThread

from edgeq.v1 import queue_pb2 as pb

SERVICE = "edgeq.v1.QueueService"
METHODS = [m for m in pb.DESCRIPTOR.services_by_name["QueueService"].methods]
#: Codes a hostile request may get; INTERNAL or UNKNOWN would be a server bug.
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: One well-formed request per method, to mutate.
SEEDS: dict[str, bytes] = {
    "Enqueue": pb.EnqueueRequest(jobs=[pb.JobSpec(queue="fz", payload=b"p", idempotency_key="k", priority=3,
                                                  headers={"h": "v"}, max_attempts=2, unique_key="u",
                                                  uniqueness=pb.UNIQUENESS_PENDING, group="t1")]).SerializeToString(),
    "Lease": pb.LeaseRequest(queues=["fz"], worker_id="w", max_in_flight=2).SerializeToString(),
    "Ack": pb.AckRequest(items=[pb.AckItem(lease_token="0" * 36 + ".0123456789abcdef.0123456789abcdef",
                                           result=b"r")]).SerializeToString(),
    "Nack": pb.NackRequest(items=[pb.NackItem(lease_token="t", error_message="e")]).SerializeToString(),
    "Heartbeat": pb.HeartbeatRequest(lease_tokens=["t"]).SerializeToString(),
    "GetJob": pb.GetJobRequest(job_id="0190a0a0-0000-7000-8000-000000000000").SerializeToString(),
    "ListJobs": pb.ListJobsRequest(queue="fz", page_size=10).SerializeToString(),
    "GetQueueStats": pb.GetQueueStatsRequest(queues=["fz"]).SerializeToString(),
    "CancelJob": pb.CancelJobRequest(job_id="0190a0a0-0000-7000-8000-000000000000").SerializeToString(),
    "RetryJob": pb.RetryJobRequest(job_id="0190a0a0-0000-7000-8000-000000000000").SerializeToString(),
    "RetryJobs": pb.RetryJobsRequest(selection=pb.JobSelection(queue="fz", state=pb.JOB_STATE_CANCELLED),
                                     limit=5).SerializeToString(),
    "CancelJobs": pb.CancelJobsRequest(selection=pb.JobSelection(queue="fz"), limit=5).SerializeToString(),
    "UpsertSchedule": pb.UpsertScheduleRequest(schedule=pb.Schedule(
        name="fz", queue="fz", cron="*/5 * * * *", time_zone="UTC", template=pb.JobSpec(payload=b"p"),
    )).SerializeToString(),
    "ListSchedules": pb.ListSchedulesRequest().SerializeToString(),
    "DeleteSchedule": pb.DeleteScheduleRequest(name="fz").SerializeToString(),
    "PauseSchedule": pb.PauseScheduleRequest(name="fz").SerializeToString(),
    "ResumeSchedule": pb.ResumeScheduleRequest(name="fz").SerializeToString(),
    "SetRateLimit": pb.SetRateLimitRequest(queue="fz", jobs=100, period=duration_pb2.Duration(seconds=1))
    .SerializeToString(),
    "SetGroupWeight": pb.SetGroupWeightRequest(queue="fz", group="t1", weight=3).SerializeToString(),
    "ListGroups": pb.ListGroupsRequest(queue="fz", page_size=2).SerializeToString(),
    "PauseQueue": pb.PauseQueueRequest(queue="fz").SerializeToString(),
    "ResumeQueue": pb.ResumeQueueRequest(queue="fz").SerializeToString(),
    "GetNodeInfo": pb.GetNodeInfoRequest().SerializeToString(),
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    srv = ServerThread(str(db))
    srv.start()
    try:
        yield srv, db
    finally:
        srv.close()


@pytest.fixture(scope="module")
def channel(fuzz_server: tuple[ServerThread, Path]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server[0].target) as ch:
        yield ch


def _send(channel: grpc.Channel, method: str, data: bytes, streaming: bool) -> grpc.StatusCode:
    path = f"/{SERVICE}/{method}"
    try:
        if streaming:
            call = channel.unary_stream(path)(data, timeout=0.3)
            for _ in call:
                pass
        else:
            channel.unary_unary(path)(data, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _mutate(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:  # flip a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)):]
        elif op == 2:  # insert junk
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:  # duplicate a slice (repeated fields, overlong varints)
            if data:
                a = rng.randrange(len(data))
                data[a:a] = data[a:a + rng.randint(1, 16)]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=256))
def test_random_bytes_never_crash_the_server(channel: grpc.Channel, method: object, data: bytes) -> None:
    m = method  # a MethodDescriptor
    code = _send(channel, m.name, data, m.server_streaming)  # type: ignore[attr-defined]
    assert code in ALLOWED, f"{m.name}({data!r}) -> {code}"  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), seed=st.integers(0, 2**32))
def test_mutated_requests_never_crash_the_server(channel: grpc.Channel, method: object, seed: int) -> None:
    m = method
    data = _mutate(SEEDS[m.name], random.Random(seed))  # type: ignore[attr-defined]
    code = _send(channel, m.name, data, m.server_streaming)  # type: ignore[attr-defined]
    assert code in ALLOWED, f"{m.name}({data!r}) -> {code}"  # type: ignore[attr-defined]


def test_after_fuzzing_the_server_serves_and_the_database_is_intact(
    fuzz_server: tuple[ServerThread, Path], channel: grpc.Channel
) -> None:
    """Runs after the fuzz tests of this module (pytest keeps file order)."""
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ok = channel.unary_unary(f"/{SERVICE}/Enqueue")(SEEDS["Enqueue"], timeout=5)
    assert pb.EnqueueResponse.FromString(ok).results
    conn = apsw.Connection(str(fuzz_server[1]), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").get == "ok"
        assert conn.execute("PRAGMA foreign_key_check").get is None
    finally:
        conn.close()
