"""Regression tests from the code review: each states a contract or documented behaviour
that an earlier version broke (post-commit bookkeeping lost with a cancelled caller, drain
mid-claim, unsent outbox jobs, failed sweeps, shortened heartbeats, oversized Lease
messages, submit/close races, failed starts, worker_id, hostile page tokens). Real
EdgeqServer over gRPC with a ManualClock (``e2e_fixtures.Harness``) unless the behaviour
lives below the RPC layer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from support.e2e_fixtures import Harness, dur

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server.app import EdgeqServer
from edgeq_server.clock import ManualClock
from edgeq_server.config import Config
from edgeq_server.errors import Unavailable
from edgeq_server.store import Store
from edgeq_server.writer import Writer

OK, STALE = pb.LEASE_OUTCOME_OK, pb.LEASE_OUTCOME_STALE
PENDING, RUNNING, COMPLETED, FAILED = (
    pb.JOB_STATE_PENDING,
    pb.JOB_STATE_RUNNING,
    pb.JOB_STATE_COMPLETED,
    pb.JOB_STATE_FAILED,
)
MiB = 1024 * 1024

@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path) as harness:
        yield harness


class Gate:
    """Holds the writer thread inside one operation until released (so later submits queue)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self.task: asyncio.Task[Any] | None = None

    async def hold(self, writer: Writer) -> Gate:
        def op(_store: Store, _now: int) -> None:
            self.started.set()
            self.go.wait(10)

        self.task = asyncio.create_task(writer.submit(op))
        assert await asyncio.to_thread(self.started.wait, 5)
        return self

    async def release(self) -> None:
        self.go.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def jobs_within(call: Any, n: int, seconds: float) -> list[pb.LeasedJob]:
    """Read the stream for up to ``seconds`` (keepalives skipped); return the jobs seen."""
    got: list[pb.LeasedJob] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while len(got) < n and loop.time() < deadline:
        try:
            msg = await asyncio.wait_for(call.read(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            break
        if msg is grpc.aio.EOF:
            break
        got.extend(msg.jobs)
    return got


async def deadline_exceeded(aw: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await aw
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.2)  # the server cancels the handler task


# ------------------------------------------------------------------ 1. cancelled handlers


async def test_enqueue_whose_caller_gave_up_still_wakes_the_idle_stream(h: Harness) -> None:
    """The write commits (the job exists) but the handler was cancelled while awaiting the
    writer's future, so note_due/notify never ran: the listening stream is never woken."""
    call = await h.lease("q")
    await h.idle(call)  # the open() claim came back empty: q left the ready set
    gate = await Gate().hold(h.server.writer)  # type: ignore[arg-type]
    await deadline_exceeded(h.stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q")]), timeout=0.3))
    await gate.release()
    (job,) = await h.until(lambda: h.all_jobs(queue="q"), "the enqueue to commit")
    # committed although the caller saw DEADLINE_EXCEEDED (and maybe already leased)
    assert job.state in (PENDING, RUNNING)
    got = await jobs_within(call, 1, 3.0)
    assert [j.job.id for j in got] == [job.id], "pending job never pushed to the idle stream"


async def test_ack_whose_caller_gave_up_still_returns_the_streams_credit(h: Harness) -> None:
    """The Ack commits (COMPLETED) but dispatcher.settled() never runs: the stream's credit
    is leaked forever and a max_in_flight=1 stream stops receiving work."""
    call = await h.lease("q", max_in_flight=1)
    first = await h.put(payload=b"1")
    second = await h.put(payload=b"2")
    (held,) = await h.take(call, 1)
    assert held.job.id == first
    gate = await Gate().hold(h.server.writer)  # type: ignore[arg-type]
    await deadline_exceeded(
        h.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=held.lease_token)]), timeout=0.3)
    )
    await gate.release()
    await h.until_state(first, COMPLETED)
    got = await jobs_within(call, 1, 3.0)
    assert [j.job.id for j in got] == [second], (
        f"stream stalled: outstanding={h.server.dispatcher.outstanding} for a COMPLETED job"  # type: ignore[union-attr]
    )


# ------------------------------------------------------------------ 2. heartbeat timer


async def test_heartbeat_that_shortens_a_lease_is_swept_at_the_new_expiry(h: Harness) -> None:
    """(Also an xfail in test_e2e.py.) Heartbeat sets expiry to now+extend_by, possibly
    earlier than the timer maintenance holds; service.Heartbeat never calls note_lease."""
    call = await h.lease("q", lease_seconds=3600)
    job_id = await h.put()
    (leased,) = await h.take(call, 1)
    hb = await h.stub.Heartbeat(pb.HeartbeatRequest(lease_tokens=[leased.lease_token], extend_by=dur(5)))
    assert list(hb.outcomes) == [OK]
    h.clock.advance(10)
    assert await h.ack(leased.lease_token) == [STALE]  # fencing is right ...
    got = await jobs_within(call, 1, 3.0)  # ... but the job is not returned for ~1 hour
    assert [j.job.id for j in got] == [job_id]


# ------------------------------------------------------------------ 3. drain vs in-flight claim


async def test_drain_during_an_in_flight_claim_delivers_what_it_claimed(h: Harness) -> None:
    """A claim already queued in the writer when drain begins must not be lost: drain lets
    the pass finish, so the committed claim reaches the stream before it ends (and is not a
    job RUNNING for nobody with an attempt spent)."""
    job_id = await h.put(max_attempts=1)  # no stream yet: stays pending
    srv = h.server
    assert srv.dispatcher is not None and srv.writer is not None
    gate = await Gate().hold(srv.writer)
    call = await h.lease("q")  # open() notifies -> the dispatcher submits a claim (queued)
    await h.until(
        lambda: asyncio.sleep(0, any(s.claiming for s in srv.dispatcher._streams.values())),  # type: ignore[union-attr]
        "the claim to be submitted",
    )
    stopping = asyncio.create_task(srv.stop(drain_seconds=0.5, grace_seconds=0.1))
    await h.until(lambda: asyncio.sleep(0, not srv.dispatcher.accepting), "drain to begin")  # type: ignore[union-attr]
    await gate.release()
    got = await jobs_within(call, 1, 5.0)
    assert [j.job.id for j in got] == [job_id], "the claimed job never reached the stream"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(stopping, 10)
    h.srv = None
    await h.restart()
    job = await h.job(job_id)
    assert (job.state, job.attempts) == (RUNNING, 1)  # delivered once; expiry returns it if unacked


# ------------------------------------------------------------------ 4. closed stream's send queue


async def test_deliveries_left_in_a_closed_streams_outbox_are_put_back(h: Harness) -> None:
    """Lease's finally calls dispatcher.close(stream); batches already in stream.sends (the
    handler was suspended in ``yield`` on a slow client, or cancelled right after being
    woken) are dropped: RUNNING until expiry, attempt counted, credit held. The docs say
    jobs claimed for a stream that closed are put back without counting the attempt."""
    d = h.server.dispatcher
    assert d is not None
    stream = d.open(["q"], "w", 1, 30_000_000)  # what Lease() does; nobody reads its send queue
    job_id = await h.put()
    await h.until(lambda: asyncio.sleep(0, not stream.sends.empty()), "the delivery")
    d.close(stream)  # what Lease()'s finally does
    await asyncio.sleep(0.2)
    job = await h.job(job_id)
    assert (job.state, job.attempts, d.outstanding) == (PENDING, 0, 0), (
        f"state={job.state} attempts={job.attempts} outstanding={d.outstanding}"
    )


# ------------------------------------------------------------------ 5. expiry timer lost on error


async def test_a_failed_expiry_sweep_is_retried(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """_expire() sets _next_expiry = None before the sweep; if the sweep raises (e.g. BusyError
    while another process holds the write lock) the timer is gone: the lapsed lease is never
    swept while no new lease is granted."""
    call = await h.lease("q", max_in_flight=1)
    job_id = await h.put()
    (held,) = await h.take(call, 1)
    real = Store.expire_leases
    calls = {"n": 0}

    def flaky(self: Store, now: int, limit: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise apsw.BusyError("database is locked")
        return real(self, now, limit)

    monkeypatch.setattr(Store, "expire_leases", flaky)
    h.clock.advance(31)  # lease lapses; the sweep fails once
    await h.until(lambda: asyncio.sleep(0, calls["n"] >= 1), "the failed sweep")
    await asyncio.sleep(1.3)  # maintenance's error back-off
    h.clock.advance(1)
    got = await jobs_within(call, 1, 3.0)
    assert [j.job.id for j in got] == [job_id], f"expired lease never swept (sweeps tried: {calls['n']})"
    assert held.job.id == job_id


# ------------------------------------------------------------------ 6. message size


async def test_coalesced_lease_response_respects_the_message_limit(tmp_path: Path) -> None:
    """Lease() coalesces every claimed job into one LeaseResponse; with max_in_flight=N and
    payloads near max_payload_bytes it exceeds max_message_bytes and the send fails, after the
    jobs were marked RUNNING (attempt counted)."""
    async with Harness(tmp_path, max_message_bytes=3 * MiB, max_payload_bytes=1 * MiB) as hh:
        chan = grpc.aio.insecure_channel(
            f"127.0.0.1:{hh.server.port}", options=[("grpc.max_receive_message_length", 64 * MiB)]
        )
        try:
            stub = pb_grpc.QueueServiceStub(chan)
            ids = [await hh.put(payload=b"p" * (MiB - 1024)) for _ in range(4)]
            call = stub.Lease(pb.LeaseRequest(queues=["q"], max_in_flight=4))
            await asyncio.wait_for(call.initial_metadata(), 5)
            err: grpc.aio.AioRpcError | None = None
            got: list[pb.LeasedJob] = []
            try:
                got = await jobs_within(call, 4, 3.0)
            except grpc.aio.AioRpcError as e:
                err = e
            states = [(await hh.job(i)).state for i in ids]
            assert err is None and sorted(j.job.id for j in got) == sorted(ids), (
                f"stream error={err and err.code()} jobs={len(got)} states={states}"
            )
        finally:
            call.cancel()
            await chan.close()


# ------------------------------------------------------------------ 7. small ones


async def test_list_jobs_page_token_with_a_huge_offset_is_invalid_argument(h: Harness) -> None:
    raw = json.dumps({"a": 10**30, "f": "/"}).encode()
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.stub.ListJobs(pb.ListJobsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


async def test_failed_start_releases_threads_and_the_database(tmp_path: Path) -> None:
    """A start() that fails after the writer started (port in use) leaves the writer thread,
    the checkpointer thread and the reader pool running: nobody can stop() them."""
    first = EdgeqServer(Config(port=0, db_path=str(tmp_path / "a.db")), clock=ManualClock())
    await first.start()
    try:
        before = {t.ident for t in threading.enumerate()}
        second = EdgeqServer(Config(port=first.port, db_path=str(tmp_path / "b.db")), clock=ManualClock())
        with pytest.raises(RuntimeError):
            await second.start()
        await asyncio.sleep(0.2)
        leaked = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("edgeq")]
        assert leaked == [], leaked
    finally:
        await first.stop(0, 0)


async def test_submits_racing_close_all_resolve(tmp_path: Path) -> None:
    """Every submit either commits or fails with Unavailable, even when close() runs on
    another thread in the middle of a stream of submits: none is left behind the stop
    marker with a future nobody resolves."""
    writer = Writer(str(tmp_path / "w.db"), ManualClock())
    writer.start()
    closer = asyncio.get_running_loop().run_in_executor(None, writer.close)
    futures = []
    for _ in range(2000):
        futures.append(writer.submit_nowait(lambda s, now: None))
        await asyncio.sleep(0)
    await closer
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    assert all(not isinstance(r, BaseException) or isinstance(r, Unavailable) for r in results)


def test_worker_id_is_cleared_when_the_job_stops_running(tmp_path: Path) -> None:
    """Contract: Job.worker_id is the 'holder of the current lease, if RUNNING'. Nack-retry,
    expiry and CancelJob keep the old worker_id on a PENDING/FAILED/CANCELLED job."""
    from support.factories import NOW, SECOND, add, claim_one, open_store, ref, write

    from edgeq_server.models import Backoff

    store = open_store(str(tmp_path / "s.db"))
    try:
        job_id = add(store)
        job = claim_one(store, worker="w1")
        write(store, lambda: store.nack([(ref(job), "boom", SECOND, False)], Backoff(), NOW))
        after = store.get_job(job_id)
        assert after is not None and after.state.value == "pending"
        assert after.worker_id is None, f"PENDING job still names worker {after.worker_id!r}"
    finally:
        store.conn.close()
