"""``edgeq.aio.Worker`` against a real server: what asyncio adds to the contract the
conformance suite checks (tests/conformance, ``python-aio``): async and plain handlers, the
handler's task cancelled when the worker gives it up, stop from inside a handler, the task
awaiting ``run()`` cancelled (drains first), a fatal stream error raised by ``run()``, and
the sync Worker's option checks (one copy: ``_worker_core.Settings``)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.serverthread import ServerThread
from support.wait import until_async

import edgeq
import edgeq.aio
from edgeq import EdgeqError, JobState


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    st = ServerThread(str(tmp_path / "aio-worker.db"))
    st.start()
    try:
        yield st
    finally:
        st.close()


def queue() -> str:
    return f"aw-{uuid.uuid4().hex[:8]}"


async def test_async_and_plain_handlers_run_and_their_results_are_stored(server: ServerThread) -> None:
    q = queue()
    threads: set[str] = set()

    async def handle(job: edgeq.aio.LeasedJob) -> bytes:
        await asyncio.sleep(0.01)
        return b"async:" + job.payload

    def plain(job: edgeq.aio.LeasedJob) -> bytes:
        threads.add(threading.current_thread().name)
        return b"plain:" + job.payload

    async with edgeq.aio.Client(server.target) as client:
        ids = [(await client.enqueue(q, b"%d" % i)).job_id for i in range(20)]
        async with edgeq.aio.Worker(client, [q], handle, concurrency=4) as worker:
            await until_async(lambda: _is(worker.acked == 20), what="20 acked")
        assert {(await client.get(i)).result for i in ids} == {b"async:%d" % i for i in range(20)}
        assert worker.stats.processed == 20 and worker.stats.in_flight == 0
        q2 = queue()
        other = (await client.enqueue(q2, b"x")).job_id
        async with edgeq.aio.Worker(client, q2, plain) as worker:
            await until_async(lambda: _is(worker.acked == 1), what="acked")
        assert (await client.get(other)).result == b"plain:x"
        assert threads and threading.main_thread().name not in threads  # a thread, not the loop


async def test_a_handler_past_its_timeout_is_cancelled_and_nacked(server: ServerThread) -> None:
    q = queue()
    cancelled = asyncio.Event()

    async def slow(job: edgeq.aio.LeasedJob) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            assert job.cancelled.is_set()
            cancelled.set()
            raise

    async with edgeq.aio.Client(server.target) as client:
        job_id = (await client.enqueue(q, b"x", max_attempts=1)).job_id
        async with edgeq.aio.Worker(client, [q], slow, handler_timeout=0.3):
            await asyncio.wait_for(cancelled.wait(), 10)
            await until_async(lambda: _state(client, job_id, JobState.FAILED), what="failed")
        job = await client.get(job_id)
        assert job.error_message == "handler timed out after 0.3s"


async def test_stop_from_a_handler_and_cancelling_run_both_drain(server: ServerThread) -> None:
    q = queue()
    holder: dict[str, Any] = {}

    async def stopper(job: edgeq.aio.LeasedJob) -> None:
        await holder["worker"].stop()  # requests the stop, does not wait for itself

    async with edgeq.aio.Client(server.target) as client:
        first = (await client.enqueue(q, b"1")).job_id
        worker = holder["worker"] = edgeq.aio.Worker(client, [q], stopper, concurrency=1)
        await asyncio.wait_for(worker.run(), 20)  # returns: the handler stopped it
        assert (await client.get(first)).state is JobState.COMPLETED

        started = asyncio.Event()

        async def waits(job: edgeq.aio.LeasedJob) -> bytes:
            started.set()
            await asyncio.sleep(0.2)
            return b"finished"

        second = (await client.enqueue(q, b"2")).job_id
        runner = asyncio.create_task(edgeq.aio.Worker(client, [q], waits).run())
        await asyncio.wait_for(started.wait(), 10)
        runner.cancel()  # e.g. Ctrl-C under asyncio.run: the running job finishes first
        with pytest.raises(asyncio.CancelledError):
            await runner
        job = await client.get(second)
        assert (job.state, job.result) == (JobState.COMPLETED, b"finished")


async def test_a_refused_stream_stops_the_worker_and_run_raises(server: ServerThread) -> None:
    async with edgeq.aio.Client(server.target) as client:
        worker = edgeq.aio.Worker(client, ["not a queue name"], _never)
        with pytest.raises(EdgeqError) as err:
            await asyncio.wait_for(worker.run(), 20)
        assert "queue" in str(err.value) and worker.error is err.value


@pytest.mark.parametrize(
    "options, message",
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease_duration": 0.5}, "lease_duration"),
        ({"handler_timeout": 0}, "handler_timeout"),
        ({"ack_batch_max": 0}, "ack_batch_max"),
        ({"reconnect_backoff": (2.0, 1.0)}, "reconnect_backoff"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ],
)
def test_both_workers_refuse_the_same_bad_options(options: dict[str, Any], message: str) -> None:
    for cls in (edgeq.Worker, edgeq.aio.Worker):
        with pytest.raises(ValueError, match=message):
            cls("127.0.0.1:1", ["q"], _never, **options)  # type: ignore[operator]


async def _never(job: Any) -> None:
    raise AssertionError("not called")


async def _state(client: edgeq.aio.Client, job_id: str, state: JobState) -> bool:
    return (await client.get(job_id)).state is state


async def _is(value: bool) -> bool:
    return value
