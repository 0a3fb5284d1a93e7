"""``edgeq.aio.Client``: the Client's API awaited on grpc.aio against a real server; the same
request building, generated keys and write retries as the sync Client (shared helpers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from support.serverthread import ServerThread

import edgeq.aio
from edgeq import AUTO_KEY_PREFIX, Client, InvalidArgumentError, JobSpec, JobState, LeaseOutcome, NotFoundError
from edgeq.v1 import queue_pb2 as pb


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    st = ServerThread(str(tmp_path / "aio.db"))
    st.start()
    try:
        yield st
    finally:
        st.close()


async def test_the_async_client_covers_the_clients_api(server: ServerThread) -> None:
    queue = f"aio-{uuid.uuid4().hex[:8]}"
    async with edgeq.aio.Client(server.target, session_consistency=True) as client:
        one = await client.enqueue(queue, b"first", priority=5, headers={"k": "v"})
        assert not one.duplicate and one.idempotency_key.startswith(AUTO_KEY_PREFIX) and one.txid > 0
        again = await client.enqueue(queue, b"x", idempotency_key="k1")
        dup = await client.enqueue(queue, b"y", idempotency_key="k1")
        assert dup.duplicate and dup.job_id == again.job_id
        many = await client.enqueue_many([{"queue": queue, "payload": b"%d" % i} for i in range(1500)])
        assert len(many) == 1500 and len({r.job_id for r in many}) == 1500  # two calls of <= 1000
        job = await client.get(one.job_id)
        assert (job.payload, job.priority, dict(job.headers), job.state) == (b"first", 5, {"k": "v"}, JobState.PENDING)
        listed = [j.id async for j in client.list(queue, page_size=400)]
        assert len(listed) == 1502 and listed[0] == one.job_id
        (stats,) = await client.stats(queue)
        assert stats.pending == 1502
        assert (await client.cancel(again.job_id)).state is JobState.CANCELLED
        assert (await client.retry(again.job_id)).state is JobState.PENDING
        assert await client.cancel_jobs(queue, batch=600) == 1502  # three bounded calls
        assert await client.retry_jobs(queue, state="cancelled") == 1502
        await client.pause(queue)
        assert (await client.stats(queue))[0].paused
        await client.resume(queue)
        stream = client.lease_stream([queue], max_in_flight=2)
        leased = []
        async for msg in stream:
            leased.extend(msg.jobs)
            if len(leased) >= 2:
                break
        stream.cancel()
        tokens = [j.lease_token for j in leased[:2]]
        assert await client.heartbeat(tokens, extend_by=60) == [LeaseOutcome.OK, LeaseOutcome.OK]
        assert await client.ack([(tokens[0], b"done")]) == [LeaseOutcome.OK]
        assert await client.nack([tokens[1]], error_message="later", retry_delay=0) == [LeaseOutcome.OK]
        assert await client.ack(["not-a-token"]) == [LeaseOutcome.INVALID]
        with pytest.raises(NotFoundError):
            await client.get(str(uuid.uuid4()))
        assert client.last_txid > 0
    # What the async client wrote, the sync one reads the same.
    with Client(server.target) as sync:
        assert sync.get(leased[0].job.id).result == b"done"


async def test_the_async_client_fair_groups(server: ServerThread) -> None:
    async with edgeq.aio.Client(server.target, session_consistency=True) as client:
        first = await client.enqueue("agq", b"1", group="tenant-a")
        await client.enqueue_many([JobSpec("agq", b"2", group="tenant-b"), {"queue": "agq", "group": "tenant-b"}])
        assert (await client.get(first.job_id)).group == "tenant-a"
        await client.set_group_weight("agq", "tenant-a", 7)
        groups = {g.group: (g.weight, g.pending, g.running) for g in await client.list_groups("agq")}
        assert groups == {"tenant-a": (7, 1, 0), "tenant-b": (1, 2, 0)}  # the default group is idle: not listed
        with pytest.raises(InvalidArgumentError) as err:
            await client.enqueue("agq", b"x", group="tab\tgroup")
        assert err.value.field == "jobs[0].group"


async def test_the_async_client_rate_limits(server: ServerThread) -> None:
    async with edgeq.aio.Client(server.target, session_consistency=True) as client:
        await client.set_rate_limit("arl", 120, per=60)
        await client.set_rate_limit("arl", 5, per=timedelta(seconds=2), key_header="tenant")
        await client.enqueue("arl", b"x", headers={"tenant": "t1"})
        (stats,) = await client.stats("arl")
        assert (stats.rate_limit_jobs, stats.rate_limit_period, stats.rate_limited) == (120, 60.0, False)
        assert (stats.key_rate_limit_header, stats.key_rate_limit_jobs, stats.key_rate_limit_period) == (
            "tenant", 5, 2.0
        )
        await client.set_rate_limit("arl", 0, key_header="tenant")  # the per-key one only
        (stats,) = await client.stats("arl")
        assert (stats.rate_limit_jobs, stats.key_rate_limit_header, stats.key_rate_limit_jobs) == (120, None, 0)
        await client.set_rate_limit("arl", 0)
        assert (await client.stats("arl"))[0].rate_limit_jobs == 0
        with pytest.raises(InvalidArgumentError) as err:
            await client.set_rate_limit("arl", 5, per=0.0001)
        assert err.value.field == "period"


async def test_the_async_client_schedules(server: ServerThread) -> None:
    async with edgeq.aio.Client(server.target, session_consistency=True) as client:
        sch = await client.upsert_schedule(
            "adigest", "asq", "*/5 * * * *", b"{}", time_zone="Europe/Paris", overlap="skip", missed="run_once",
            headers={"k": "v"}, priority=3, max_attempts=2,
        )
        assert (sch.name, sch.queue, sch.cron, sch.time_zone, sch.overlap, sch.missed) == (
            "adigest", "asq", "*/5 * * * *", "Europe/Paris", pb.OVERLAP_POLICY_SKIP, pb.MISSED_TICKS_RUN_ONCE
        )
        assert sch.HasField("next_run_at") and not sch.paused
        assert (sch.template.payload, dict(sch.template.headers), sch.template.priority) == (b"{}", {"k": "v"}, 3)
        assert sch.template.max_attempts == 2
        assert [s.name for s in await client.schedules()] == ["adigest"]
        assert (await client.pause_schedule("adigest")).paused
        assert (await client.schedules())[0].paused
        assert not (await client.resume_schedule("adigest")).paused
        with pytest.raises(InvalidArgumentError) as err:
            await client.upsert_schedule("bad", "asq", "not cron")
        assert err.value.field == "schedule.cron"
        assert await client.delete_schedule("adigest")
        assert not await client.delete_schedule("adigest")  # already gone
        assert await client.schedules() == []
    # The sync client sees the same (none left).
    with Client(server.target) as sync:
        assert sync.schedules() == []
