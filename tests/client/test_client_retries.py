"""Retried writes never duplicate: the Python client against a small real gRPC server (a
scripted ``edgeq.v1.QueueService``) that answers the first calls of a method with the rich
errors the edgeq server sends: ABORTED + ``google.rpc.ErrorInfo`` reason
``COMMITTED_NOT_REPLICATED`` (the write committed, replicas did not confirm it in time), or
UNAVAILABLE + ErrorInfo ``NO_PRIMARY`` + ``google.rpc.RetryInfo``.

Checked: every Enqueue carries an idempotency key per job (``auto-<UUIDv7>`` when the caller
gave none), a CommittedNotReplicated answer is retried with the very same request until the
call's deadline, an auto-keyed job answered ``duplicate`` on the retry is reported as not a
duplicate, ``CommittedNotReplicated`` carries the txid and the keys when the deadline runs
out, the other writes (Ack, Nack, Heartbeat, CancelJob, RetryJob) are resent unchanged, and
the Worker's settle path survives a CommittedNotReplicated Ack.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped,unused-ignore]
from grpc_status import rpc_status

import edgeq
from edgeq import (
    Client,
    CommittedNotReplicated,
    EdgeqError,
    LeasedJob,
    LeaseOutcome,
    UnavailableError,
    Worker,
)
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

WAIT = 10.0
JOB_ID = "0190f3c2-0000-7000-8000-000000000001"


def _rich(code: int, message: str, reason: str, metadata: dict[str, str], retry_delay: float | None = None) -> Any:
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="edgeq.v1", metadata=metadata))
    details.append(info)
    if retry_delay is not None:
        retry = any_pb2.Any()
        d = duration_pb2.Duration()
        d.FromMicroseconds(round(retry_delay * 1_000_000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=d))
        details.append(retry)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


def committed_not_replicated(txid: int) -> Any:
    return _rich(code_pb2.ABORTED, "committed, not confirmed by replicas in time", "COMMITTED_NOT_REPLICATED",
                 {"txid": str(txid)})


class ScriptedQueue(pb_grpc.QueueServiceServicer):
    """A QueueService that records every request and fails the first ``failures[method]``
    calls of a method with ``error[method]`` (a grpc.Status) before answering like the edgeq
    server would: a job is stored on the first Enqueue that reaches it, even a failed one
    (it committed), and a later Enqueue with the same key answers ``duplicate``."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self.error: dict[str, Any] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.lease_jobs: list[pb.LeasedJob] = []
        self.lock = threading.Lock()

    def _fail(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            fail = self.failures[method] > 0
            if fail:
                self.failures[method] -= 1
        if fail:
            context.abort_with_status(self.error.get(method) or committed_not_replicated(42))

    def Enqueue(self, request: pb.EnqueueRequest, context: grpc.ServicerContext) -> pb.EnqueueResponse:
        self.requests["Enqueue"].append(request)
        results = []
        with self.lock:
            for job in request.jobs:
                key = (job.queue, job.idempotency_key)
                duplicate = bool(job.idempotency_key) and key in self.keys
                if not duplicate:
                    job_id = str(uuid.uuid4())
                    if job.idempotency_key:
                        self.keys[key] = job_id
                else:
                    job_id = self.keys[key]
                key_ = job.idempotency_key
                results.append(pb.EnqueueResult(job_id=job_id, duplicate=duplicate, idempotency_key=key_))
        self._fail("Enqueue", context)
        return pb.EnqueueResponse(results=results, txid=42)

    def Ack(self, request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckResponse:
        self.requests["Ack"].append(request)
        self._fail("Ack", context)
        return pb.AckResponse(outcomes=[pb.LEASE_OUTCOME_OK] * len(request.items), txid=43)

    def Nack(self, request: pb.NackRequest, context: grpc.ServicerContext) -> pb.NackResponse:
        self.requests["Nack"].append(request)
        self._fail("Nack", context)
        return pb.NackResponse(outcomes=[pb.LEASE_OUTCOME_OK] * len(request.items), txid=44)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        self.requests["Heartbeat"].append(request)
        self._fail("Heartbeat", context)
        return pb.HeartbeatResponse(outcomes=[pb.LEASE_OUTCOME_OK] * len(request.lease_tokens), txid=45)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.CancelJobResponse:
        self.requests["CancelJob"].append(request)
        self._fail("CancelJob", context)
        return pb.CancelJobResponse(job=pb.Job(id=request.job_id, queue="q", state=pb.JOB_STATE_CANCELLED), txid=46)

    def RetryJob(self, request: pb.RetryJobRequest, context: grpc.ServicerContext) -> pb.RetryJobResponse:
        self.requests["RetryJob"].append(request)
        self._fail("RetryJob", context)
        return pb.RetryJobResponse(job=pb.Job(id=request.job_id, queue="q", state=pb.JOB_STATE_PENDING), txid=47)

    def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: grpc.ServicerContext) -> Any:
        self.requests["GetQueueStats"].append(request)
        self._fail("GetQueueStats", context)
        return pb.GetQueueStatsResponse()

    def Lease(self, request: pb.LeaseRequest, context: grpc.ServicerContext) -> Iterator[pb.LeaseResponse]:
        with self.lock:
            jobs, self.lease_jobs = self.lease_jobs, []
        if jobs:
            yield pb.LeaseResponse(jobs=jobs)
        while context.is_active():
            time.sleep(0.02)


@pytest.fixture
def fake() -> Iterator[tuple[ScriptedQueue, str]]:
    servicer = ScriptedQueue()  # type: ignore[abstract]  # only the methods the tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_QueueServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait(5)


def test_enqueue_sends_a_generated_key_and_retries_the_same_request(fake: tuple[ScriptedQueue, str]) -> None:
    queue, target = fake
    queue.failures["Enqueue"] = 2  # committed twice over (the first stored the job), then confirmed
    with Client(target, timeout=5) as c:
        r = c.enqueue("mail", b"hi")
    sent = queue.requests["Enqueue"]
    assert len(sent) == 3
    assert sent[0] == sent[1] == sent[2]  # the very same request, keys included
    key = sent[0].jobs[0].idempotency_key
    assert key.startswith("auto-") and uuid.UUID(key.removeprefix("auto-")).version == 7
    assert r.idempotency_key == key and r.txid == 42
    assert r.job_id == queue.keys[("mail", key)]  # the job the first attempt stored
    assert not r.duplicate  # enqueued once by the caller, whatever the server saw


def test_every_job_of_a_batch_gets_its_own_key_and_user_keys_are_kept(fake: tuple[ScriptedQueue, str]) -> None:
    queue, target = fake
    queue.failures["Enqueue"] = 1
    spec = pb.JobSpec(queue="b", payload=b"3")
    with Client(target, timeout=5) as c:
        results = c.enqueue_many([{"queue": "b", "payload": b"1"}, {"queue": "b", "payload": b"2",
                                  "idempotency_key": "mine"}, spec])
    assert spec.idempotency_key == ""  # the caller's message is not modified
    first, second = queue.requests["Enqueue"]
    assert first == second
    keys = [j.idempotency_key for j in first.jobs]
    assert keys[1] == "mine" and keys[0] != keys[2] and all(k.startswith("auto-") for k in (keys[0], keys[2]))
    assert [r.idempotency_key for r in results] == keys
    # Auto keys: the retry's "duplicate" is this call's own first attempt. A caller's key may
    # name a job the caller enqueued before: the server's answer stands.
    assert [r.duplicate for r in results] == [False, True, False]


def test_committed_not_replicated_until_the_deadline(fake: tuple[ScriptedQueue, str]) -> None:
    queue, target = fake
    queue.failures["Enqueue"] = 10_000
    queue.error["Enqueue"] = committed_not_replicated(1234)
    with Client(target, timeout=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(CommittedNotReplicated) as err:
            c.enqueue("mail", b"x")
        elapsed = time.monotonic() - t0
    e = err.value
    assert isinstance(e, EdgeqError) and e.code is grpc.StatusCode.ABORTED
    assert e.reason == "COMMITTED_NOT_REPLICATED" and e.metadata == {"txid": "1234"} and e.txid == 1234
    sent = queue.requests["Enqueue"]
    assert len(sent) >= 3 and all(r == sent[0] for r in sent)
    assert e.idempotency_keys == (sent[0].jobs[0].idempotency_key,)
    assert elapsed < 2.0
    # Sending the keys again later is the safe way to make sure: a duplicate names the job.
    queue.failures["Enqueue"] = 0
    with Client(target, timeout=1.0) as c:
        again = c.enqueue("mail", b"x", idempotency_key=e.idempotency_keys[0])
    assert again.duplicate and again.job_id == queue.keys[("mail", e.idempotency_keys[0])]


@pytest.mark.parametrize("method", ["Ack", "Nack", "Heartbeat", "CancelJob", "RetryJob"])
def test_other_writes_are_resent_unchanged(fake: tuple[ScriptedQueue, str], method: str) -> None:
    queue, target = fake
    queue.failures[method] = 2
    calls: dict[str, Callable[[Client], Any]] = {
        "Ack": lambda c: c.ack(["t1", ("t2", b"r")]),
        "Nack": lambda c: c.nack(["t1"], error_message="boom", retry_delay=1),
        "Heartbeat": lambda c: c.heartbeat(["t1", "t2"], extend_by=5),
        "CancelJob": lambda c: c.cancel(JOB_ID).state,
        "RetryJob": lambda c: c.retry(JOB_ID).state,
    }
    with Client(target, timeout=5) as c:
        out = calls[method](c)
    assert out in ([LeaseOutcome.OK] * 2, [LeaseOutcome.OK], edgeq.JobState.CANCELLED, edgeq.JobState.PENDING)
    sent = queue.requests[method]
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2]


def test_rich_details_on_other_errors(fake: tuple[ScriptedQueue, str]) -> None:
    queue, target = fake
    queue.failures["GetQueueStats"] = 10_000
    queue.error["GetQueueStats"] = _rich(code_pb2.UNAVAILABLE, "no primary", "NO_PRIMARY", {"node": "n1"}, 0.25)
    with Client(target, timeout=5) as c, pytest.raises(UnavailableError) as err:
        c.stats()
    e = err.value
    assert e.reason == "NO_PRIMARY" and e.metadata == {"node": "n1"} and e.retry_delay == 0.25
    assert not isinstance(e, CommittedNotReplicated)
    assert len(queue.requests["GetQueueStats"]) == 5  # gRPC's own retry policy, as before

    # ABORTED without the reason is an ordinary error: not retried by the client.
    queue.requests.clear()
    queue.failures["Enqueue"] = 1
    queue.error["Enqueue"] = rpc_status.to_status(status_pb2.Status(code=code_pb2.ABORTED, message="other"))
    with Client(target, timeout=5) as c, pytest.raises(EdgeqError) as plain:
        c.enqueue("q", b"x")
    assert plain.value.code is grpc.StatusCode.ABORTED and plain.value.reason == "" and plain.value.metadata == {}
    assert not isinstance(plain.value, CommittedNotReplicated) and len(queue.requests["Enqueue"]) == 1


def test_worker_settles_through_committed_not_replicated(fake: tuple[ScriptedQueue, str]) -> None:
    queue, target = fake
    queue.lease_jobs = [pb.LeasedJob(job=pb.Job(id=JOB_ID, queue="w", attempts=1, max_attempts=3), lease_token="tok-1")]
    queue.failures["Ack"] = 2
    done = threading.Event()

    def handler(job: LeasedJob) -> bytes:
        done.set()
        return b"ok"

    with Client(target, timeout=5) as c, Worker(c, ["w"], handler, lease_duration=30) as worker:
        assert done.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while worker.acked < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert worker.acked == 1 and worker.stats.stale == 0 and worker.stats.lease_lost == 0
    sent = queue.requests["Ack"]
    assert len(sent) == 3 and all(r == sent[0] for r in sent)
    assert [(i.lease_token, i.result) for i in sent[0].items] == [("tok-1", b"ok")]
