"""End to end over a real gRPC channel: every RPC of edgeq.v1.QueueService, the push
Lease stream, fencing, timers driven by a ManualClock, health, reflection, drain and
restart. Time moves only with ``clock.advance``; every wait is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.e2e_fixtures import SERVICE, TIMEOUT, Harness, dur, maintenance_waiting, rpc_error, stop_maintenance

from edgeq.v1 import queue_pb2 as pb

OK, STALE, INVALID = pb.LEASE_OUTCOME_OK, pb.LEASE_OUTCOME_STALE, pb.LEASE_OUTCOME_INVALID
PENDING, RUNNING, COMPLETED = pb.JOB_STATE_PENDING, pb.JOB_STATE_RUNNING, pb.JOB_STATE_COMPLETED
FAILED, CANCELLED = pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED
DEFAULT_LEASE = 30


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path) as harness:
        yield harness


SECOND = 1_000_000


def us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def forge(token: str) -> str:
    """The same token with the last hex digit of its MAC changed."""
    return token[:-1] + ("0" if token[-1] != "0" else "1")


# ---------------------------------------------------------------------- Enqueue


async def test_enqueue_single_and_batch_ids_in_order_txid_increases(h: Harness) -> None:
    one = await h.enqueue(pb.JobSpec(queue="q", payload=b"solo", priority=3, headers={"trace": "t1"}))
    assert len(one.results) == 1 and not one.results[0].duplicate
    job = await h.job(one.results[0].job_id)
    assert (job.queue, job.payload, job.state, job.priority) == ("q", b"solo", PENDING, 3)
    assert (job.attempts, job.max_attempts) == (0, 3)  # 0 => server default 3
    assert dict(job.headers) == {"trace": "t1"}
    assert us(job.created_at) == us(job.run_at) == h.clock.now()

    batch = await h.enqueue(*(pb.JobSpec(queue="q", payload=str(i).encode(), max_attempts=7) for i in range(5)))
    assert batch.txid > one.txid
    ids = [r.job_id for r in batch.results]
    assert len(set(ids)) == 5 and not any(r.duplicate for r in batch.results)
    for i, job_id in enumerate(ids):  # results in request order
        job = await h.job(job_id)
        assert (job.payload, job.max_attempts) == (str(i).encode(), 7)
    listed = [j.id for j in await h.all_jobs(queue="q")]
    assert listed == [one.results[0].job_id, *ids]  # enqueue order
    third = await h.enqueue(pb.JobSpec(queue="other"))
    assert third.txid > batch.txid


async def test_idempotency_repeat_and_inside_one_batch(h: Harness) -> None:
    first = await h.enqueue(pb.JobSpec(queue="q", payload=b"a", idempotency_key="k1"))
    again = await h.enqueue(pb.JobSpec(queue="q", payload=b"different", idempotency_key="k1"))
    assert again.results[0].job_id == first.results[0].job_id
    assert (first.results[0].duplicate, again.results[0].duplicate) == (False, True)
    assert (await h.job(first.results[0].job_id)).payload == b"a"  # the first job is kept

    batch = await h.enqueue(
        pb.JobSpec(queue="q", idempotency_key="k2"),
        pb.JobSpec(queue="q", idempotency_key="k2"),
        pb.JobSpec(queue="other", idempotency_key="k2"),  # keys are per queue
        pb.JobSpec(queue="q", idempotency_key="k1"),
    )
    r = batch.results
    assert [x.duplicate for x in r] == [False, True, False, True]
    assert r[0].job_id == r[1].job_id != r[2].job_id
    assert r[3].job_id == first.results[0].job_id
    assert len(await h.all_jobs()) == 3
    assert (await h.job(r[0].job_id)).idempotency_key == "k2"


async def test_delay_is_not_delivered_until_the_clock_passes_it(h: Harness) -> None:
    call = await h.lease("q", max_in_flight=5)
    job_id = await h.put(delay=dur(10))
    job = await h.job(job_id)
    assert job.state == PENDING and us(job.run_at) == h.clock.now() + 10_000_000
    assert (await h.stats("q"))["q"].scheduled == 1
    await h.idle(call)
    h.clock.advance(5)
    await h.idle(call)
    h.clock.advance(6)  # no request: the maintenance timer pushes it
    (leased,) = await h.take(call, 1)
    assert leased.job.id == job_id and leased.job.state == RUNNING and leased.job.attempts == 1


async def test_run_at_is_not_delivered_until_the_clock_passes_it(h: Harness) -> None:
    call = await h.lease("q")
    at = timestamp_pb2.Timestamp()
    at.FromMicroseconds(h.clock.now() + 60_000_000)
    job_id = await h.put(run_at=at)
    assert us((await h.job(job_id)).run_at) == us(at)
    await h.idle(call)
    h.clock.advance(61)
    (leased,) = await h.take(call, 1)
    assert leased.job.id == job_id
    # A run_at in the past means "now".
    past = timestamp_pb2.Timestamp()
    past.FromMicroseconds(h.clock.now() - 3_600_000_000)
    early = await h.put(queue="p", run_at=past)
    assert us((await h.job(early)).run_at) == h.clock.now()


# ---------------------------------------------------------------------- Lease


async def test_lease_pushes_on_enqueue(h: Harness) -> None:
    call = await h.lease("q", worker_id="worker-7", lease_seconds=45)
    await h.idle(call)  # the stream is open and empty
    job_id = await h.put(payload=b"hello")
    (leased,) = await h.take(call, 1)
    j = leased.job
    assert (j.id, j.payload, j.state, j.attempts, j.worker_id) == (job_id, b"hello", RUNNING, 1, "worker-7")
    assert us(leased.lease_expires_at) == us(j.lease_expires_at) == h.clock.now() + 45_000_000
    assert leased.lease_token
    stored = await h.job(job_id)
    assert (stored.state, stored.worker_id, stored.attempts) == (RUNNING, "worker-7", 1)


async def test_lease_order_priority_then_run_at_then_enqueue_order(h: Harness) -> None:
    late = await h.put(payload=b"late", priority=1, delay=dur(2))  # run_at now+2
    early = await h.put(payload=b"early", priority=1)  # run_at now
    low1 = await h.put(payload=b"low1")
    low2 = await h.put(payload=b"low2")
    high = await h.put(payload=b"high", priority=10)
    other = await h.put(queue="r", payload=b"other", priority=5)
    h.clock.advance(3)
    call = await h.lease("q", "r", max_in_flight=10)
    msg = await h.read(call)
    if not msg.jobs:  # a keepalive, if the machine is very slow
        msg = await h.read(call)
    # Several jobs arrive in one message, in claim order.
    assert [j.job.id for j in msg.jobs] == [high, other, early, late, low1, low2]


async def test_max_in_flight_is_never_exceeded(h: Harness) -> None:
    call = await h.lease("q", max_in_flight=2)
    ids = [r.job_id for r in (await h.enqueue(*(pb.JobSpec(queue="q") for _ in range(5)))).results]
    got = await h.take(call, 2)
    await h.idle(call)  # nothing more while 2 are unsettled
    assert (await h.stats("q"))["q"].running == 2
    assert await h.ack(got[0].lease_token) == [OK]
    (third,) = await h.take(call, 1)
    await h.idle(call)
    assert await h.ack(got[1].lease_token, third.lease_token) == [OK, OK]
    rest = await h.take(call, 2)
    await h.idle(call)
    assert await h.ack(*(j.lease_token for j in rest)) == [OK, OK]
    assert [j.job.id for j in (*got, third, *rest)] == ids
    assert (await h.stats("q"))["q"].completed == 5


async def test_keepalive_arrives_when_idle(h: Harness) -> None:
    call = await h.lease("q")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):
        msg = await h.read(call)
        assert msg == pb.LeaseResponse()
    assert loop.time() - started < TIMEOUT


async def test_two_streams_share_work_and_no_job_goes_to_both(h: Harness) -> None:
    a = await h.lease("q", max_in_flight=3, worker_id="a")
    b = await h.lease("q", max_in_flight=3, worker_id="b")
    ids = {r.job_id for r in (await h.enqueue(*(pb.JobSpec(queue="q") for _ in range(6)))).results}
    got_a, got_b = await asyncio.gather(h.take(a, 3), h.take(b, 3))
    ids_a, ids_b = {j.job.id for j in got_a}, {j.job.id for j in got_b}
    assert not ids_a & ids_b and ids_a | ids_b == ids
    assert {j.job.worker_id for j in got_a} == {"a"} and {j.job.worker_id for j in got_b} == {"b"}
    await asyncio.gather(h.idle(a), h.idle(b))
    # More work after settling: still split, never duplicated.
    more = {r.job_id for r in (await h.enqueue(*(pb.JobSpec(queue="q") for _ in range(4)))).results}
    assert await h.ack(*(j.lease_token for j in got_a)) == [OK] * 3
    assert await h.ack(*(j.lease_token for j in got_b[:1])) == [OK]
    next_a, next_b = await asyncio.gather(h.take(a, 3), h.take(b, 1))
    assert {j.job.id for j in next_a} | {j.job.id for j in next_b} == more
    assert len(more) == 4
    stats = (await h.stats("q"))["q"]
    assert (stats.running, stats.pending, stats.completed) == (6, 0, 4)


async def test_paused_queue_delivers_nothing_until_resumed(h: Harness) -> None:
    paused = await h.stub.PauseQueue(pb.PauseQueueRequest(queue="q"))
    assert paused.txid > 0
    call = await h.lease("q")
    job_id = await h.put()  # enqueues are still accepted
    await h.idle(call)
    st = (await h.stats("q"))["q"]
    assert st.paused and st.pending == 1
    assert (await h.job(job_id)).state == PENDING
    resumed = await h.stub.ResumeQueue(pb.ResumeQueueRequest(queue="q"))
    assert resumed.txid > paused.txid
    (leased,) = await h.take(call, 1)
    assert leased.job.id == job_id
    assert not (await h.stats("q"))["q"].paused
    # Pausing a queue that has never been seen is fine and creates it.
    await h.stub.PauseQueue(pb.PauseQueueRequest(queue="fresh"))
    assert (await h.stats())["fresh"].paused


# ---------------------------------------------------------------------- Ack / Nack / Heartbeat


async def test_ack_with_result_is_visible(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    h.clock.advance(2)
    resp = await h.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token, result=b"42")]))
    assert list(resp.outcomes) == [OK] and resp.txid > 0
    job = (await h.stub.GetJob(pb.GetJobRequest(job_id=job_id, min_txid=resp.txid))).job
    assert (job.state, job.result, job.attempts) == (COMPLETED, b"42", 1)
    assert us(job.completed_at) == h.clock.now()
    assert not job.HasField("lease_expires_at")
    # Settling twice (a retry whose first reply was lost): OK again, and changes nothing.
    assert await h.ack(leased.lease_token, result=b"other") == [OK]
    assert (await h.job(job_id)).result == b"42"


async def test_nack_with_retry_delay_returns_to_pending_later(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    now = h.clock.now()
    resp = await h.stub.Nack(
        pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token, error_message="boom", retry_delay=dur(30))])
    )
    assert list(resp.outcomes) == [OK]
    job = await h.job(job_id)
    assert (job.state, job.error_message, job.attempts) == (PENDING, "boom", 1)
    assert us(job.run_at) == now + 30_000_000
    await h.idle(call)  # not before the delay
    h.clock.advance(31)
    (again,) = await h.take(call, 1)
    assert again.job.id == job_id and again.job.attempts == 2 and again.lease_token != leased.lease_token


async def test_nack_without_delay_uses_backoff(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    now = h.clock.now()
    resp = await h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token)]))
    assert list(resp.outcomes) == [OK]
    job = await h.job(job_id)
    assert job.state == PENDING and us(job.run_at) > now  # backoff, not immediate


async def test_nack_terminal_fails_now(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put(max_attempts=10)
    (leased,) = await h.take(call, 1)
    resp = await h.stub.Nack(
        pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token, error_message="bad input", terminal=True)])
    )
    assert list(resp.outcomes) == [OK]
    job = await h.job(job_id)
    assert (job.state, job.error_message, job.attempts) == (FAILED, "bad input", 1)
    assert us(job.completed_at) == h.clock.now()
    await h.idle(call)


async def test_nack_with_attempts_exhausted_fails(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put(max_attempts=2)
    (first,) = await h.take(call, 1)
    nack = pb.NackRequest(items=[pb.NackItem(lease_token=first.lease_token, error_message="e1", retry_delay=dur(1))])
    assert list((await h.stub.Nack(nack)).outcomes) == [OK]
    h.clock.advance(1)
    (second,) = await h.take(call, 1)
    assert second.job.attempts == 2
    nack = pb.NackRequest(items=[pb.NackItem(lease_token=second.lease_token, error_message="e2", retry_delay=dur(1))])
    assert list((await h.stub.Nack(nack)).outcomes) == [OK]
    job = await h.job(job_id)
    assert (job.state, job.error_message, job.attempts) == (FAILED, "e2", 2)
    h.clock.advance(2)
    await h.idle(call)


async def test_heartbeat_extends_the_lease_past_its_original_expiry(h: Harness) -> None:
    call = await h.lease("q", lease_seconds=10)
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    original = us(leased.lease_expires_at)
    h.clock.advance(5)
    resp = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[leased.lease_token], extend_by=dur(20)))
    assert list(resp.outcomes) == [OK]
    extended = us(resp.lease_expires_at[0])
    assert extended == h.clock.now() + 20_000_000 == original + 15_000_000
    assert us((await h.job(job_id)).lease_expires_at) == extended

    h.clock.advance(10)  # past the original expiry, within the extended one
    await h.server.maintenance.run_once(h.clock.now())  # type: ignore[union-attr]
    job = await h.job(job_id)
    assert (job.state, job.attempts) == (RUNNING, 1)
    await h.idle(call)  # not redelivered

    # extend_by 0 => the lease's own duration (10 s).
    resp = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[leased.lease_token]))
    assert list(resp.outcomes) == [OK] and us(resp.lease_expires_at[0]) == h.clock.now() + 10_000_000
    assert await h.ack(leased.lease_token) == [OK]


async def test_heartbeat_that_shortens_a_lease_expires_at_the_new_time(h: Harness) -> None:
    call = await h.lease("q", lease_seconds=3600)
    job_id = await h.put(max_attempts=5)
    (leased,) = await h.take(call, 1)
    resp = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[leased.lease_token], extend_by=dur(10)))
    assert list(resp.outcomes) == [OK] and us(resp.lease_expires_at[0]) == h.clock.now() + 10_000_000
    h.clock.advance(11)
    assert await h.ack(leased.lease_token) == [STALE]  # the lease is over...
    assert h.server.maintenance is not None
    await h.server.maintenance.run_once(h.clock.now())
    job = await h.job(job_id)
    assert (job.state, job.attempts) != (RUNNING, 1), "...but the job is still held by the lapsed lease"
    (again,) = await h.take(call, 1)
    assert again.job.id == job_id and again.job.attempts == 2


# ---------------------------------------------------------------------- fencing


async def test_expired_lease_is_redelivered_and_the_old_token_is_stale(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put(max_attempts=5)
    (first,) = await h.take(call, 1)
    h.clock.advance(DEFAULT_LEASE + 1)
    (second,) = await h.take(call, 1)  # pushed again without any request
    assert second.job.id == job_id and second.job.attempts == 2
    assert second.lease_token != first.lease_token
    before = await h.job(job_id)
    assert "lease expired" in before.error_message

    old = first.lease_token
    assert await h.ack(old, result=b"stale") == [STALE]
    nack = await h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=old, terminal=True)]))
    assert list(nack.outcomes) == [STALE]
    hb = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[old], extend_by=dur(3600)))
    assert list(hb.outcomes) == [STALE] and us(hb.lease_expires_at[0]) == 0
    after = await h.job(job_id)
    assert after == before  # nothing changed

    # Mixed batch: per-item outcomes, in order.
    forged = forge(second.lease_token)
    hb = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[old, second.lease_token, forged]))
    assert list(hb.outcomes) == [STALE, OK, INVALID]
    assert await h.ack(second.lease_token, result=b"done") == [OK]
    assert (await h.job(job_id)).result == b"done"


async def test_forged_mac_is_invalid_and_changes_nothing(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    forged = forge(leased.lease_token)
    before = await h.job(job_id)
    assert await h.ack(forged) == [INVALID]
    nack = await h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=forged, terminal=True)]))
    assert list(nack.outcomes) == [INVALID]
    hb = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[forged]))
    assert list(hb.outcomes) == [INVALID]
    assert await h.job(job_id) == before
    assert await h.ack(leased.lease_token) == [OK]


async def test_lease_expiry_with_attempts_exhausted_fails_the_job(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put(max_attempts=1)
    (leased,) = await h.take(call, 1)
    h.clock.advance(DEFAULT_LEASE + 1)
    job = await h.until_state(job_id, FAILED)
    assert "lease" in job.error_message and "expired" in job.error_message
    assert job.attempts == 1 and not job.HasField("lease_expires_at")
    assert await h.ack(leased.lease_token) == [STALE]
    await h.idle(call)
    st = (await h.stats("q"))["q"]
    assert (st.failed, st.running, st.pending) == (1, 0, 0)


# ---------------------------------------------------------------------- reads


async def test_get_job_unknown_is_not_found(h: Harness) -> None:
    err = await rpc_error(h.stub.GetJob(pb.GetJobRequest(job_id="01890a5d-ac96-774b-bcce-b302099a8057")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "01890a5d-ac96-774b-bcce-b302099a8057" in (err.details() or "")


async def test_list_jobs_filters_by_queue_and_state(h: Harness) -> None:
    a = [await h.put(queue="a") for _ in range(3)]
    b = [await h.put(queue="b") for _ in range(2)]
    call = await h.lease("a")
    (leased,) = await h.take(call, 1)
    assert leased.job.id == a[0]
    assert [j.id for j in await h.all_jobs()] == a + b
    assert [j.id for j in await h.all_jobs(queue="b")] == b
    assert [j.id for j in await h.all_jobs(queue="a", state=PENDING)] == a[1:]
    assert [j.id for j in await h.all_jobs(state=RUNNING)] == a[:1]
    assert [j.id for j in await h.all_jobs(state=PENDING)] == a[1:] + b
    assert await h.all_jobs(queue="b", state=RUNNING) == []
    assert await h.all_jobs(queue="nobody") == []


async def test_list_jobs_pages_through_250_jobs(h: Harness) -> None:
    ids = []
    for chunk in range(3):
        n = 100 if chunk < 2 else 50
        resp = await h.enqueue(*(pb.JobSpec(queue="page", payload=str(i).encode()) for i in range(n)))
        ids.extend(r.job_id for r in resp.results)
    await h.put(queue="elsewhere")
    sizes, seen, token = [], [], ""
    while True:
        resp = await h.stub.ListJobs(pb.ListJobsRequest(queue="page", page_size=100, page_token=token))
        sizes.append(len(resp.jobs))
        seen.extend(j.id for j in resp.jobs)
        token = resp.next_page_token
        if not token:
            break
    assert sizes == [100, 100, 50]
    assert seen == ids and len(set(seen)) == 250
    # page_size 0 means 100
    assert len((await h.stub.ListJobs(pb.ListJobsRequest(queue="page"))).jobs) == 100


async def test_get_queue_stats_counts_every_state(h: Harness) -> None:
    done, failed, running = (await h.enqueue(*(pb.JobSpec(queue="s") for _ in range(3)))).results
    call = await h.lease("s", max_in_flight=3)
    leased = {j.job.id: j.lease_token for j in await h.take(call, 3)}
    await h.stub.PauseQueue(pb.PauseQueueRequest(queue="s"))  # nothing more is delivered
    assert await h.ack(leased[done.job_id]) == [OK]
    await h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=leased[failed.job_id], terminal=True)]))
    t0 = h.clock.now()
    ready = await h.put(queue="s")
    cancelled = await h.put(queue="s")
    await h.put(queue="s", delay=dur(100))
    await h.stub.CancelJob(pb.CancelJobRequest(job_id=cancelled))
    await h.put(queue="other")
    h.clock.advance(5)

    stats = await h.stats()
    assert sorted(stats) == ["other", "s"]  # all known queues, sorted
    s = stats["s"]
    assert (s.pending, s.scheduled, s.running, s.completed, s.failed, s.cancelled) == (1, 1, 1, 1, 1, 1)
    assert s.paused
    assert s.oldest_pending_age.ToMicroseconds() == h.clock.now() - t0 == 5_000_000
    assert (await h.job(ready)).state == PENDING and (await h.job(running.job_id)).state == RUNNING
    o = stats["other"]
    assert (o.pending, o.scheduled, o.running, o.paused) == (1, 0, 0, False)
    # Named queues only; a never-seen queue is all zeros.
    only = await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["unknown", "other"]))
    assert [x.queue for x in only.stats] == ["other", "unknown"]
    assert only.stats[1] == pb.QueueStats(queue="unknown", oldest_pending_age=dur(0))


# ---------------------------------------------------------------------- admin


async def test_cancel_pending_and_running_jobs(h: Harness) -> None:
    call = await h.lease("q")
    running = await h.put()
    (leased,) = await h.take(call, 1)
    pending = await h.put()
    await h.idle(call)

    resp = await h.stub.CancelJob(pb.CancelJobRequest(job_id=pending))
    assert resp.job.state == CANCELLED and resp.txid > 0
    assert us(resp.job.completed_at) == h.clock.now()

    resp = await h.stub.CancelJob(pb.CancelJobRequest(job_id=running))
    assert resp.job.state == CANCELLED and not resp.job.HasField("lease_expires_at")
    assert resp.job.cancel_requested and not (await h.job(pending)).cancel_requested
    assert await h.ack(leased.lease_token) == [STALE]
    # Its worker hears of it at the next heartbeat (stop the handler); the job stays CANCELLED.
    hb = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[leased.lease_token]))
    assert list(hb.outcomes) == [pb.LEASE_OUTCOME_CANCEL_REQUESTED]
    assert (await h.job(running)).state == CANCELLED
    # The cancelled lease returned its credit: the stream takes new work.
    fresh = await h.put()
    (nxt,) = await h.take(call, 1)
    assert nxt.job.id == fresh


async def test_cancel_completed_job_is_failed_precondition(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    await h.ack(leased.lease_token)
    err = await rpc_error(h.stub.CancelJob(pb.CancelJobRequest(job_id=job_id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await h.job(job_id)).state == COMPLETED
    cancelled = await h.put()
    first = await h.stub.CancelJob(pb.CancelJobRequest(job_id=cancelled))
    again = await h.stub.CancelJob(pb.CancelJobRequest(job_id=cancelled))  # a retry: same outcome
    assert again.job == first.job and again.job.state == CANCELLED
    err = await rpc_error(h.stub.CancelJob(pb.CancelJobRequest(job_id="01890a5d-ac96-774b-bcce-b302099a8057")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_retry_failed_job_redelivers_it(h: Harness) -> None:
    call = await h.lease("q")
    job_id = await h.put(max_attempts=1)
    (leased,) = await h.take(call, 1)
    await h.stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token, error_message="x")]))
    assert (await h.job(job_id)).state == FAILED
    await h.idle(call)
    resp = await h.stub.RetryJob(pb.RetryJobRequest(job_id=job_id))
    assert (resp.job.state, resp.job.attempts) == (PENDING, 0) and resp.txid > 0
    (again,) = await h.take(call, 1)
    assert again.job.id == job_id and again.job.attempts == 1
    assert await h.ack(leased.lease_token) == [STALE]  # the old delivery stays fenced
    assert await h.ack(again.lease_token) == [OK]


async def test_retry_cancelled_job_and_illegal_retries(h: Harness) -> None:
    job_id = await h.put()
    call = await h.lease("q")
    await h.take(call, 1)
    err = await rpc_error(h.stub.RetryJob(pb.RetryJobRequest(job_id=job_id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # RUNNING
    assert (await h.job(job_id)).state == RUNNING
    assert (await h.stub.CancelJob(pb.CancelJobRequest(job_id=job_id))).job.cancel_requested
    again = (await h.stub.RetryJob(pb.RetryJobRequest(job_id=job_id))).job
    assert again.state == PENDING and not again.cancel_requested  # a new life
    err = await rpc_error(h.stub.RetryJob(pb.RetryJobRequest(job_id="01890a5d-ac96-774b-bcce-b302099a8057")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_bulk_cancel_and_retry_in_bounded_calls_free_credits_and_redeliver(h: Harness) -> None:
    call = await h.lease("bq", max_in_flight=1)
    first = await h.put("bq")
    (leased,) = await h.take(call, 1)
    queued = [await h.put("bq") for _ in range(4)]
    await h.idle(call)
    sel = pb.JobSelection(queue="bq")
    one = await h.stub.CancelJobs(pb.CancelJobsRequest(selection=sel, limit=3))
    assert (one.count, one.more) == (3, True) and one.txid > 0
    two = await h.stub.CancelJobs(pb.CancelJobsRequest(selection=sel))
    assert (two.count, two.more) == (1, False)
    assert [(await h.job(j)).state for j in queued] == [CANCELLED] * 4
    # RUNNING on request: the lease is stale and the stream's credit comes back.
    running = pb.JobSelection(queue="bq", state=RUNNING)
    assert (await h.stub.CancelJobs(pb.CancelJobsRequest(selection=running))).count == 1
    assert await h.ack(leased.lease_token) == [STALE]
    # RetryJobs of CANCELLED ones: back to PENDING, delivered again on the same stream.
    back = await h.stub.RetryJobs(pb.RetryJobsRequest(selection=pb.JobSelection(queue="bq", state=CANCELLED)))
    assert (back.count, back.more) == (5, False)
    got = [j.job.id for j in await h.take(call, 1)]
    assert got == [first]
    # Nothing FAILED: a count of 0, not an error.
    none = await h.stub.RetryJobs(pb.RetryJobsRequest(selection=pb.JobSelection(queue="bq")))
    assert (none.count, none.more) == (0, False)


async def test_a_schedule_enqueues_each_tick_once_and_a_waiting_worker_gets_it(h: Harness) -> None:
    call = await h.lease("cron-q")
    sch = pb.Schedule(name="nightly", queue="cron-q", cron="* * * * *", time_zone="Europe/Paris",
                      template=pb.JobSpec(payload=b'{"report": true}', priority=5, headers={"kind": "report"}),
                      overlap=pb.OVERLAP_POLICY_SKIP)
    up = await h.stub.UpsertSchedule(pb.UpsertScheduleRequest(schedule=sch))
    next_at = us(up.schedule.next_run_at)
    assert next_at > h.clock.now() and next_at - h.clock.now() <= 60 * SECOND and up.txid > 0
    listed = (await h.stub.ListSchedules(pb.ListSchedulesRequest())).schedules
    assert [(s.name, s.cron, s.time_zone, s.overlap) for s in listed] == [
        ("nightly", "* * * * *", "Europe/Paris", pb.OVERLAP_POLICY_SKIP)
    ]
    h.clock.advance((next_at - h.clock.now()) / SECOND)  # the tick: the timer fires, no request
    (leased,) = await h.take(call, 1)
    assert (leased.job.queue, leased.job.payload, leased.job.priority) == ("cron-q", b'{"report": true}', 5)
    assert leased.job.idempotency_key == f"schedule/nightly/{next_at}" and leased.job.headers["kind"] == "report"
    after = (await h.stub.ListSchedules(pb.ListSchedulesRequest())).schedules[0]
    assert after.last_job_id == leased.job.id and us(after.next_run_at) == next_at + 60 * SECOND
    assert await h.ack(leased.lease_token) == [OK]
    # Paused: no tick runs; resumed: from the next tick after now.
    assert (await h.stub.PauseSchedule(pb.PauseScheduleRequest(name="nightly"))).schedule.paused
    h.clock.advance(180)
    await h.idle(call)
    resumed = (await h.stub.ResumeSchedule(pb.ResumeScheduleRequest(name="nightly"))).schedule
    assert not resumed.paused and us(resumed.next_run_at) > h.clock.now()
    assert (await h.stub.DeleteSchedule(pb.DeleteScheduleRequest(name="nightly"))).deleted
    assert not (await h.stub.DeleteSchedule(pb.DeleteScheduleRequest(name="nightly"))).deleted  # a retry
    err = await rpc_error(h.stub.PauseSchedule(pb.PauseScheduleRequest(name="nightly")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_one_job_per_key_at_a_time_the_next_pushed_when_the_first_is_acked(h: Harness) -> None:
    call = await h.lease("perkey", max_in_flight=10)
    ids = [await h.put("perkey", concurrency_key="customer-9") for _ in range(3)]
    other = await h.put("perkey", concurrency_key="customer-5")
    got = await h.take(call, 2)
    assert [j.job.id for j in got] == [ids[0], other]
    await h.idle(call)  # customer-9's next waits for its first
    assert await h.ack(got[0].lease_token) == [OK]
    (nxt,) = await h.take(call, 1)  # pushed when the lease ended, no new request
    assert nxt.job.id == ids[1] and nxt.job.concurrency_key == "customer-9" and nxt.job.concurrency_limit == 1
    err = await rpc_error(h.stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="perkey", concurrency_limit=2)])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_rate_limited_queue_makes_leases_wait_for_tokens_not_fail(h: Harness) -> None:
    await h.stub.SetRateLimit(pb.SetRateLimitRequest(queue="rl", jobs=2, period=dur(1)))
    call = await h.lease("rl", max_in_flight=10)
    for _ in range(5):
        await h.put("rl")
    got = await h.take(call, 2)  # the burst
    await h.idle(call)  # no token, no job, no error
    (stats,) = (await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["rl"]))).stats
    assert (stats.rate_limit_jobs, us(stats.rate_limit_period), stats.rate_limited) == (2, SECOND, True)
    h.clock.advance(0.5)  # one token comes: the timer pushes one job, no request needed
    got += await h.take(call, 1)
    h.clock.advance(1)
    got += await h.take(call, 2)
    assert len({j.job.id for j in got}) == 5
    await h.stub.SetRateLimit(pb.SetRateLimitRequest(queue="rl"))  # removed
    assert (await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["rl"]))).stats[0].rate_limit_jobs == 0


async def test_a_tenants_few_jobs_are_pushed_between_another_tenants_backlog(h: Harness) -> None:
    await h.enqueue(*[pb.JobSpec(queue="fair", payload=b"a", group="tenant-a") for _ in range(300)])
    small = {(await h.enqueue(pb.JobSpec(queue="fair", payload=b"b", group="tenant-b"))).results[0].job_id
             for _ in range(3)}
    await h.stub.SetGroupWeight(pb.SetGroupWeightRequest(queue="fair", group="tenant-a", weight=2))
    call = await h.lease("fair", max_in_flight=9)
    got = await h.take(call, 9)
    # Weights 2:1 — tenant-b's 3 jobs are among the first 9 pushed, not after 300.
    assert {j.job.id for j in got if j.job.group == "tenant-b"} == small
    assert sum(j.job.group == "tenant-a" for j in got) == 6
    groups = (await h.stub.ListGroups(pb.ListGroupsRequest(queue="fair", page_size=2))).groups
    assert [(g.group, g.weight) for g in groups] == [("tenant-a", 2), ("tenant-b", 1)]  # no idle default group
    (stats,) = (await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["fair"]))).stats
    assert stats.groups == 1 and stats.running == 9


async def test_a_per_key_rate_limit_holds_back_one_customer_and_its_timer_brings_it_back(h: Harness) -> None:
    await h.stub.SetRateLimit(pb.SetRateLimitRequest(queue="kr", jobs=1, period=dur(1), key_header="customer"))
    call = await h.lease("kr", max_in_flight=10)
    ids = [await h.put("kr", headers={"customer": "acme"}) for _ in range(3)]
    other = await h.put("kr", headers={"customer": "globex"})
    got = await h.take(call, 2)  # one of each customer
    assert {j.job.id for j in got} == {ids[0], other}
    await h.idle(call)
    (stats,) = (await h.stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["kr"]))).stats
    assert (stats.key_rate_limit_header, stats.key_rate_limit_jobs, us(stats.key_rate_limit_period)) == (
        "customer", 1, SECOND)
    assert stats.rate_limited  # acme's next jobs wait for its key's token
    h.clock.advance(1)  # acme's next token: the timer pushes its next job, no request needed
    assert [j.job.id for j in await h.take(call, 1)] == [ids[1]]
    await h.stub.SetRateLimit(pb.SetRateLimitRequest(queue="kr", key_header="customer"))  # removed
    assert [j.job.id for j in await h.take(call, 1)] == [ids[2]]


# ---------------------------------------------------------------------- consistency


@pytest.mark.parametrize("rpc", ["GetJob", "ListJobs", "GetQueueStats"])
async def test_min_txid(tmp_path: Path, rpc: str) -> None:
    async with Harness(tmp_path, min_txid_wait_seconds=0.2) as h:
        resp = await h.enqueue(pb.JobSpec(queue="q"))
        job_id, txid = resp.results[0].job_id, resp.txid

        def request(min_txid: int) -> object:
            if rpc == "GetJob":
                return h.stub.GetJob(pb.GetJobRequest(job_id=job_id, min_txid=min_txid))
            if rpc == "ListJobs":
                return h.stub.ListJobs(pb.ListJobsRequest(min_txid=min_txid))
            return h.stub.GetQueueStats(pb.GetQueueStatsRequest(min_txid=min_txid))

        await request(txid)  # type: ignore[misc]
        err = await rpc_error(request(txid + 1_000_000))  # type: ignore[arg-type]
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "min_txid" in (err.details() or "")


# ---------------------------------------------------------------------- retention


async def test_retention_deletes_completed_jobs_and_frees_the_key(tmp_path: Path) -> None:
    async with Harness(tmp_path, retention_completed_seconds=10, retention_interval_seconds=1) as h:
        call = await h.lease("q")
        job_id = await h.put(idempotency_key="once")
        (leased,) = await h.take(call, 1)
        assert await h.ack(leased.lease_token) == [OK]
        keep = await h.put(queue="keep")  # pending jobs are never swept
        h.clock.advance(11)
        assert h.server.maintenance is not None
        await h.server.maintenance.run_once(h.clock.now())
        err = await rpc_error(h.stub.GetJob(pb.GetJobRequest(job_id=job_id)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert (await h.job(keep)).state == PENDING
        resp = await h.enqueue(pb.JobSpec(queue="q", idempotency_key="once"))
        assert not resp.results[0].duplicate and resp.results[0].job_id != job_id


# ---------------------------------------------------------------------- health, reflection


async def test_health_serving(h: Harness) -> None:
    assert h.channel is not None
    health = health_pb2_grpc.HealthStub(h.channel)
    for service in ("", SERVICE, "edgeq.primary", "edgeq.live"):  # a single node applies writes: primary too
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    err = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_service(h: Harness) -> None:
    assert h.channel is not None
    stub = reflection_pb2_grpc.ServerReflectionStub(h.channel)
    call = stub.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
            ]
        )
    )
    responses = [r async for r in call]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    service = next(s for f in files if f.package == "edgeq.v1" for s in f.service)
    assert {m.name for m in service.method} >= {"Enqueue", "Lease", "Ack", "Nack", "GetQueueStats"}


# ---------------------------------------------------------------------- drain, restart


async def test_drain(h: Harness) -> None:
    assert h.channel is not None
    health = health_pb2_grpc.HealthStub(h.channel)
    call = await h.lease("q")
    job_id = await h.put()
    (held,) = await h.take(call, 1)
    srv = h.server
    stopping = asyncio.create_task(srv.stop(drain_seconds=2, grace_seconds=1))

    # The open stream ends with UNAVAILABLE.
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # Health goes NOT_SERVING.
    for service in ("", SERVICE):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # A new Lease is refused.
    err = await rpc_error(h.stub.Lease(pb.LeaseRequest(queues=["q"])).read())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert not stopping.done()  # still draining: a lease is outstanding
    # The held job can still be settled.
    assert await h.ack(held.lease_token, result=b"drained") == [OK]
    await asyncio.wait_for(stopping, TIMEOUT)

    h.srv = None  # already stopped; start again on the same file to check the ack stuck
    await h.restart()
    job = await h.job(job_id)
    assert (job.state, job.result) == (COMPLETED, b"drained")


async def test_restart_keeps_jobs_and_redelivers_a_lapsed_lease(h: Harness) -> None:
    running = await h.put(payload=b"r")
    pending = await h.put(payload=b"p")
    delayed = await h.put(payload=b"d", delay=dur(600))
    call = await h.lease("q")
    (first,) = await h.take(call, 1)
    assert first.job.id == running
    txid = h.txid

    await h.restart()  # new EdgeqServer, same db_path and clock
    assert h.txid >= txid  # txids never go backwards across a restart
    assert (await h.job(running)).state == RUNNING
    assert [j.id for j in await h.all_jobs()] == [running, pending, delayed]

    call = await h.lease("q", max_in_flight=3, lease_seconds=3600)
    (p,) = await h.take(call, 1)
    assert p.job.id == pending
    await h.idle(call)
    h.clock.advance(DEFAULT_LEASE + 1)  # the old server's lease lapses
    (again,) = await h.take(call, 1)
    assert again.job.id == running and again.job.attempts == 2
    assert await h.ack(first.lease_token) == [STALE]  # the token key survived the restart
    h.clock.advance(600)  # the delayed job's timer was reloaded at startup
    (d,) = await h.take(call, 1)
    assert d.job.id == delayed
    assert await h.ack(p.lease_token, again.lease_token, d.lease_token) == [OK, OK, OK]


# ---------------------------------------------------------------------- shutdown race


async def test_maintenance_stop_is_not_lost(h: Harness) -> None:
    """Regression: on Python 3.11 ``asyncio.wait_for`` swallows a cancel that lands in the
    loop iteration where its inner wait completes; the timer used it, so ``stop()`` could
    hang until the next wake-up (up to an hour)."""
    m = h.server.maintenance
    assert m is not None
    await h.until(lambda: asyncio.sleep(0, maintenance_waiting(h.server)), "the maintenance timer to park")
    m.note_lease(1)  # a lease expiring (long ago): wakes the timer ...
    stopping = asyncio.create_task(m.stop())  # ... in the same loop iteration as the stop
    done, _ = await asyncio.wait({stopping}, timeout=2)
    if not done:
        await stop_maintenance(h.server)  # unstick it, so the fixture can stop the server
        await stopping
    assert done, "Maintenance.stop() did not return: the cancellation was swallowed"


# ---------------------------------------------------------------------- auth codes


async def test_auth_codes(tmp_path: Path) -> None:
    async with Harness(tmp_path, auth_token="admin", client_token="client") as h:
        err = await rpc_error(h.stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q")])))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        md = (("authorization", "Bearer client"),)
        await h.stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q")]), metadata=md)
        err = await rpc_error(h.stub.PauseQueue(pb.PauseQueueRequest(queue="q"), metadata=md))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
