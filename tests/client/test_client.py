"""The synchronous ``edgeq.Client`` against a real server (in a background thread): every
method round-trips, jobs sent without a key get a generated one, errors map to the
EdgeqError tree, batches split at 1000, session consistency sends min_txid, and bearer
tokens are sent. (Retries of rich ABORTED errors: ``test_client_retries.py``.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.serverthread import ServerThread

import edgeq
from edgeq import (
    Client,
    EdgeqError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobSpec,
    JobState,
    LeaseOutcome,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    Uniqueness,
)
from edgeq.v1 import queue_pb2 as pb

UNKNOWN_ID = "01900000-0000-7000-8000-000000000000"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    st = ServerThread(str(tmp_path / "q.db"), min_txid_wait_seconds=0.05)
    st.start()
    yield st
    st.close()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=5) as c:
        yield c


def test_public_names() -> None:
    assert edgeq.__all__ == sorted(edgeq.__all__, key=lambda n: (not n.isupper(), n[:1].islower(), n))
    for name in edgeq.__all__:
        assert hasattr(edgeq, name), name


def test_enqueue_and_get_round_trip(client: Client) -> None:
    before = datetime.now(UTC)
    r = client.enqueue(
        "emails", b"hello", delay=60, priority=7, max_attempts=5, idempotency_key="k1", headers={"trace": "t-1"}
    )
    assert not r.duplicate and r.txid > 0 and client.last_txid == r.txid
    job = client.get(r.job_id)
    assert job.id == r.job_id and job.queue == "emails" and job.payload == b"hello"
    assert job.state is JobState.PENDING and job.attempts == 0 and job.max_attempts == 5 and job.priority == 7
    assert job.idempotency_key == "k1" and dict(job.headers) == {"trace": "t-1"}
    assert before + timedelta(seconds=59) < job.run_at < before + timedelta(seconds=62)
    assert job.run_at.tzinfo is UTC and before - timedelta(seconds=1) < job.created_at <= job.run_at
    assert job.started_at is None and job.completed_at is None and job.lease_expires_at is None
    assert job.worker_id is None and job.result is None and job.error_message == ""
    assert job.raw.id == r.job_id

    again = client.enqueue("emails", b"other payload", idempotency_key="k1")
    assert again.duplicate and again.job_id == r.job_id

    d = client.enqueue("emails", b"", max_attempts=0)
    assert client.get(d.job_id).max_attempts == 3  # the server default


def test_jobs_without_a_key_get_a_generated_one(client: Client) -> None:
    r = client.enqueue("auto", b"x")
    assert r.idempotency_key.startswith(edgeq.AUTO_KEY_PREFIX) and not r.duplicate
    assert client.get(r.job_id).idempotency_key == r.idempotency_key
    many = client.enqueue_many([JobSpec("auto", b"1"), JobSpec("auto", b"2", idempotency_key="own")])
    assert many[0].idempotency_key.startswith("auto-") and many[1].idempotency_key == "own"
    assert len({r.idempotency_key, many[0].idempotency_key}) == 2
    # The generated key dedupes like any other: resending it names the stored job.
    again = client.enqueue("auto", b"x", idempotency_key=r.idempotency_key)
    assert again.duplicate and again.job_id == r.job_id


def test_run_at_delay_and_naive_datetimes(client: Client) -> None:
    at = datetime.now(UTC).replace(microsecond=123456) + timedelta(hours=1)
    job = client.get(client.enqueue("later", b"x", run_at=at).job_id)
    assert job.run_at == at
    job = client.get(client.enqueue("later", b"x", delay=timedelta(minutes=5)).job_id)
    assert job.run_at > datetime.now(UTC) + timedelta(minutes=4)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.enqueue("later", b"x", run_at=datetime.now() + timedelta(hours=1))
    with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
        client.enqueue("later", b"x", delay=1, run_at=at)
    assert client.stats("later")[0].scheduled == 2


def test_enqueue_many_splits_into_calls_of_1000(client: Client) -> None:
    specs: list[Any] = [{"queue": "bulk", "payload": str(i).encode()} for i in range(1200)]
    specs += [JobSpec("bulk", str(i).encode(), priority=1) for i in range(1200, 2400)]
    specs += [pb.JobSpec(queue="bulk", payload=str(i).encode()) for i in range(2400, 2500)]
    results = client.enqueue_many(iter(specs))
    assert len(results) == 2500 and len({r.job_id for r in results}) == 2500
    txids = [r.txid for r in results]
    assert len(set(txids[:1000])) == len(set(txids[1000:2000])) == len(set(txids[2000:])) == 1
    assert txids[0] < txids[1000] < txids[2000] == client.last_txid
    assert client.get(results[1500].job_id).payload == b"1500"
    assert client.get(results[1500].job_id).priority == 1
    assert client.enqueue_many([]) == []
    with pytest.raises(TypeError):
        client.enqueue_many([{"queue": "bulk", "bogus": 1}])
    assert client.stats("bulk")[0].pending == 2500


def test_list_pages_and_filters(client: Client) -> None:
    ids = [r.job_id for r in client.enqueue_many([JobSpec("lq", bytes([i])) for i in range(5)])]
    client.enqueue("other", b"-")
    assert [j.id for j in client.list("lq", page_size=2)] == ids
    client.cancel(ids[1])
    assert [j.id for j in client.list("lq", state=JobState.PENDING, page_size=2)] == ids[:1] + ids[2:]
    assert [j.id for j in client.list("lq", state="cancelled")] == [ids[1]]
    assert [j.queue for j in client.list()] == ["lq"] * 5 + ["other"]
    assert list(client.list("empty")) == []
    keyed = client.enqueue("lq", b"k", idempotency_key="invoice-77").job_id
    assert [j.id for j in client.list(search="invoice-7")] == [keyed]
    assert [j.id for j in client.list("lq", search=ids[3])] == [ids[3]]


def test_bulk_retry_and_cancel_by_queue_state_and_creation_time(client: Client) -> None:
    ids = [r.job_id for r in client.enqueue_many([JobSpec("bk", bytes([i])) for i in range(4)])]
    ids += [r.job_id for r in client.enqueue_many([JobSpec("bk", bytes([i])) for i in range(4, 7)])]  # later
    client.enqueue("bk-other", b"-")
    assert client.cancel_jobs("bk", batch=3) == 7  # three calls: 3 + 3 + 1
    assert {client.get(i).state for i in ids} == {JobState.CANCELLED}
    cut = client.get(ids[4]).created_at
    later = [i for i in ids if client.get(i).created_at >= cut]
    assert later == ids[4:]  # the second call's three
    assert client.retry_jobs("bk", "cancelled", created_after=cut) == len(later)
    assert {i for i in ids if client.get(i).state is JobState.PENDING} == set(later)
    assert client.retry_jobs("bk", state=JobState.CANCELLED, created_before=cut) == len(ids) - len(later)
    assert {client.get(i).state for i in ids} == {JobState.PENDING}
    assert client.retry_jobs("bk") == 0  # nothing FAILED
    assert client.stats("bk-other")[0].pending == 1


def test_unique_jobs_return_the_active_job_until_it_finishes(client: Client) -> None:
    first = client.enqueue("uq", b"v1", unique_key="sync-user-7")
    again = client.enqueue("uq", b"v2", unique_key="sync-user-7")
    assert (again.job_id, again.duplicate) == (first.job_id, True)
    assert client.get(first.job_id).unique_key == "sync-user-7"
    # "pending" uniqueness: a RUNNING holder does not block the next one.
    (leased,) = next(iter(client.lease_stream(["uq"], max_in_flight=1))).jobs
    assert leased.job.id == first.job_id
    blocked = client.enqueue("uq", b"v3", unique_key="sync-user-7")
    assert blocked.job_id == first.job_id  # ACTIVE (the default): running blocks
    queued = client.enqueue("uq", b"v4", unique_key="sync-user-7", uniqueness=Uniqueness.PENDING)
    assert not queued.duplicate
    assert client.enqueue_many([JobSpec("uq", b"v5", unique_key="sync-user-7", uniqueness="pending")])[0].job_id == (
        queued.job_id
    )
    client.ack([leased.lease_token])
    assert client.enqueue("uq", b"v6", unique_key="sync-user-7").job_id == queued.job_id  # the pending one


def test_rate_limit_from_the_client_shows_in_stats(client: Client) -> None:
    client.set_rate_limit("rlq", 120, per=60)
    client.enqueue("rlq", b"x")
    (stats,) = client.stats("rlq")
    assert (stats.rate_limit_jobs, stats.rate_limit_period, stats.rate_limited) == (120, 60.0, False)
    client.set_rate_limit("rlq", 0)
    assert client.stats("rlq")[0].rate_limit_jobs == 0
    with pytest.raises(InvalidArgumentError) as err:
        client.set_rate_limit("rlq", 5, per=0.0001)
    assert err.value.field == "period"


def test_concurrency_key_from_the_client(client: Client) -> None:
    first = client.enqueue("ckq", b"1", concurrency_key="tenant-1")
    client.enqueue_many([JobSpec("ckq", b"2", concurrency_key="tenant-1", concurrency_limit=1)])
    job = client.get(first.job_id)
    assert (job.concurrency_key, job.concurrency_limit) == ("tenant-1", 1)
    (msg,) = [next(iter(client.lease_stream(["ckq"], max_in_flight=5)))]
    assert [j.job.id for j in msg.jobs] == [first.job_id]  # the key's second waits


def test_fair_groups_from_the_client(client: Client) -> None:
    first = client.enqueue("gq", b"1", group="tenant-a")
    client.enqueue_many([JobSpec("gq", b"2", group="tenant-a"), JobSpec("gq", b"3", group="tenant-b")])
    client.enqueue("gq", b"4")  # the default group
    assert client.get(first.job_id).group == "tenant-a"
    assert client.get(client.enqueue("gq-plain", b"-").job_id).group is None
    client.set_group_weight("gq", "tenant-b", 5)
    groups = {g.group: (g.weight, g.pending, g.running) for g in client.list_groups("gq")}
    assert groups == {"": (1, 1, 0), "tenant-a": (1, 2, 0), "tenant-b": (5, 1, 0)}
    assert client.stats("gq")[0].groups == 3
    with pytest.raises(InvalidArgumentError) as err:
        client.enqueue("gq", b"x", group="bad\x01group")
    assert err.value.field == "jobs[0].group"
    with pytest.raises(InvalidArgumentError) as weight:
        client.set_group_weight("gq", "tenant-b", 1001)
    assert weight.value.field == "weight"


def test_list_groups_reads_every_page(client: Client) -> None:
    client.enqueue_many([JobSpec("gpages", b"x", group=f"g{i:03d}") for i in range(150)])  # 100 a page
    assert [g.group for g in client.list_groups("gpages")] == [f"g{i:03d}" for i in range(150)]


def test_schedules_from_the_client(client: Client) -> None:
    sch = client.upsert_schedule("digest", "sq", "0 8 * * 1-5", b"{}", time_zone="America/New_York",
                                 overlap="skip", missed="run_once", headers={"k": "v"})
    assert (sch.name, sch.queue, sch.time_zone, sch.overlap, sch.missed) == (
        "digest", "sq", "America/New_York", pb.OVERLAP_POLICY_SKIP, pb.MISSED_TICKS_RUN_ONCE
    )
    assert sch.HasField("next_run_at") and dict(sch.template.headers) == {"k": "v"}
    assert [s.name for s in client.schedules()] == ["digest"]
    assert client.pause_schedule("digest").paused
    assert not client.resume_schedule("digest").paused
    with pytest.raises(InvalidArgumentError) as err:
        client.upsert_schedule("bad", "sq", "not cron")
    assert err.value.field == "schedule.cron"
    assert client.delete_schedule("digest") and client.schedules() == []


def test_stats_pause_and_resume(client: Client) -> None:
    client.enqueue("a", b"1")
    client.enqueue("a", b"2")
    client.enqueue("b", b"3", delay=60)
    a, b = client.stats("a", "b")
    assert (a.queue, a.pending, a.scheduled, a.paused) == ("a", 2, 0, False)
    assert (b.queue, b.pending, b.scheduled) == ("b", 0, 1)
    assert a.oldest_pending_age >= 0 and b.oldest_pending_age == 0
    assert [s.queue for s in client.stats()] == ["a", "b"]
    client.pause("a")
    assert client.stats("a")[0].paused
    client.resume("a")
    assert not client.stats("a")[0].paused


def test_cancel_and_retry(client: Client) -> None:
    job_id = client.enqueue("c", b"x").job_id
    cancelled = client.cancel(job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.completed_at is not None
    # Both are idempotent (a retried call gets the same answer): the job comes back unchanged.
    assert client.cancel(job_id) == cancelled
    redriven = client.retry(job_id)
    assert redriven.state is JobState.PENDING and redriven.attempts == 0
    assert client.retry(job_id) == redriven


def test_lease_ack_nack_heartbeat(client: Client) -> None:
    first, second, third = (r.job_id for r in client.enqueue_many([JobSpec("lease", b"%d" % i) for i in range(3)]))
    stream = client.lease_stream(["lease"], worker_id="w-1", max_in_flight=3, lease_duration=30)
    leased: list[pb.LeasedJob] = []
    try:
        for msg in stream:
            leased.extend(msg.jobs)
            if len(leased) >= 3:
                break
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves cancel() untyped
    tokens = {lj.job.id: lj.lease_token for lj in leased}
    running = client.get(first)
    assert running.state is JobState.RUNNING and running.worker_id == "w-1" and running.attempts == 1
    assert running.lease_expires_at is not None and running.started_at is not None

    assert client.heartbeat(tokens.values(), extend_by=60) == [LeaseOutcome.OK] * 3
    assert client.get(first).lease_expires_at > running.lease_expires_at  # type: ignore[operator]
    assert client.ack([(tokens[first], b"done")]) == [LeaseOutcome.OK]
    assert client.ack([tokens[first]]) == [LeaseOutcome.OK]  # a repeated Ack replays its outcome
    assert client.heartbeat([tokens[first]]) == [LeaseOutcome.STALE]
    with pytest.raises(FailedPreconditionError) as err:
        client.cancel(first)
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION and err.value.reason == "JOB_NOT_CANCELLABLE"
    assert client.nack([tokens[second]], error_message="bad", terminal=True) == [LeaseOutcome.OK]
    assert client.nack([tokens[third]], error_message="later", retry_delay=120) == [LeaseOutcome.OK]

    done = client.get(first)
    assert done.state is JobState.COMPLETED and done.result == b"done" and done.completed_at is not None
    failed = client.get(second)
    assert failed.state is JobState.FAILED and failed.error_message == "bad"
    retried = client.get(third)
    assert retried.state is JobState.PENDING and retried.error_message == "later"
    assert retried.run_at > datetime.now(UTC) + timedelta(seconds=100)
    assert client.ack(["not-a-token"]) == [LeaseOutcome.INVALID]  # that item only


def test_error_mapping(client: Client) -> None:
    with pytest.raises(NotFoundError) as not_found:
        client.get(UNKNOWN_ID)
    assert not_found.value.code is grpc.StatusCode.NOT_FOUND and UNKNOWN_ID in not_found.value.details
    assert isinstance(not_found.value, EdgeqError) and str(not_found.value).startswith("NOT_FOUND: ")
    with pytest.raises(InvalidArgumentError) as bad_queue:
        client.enqueue("bad queue!", b"x")
    assert "queue" in bad_queue.value.details
    assert (bad_queue.value.reason, bad_queue.value.field) == ("INVALID_FIELD", "jobs[0].queue")
    assert not_found.value.reason == "JOB_NOT_FOUND" and not_found.value.field == ""
    with pytest.raises(InvalidArgumentError, match="job_id"):
        client.get("not-a-uuid")
    with pytest.raises(ResourceExhaustedError, match="payload") as big:
        client.enqueue("big", b"x" * (1024 * 1024 + 1))
    assert (big.value.reason, big.value.field) == ("LIMIT_EXCEEDED", "jobs[0].payload")
    with pytest.raises(NotFoundError):
        client.cancel(UNKNOWN_ID)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unavailable_after_retries() -> None:
    with Client(f"127.0.0.1:{_closed_port()}", timeout=5) as c:
        t0 = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            c.stats()
        assert err.value.code is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 5


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Records every unary request sent through the channel."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.requests.append(request)
        return continuation(details, request)


@pytest.mark.parametrize("session", [False, True])
def test_session_consistency_sends_min_txid(server: ServerThread, session: bool) -> None:
    rec = _Recorder()
    with grpc.insecure_channel(server.target) as ch:
        c = Client(channel=grpc.intercept_channel(ch, rec), session_consistency=session)
        job_id = c.enqueue("s", b"x").job_id
        c.enqueue("s", b"y")
        c.get(job_id)
        list(c.list("s"))
        c.stats("s")
        c.close()  # a passed-in channel stays open
        reads = [r for r in rec.requests if hasattr(r, "min_txid")]
        assert len(reads) == 3
        expected = c.last_txid if session else 0
        assert c.last_txid > 0 and all(r.min_txid == expected for r in reads)
        assert Client(channel=ch).stats("s")[0].pending == 2


def test_min_txid_ahead_of_server_is_unavailable(client: Client) -> None:
    c = Client(client.target, session_consistency=True, timeout=5)
    with c:
        c._txid = 10**9  # a write this node never saw
        with pytest.raises(UnavailableError, match="min_txid"):
            c.stats()


def test_bearer_token(tmp_path: Path) -> None:
    st = ServerThread(str(tmp_path / "auth.db"), auth_token="s3cret")
    try:
        st.start()
        with Client(st.target, token="s3cret") as c:
            assert c.enqueue("t", b"x").job_id
        with Client(st.target) as c, pytest.raises(UnauthenticatedError):
            c.enqueue("t", b"x")
    finally:
        st.close()


def test_durability_client_default_and_per_call(server: ServerThread) -> None:
    from edgeq import Durability, FailedPreconditionError

    assert JobState("accepted").to_proto() == pb.JOB_STATE_ACCEPTED
    assert JobState.from_proto(pb.JOB_STATE_ACCEPTED) is JobState.ACCEPTED
    with Client(server.target, timeout=5, durability="replicated") as c:
        assert c.durability is Durability.REPLICATED
        # A standalone server has no replicas: the client's default is refused, naming it...
        with pytest.raises(FailedPreconditionError, match="durability"):
            c.enqueue("d", b"x")
        # ...and a call may choose another level (edge is local on a standalone server).
        r = c.enqueue("d", b"x", durability=Durability.EDGE)
        assert not r.accepted_at_edge and not r.buffered and r.txid > 0
        [m] = c.enqueue_many([{"queue": "d", "payload": b"y"}], durability="local")
        assert m.txid > 0 and c.get(m.job_id).state is JobState.PENDING
        assert c.stats("d")[0].accepted == 0
        info = c.node_info()
        assert info.edge_log_jobs == 0 and info.edge_log_capacity_bytes == 0
    with pytest.raises(ValueError):
        Client(server.target, durability="sometimes")
