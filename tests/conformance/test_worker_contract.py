"""The worker contract (docs/worker-contract.md), one scenario per rule, run against the
Python, Go and TypeScript Workers through their conformance drivers and a real server
process. The server's view (states, attempts, last errors, results, lease expiries) and the
driver's stdout are what is checked."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from drivers import DriverFactory
from support.fault_proxy import FaultProxy
from support.procs import ServerProcess
from support.wait import until

from edgeq import Client, Job, JobState

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=10) as c:
        yield c


@pytest.fixture
def queue() -> str:
    return f"conf-{uuid.uuid4().hex[:10]}"


def put(client: Client, queue: str, max_attempts: int = 3, **behaviour: object) -> str:
    return client.enqueue(queue, json.dumps(behaviour).encode(), max_attempts=max_attempts).job_id


def settled(client: Client, job_id: str, *states: JobState, timeout: float = 20.0) -> Job:
    return until(
        lambda: (j := client.get(job_id)).state in states and j,
        timeout, f"job {job_id} to reach {[s.value for s in states]}",
    )


# ------------------------------------------------------------------ §3 handler outcomes


def test_a_returned_result_is_acked_and_stored(client: Client, server: ServerProcess, drivers: DriverFactory,
                                              queue: str) -> None:
    d = drivers.start(server.target, queue)
    with_result = put(client, queue, do="succeed", result="hello, edgeq")
    without = put(client, queue, do="succeed")
    a = settled(client, with_result, JobState.COMPLETED)
    b = settled(client, without, JobState.COMPLETED)
    assert (a.result, a.attempts, a.error_message) == (b"hello, edgeq", 1, "")
    assert (b.result or b"", b.attempts) == (b"", 1)
    d.stop()


def test_an_error_is_nacked_with_its_text_and_the_servers_backoff(client: Client, server: ServerProcess,
                                                                 drivers: DriverFactory, queue: str) -> None:
    d = drivers.start(server.target, queue)
    job = put(client, queue, max_attempts=2, do="error", message="smtp said no")
    first = until(lambda: (j := client.get(job)).state is JobState.PENDING and j.attempts == 1 and j,
                  what="the first attempt to be nacked")
    assert "smtp said no" in first.error_message
    assert first.run_at > datetime.now(UTC), "retried at once: the server's backoff was not used"
    d.stop()


def test_fail_ends_the_job_at_once_without_more_attempts(client: Client, server: ServerProcess,
                                                        drivers: DriverFactory, queue: str) -> None:
    d = drivers.start(server.target, queue)
    job = settled(client, put(client, queue, max_attempts=5, do="fail", message="invalid address"), JobState.FAILED)
    assert job.attempts == 1 and "invalid address" in job.error_message
    d.stop()


def test_retry_runs_again_after_the_asked_delay(client: Client, server: ServerProcess, drivers: DriverFactory,
                                               queue: str) -> None:
    d = drivers.start(server.target, queue)
    job = put(client, queue, max_attempts=2, do="retry", after_ms=0, message="rate limited")
    final = settled(client, job, JobState.FAILED)
    assert final.attempts == 2 and "rate limited" in final.error_message
    starts = d.wait_for("start", job, count=2)
    assert [e["attempt"] for e in starts] == [1, 2]
    d.stop()


def test_a_panic_is_nacked_with_its_value_and_the_worker_runs_on(client: Client, server: ServerProcess,
                                                                drivers: DriverFactory, queue: str) -> None:
    d = drivers.start(server.target, queue)
    boom = put(client, queue, max_attempts=1, do="panic", message="nil map write 4711")
    job = settled(client, boom, JobState.FAILED)
    assert "panic" in job.error_message.lower() and "nil map write 4711" in job.error_message
    after = settled(client, put(client, queue, do="succeed"), JobState.COMPLETED)
    assert after.attempts == 1
    d.stop()


def test_a_handler_past_its_timeout_is_cancelled_and_nacked(client: Client, server: ServerProcess,
                                                           drivers: DriverFactory, queue: str) -> None:
    d = drivers.start(server.target, queue, handler_timeout_ms=400)
    job = put(client, queue, max_attempts=1, do="wait_cancel", ms=10_000)
    started = time.monotonic()
    final = settled(client, job, JobState.FAILED, timeout=15)
    assert time.monotonic() - started < 8, "the timeout did not end the attempt"
    assert "timed out" in final.error_message
    d.wait_for("cancelled", job, timeout=10)
    d.stop()


# ------------------------------------------------------------------ §1 credits, §2 lease extension


def test_no_more_than_max_in_flight_leases_and_the_default_is_four_per_handler(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    for _ in range(20):
        put(client, queue, do="sleep", ms=3_000)
    d = drivers.start(server.target, queue, concurrency=2)
    until(lambda: client.stats(queue)[0].running >= 8, 15, "8 leases (4 x concurrency 2)")
    time.sleep(0.5)
    assert client.stats(queue)[0].running == 8
    assert len(d.seen("start")) <= 2 + len(d.seen("end")), "more handlers ran at once than concurrency"
    d.stop(timeout=60)


def test_held_leases_are_extended_at_half_the_lease_while_the_handler_runs(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    d = drivers.start(server.target, queue, lease_ms=2_000, concurrency=1)
    job = put(client, queue, do="sleep", ms=5_500)
    d.wait_for("start", job)
    expiries: set[datetime] = set()
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        j = client.get(job)
        if j.state is not JobState.RUNNING:
            break
        if j.lease_expires_at is not None:
            expiries.add(j.lease_expires_at)
        time.sleep(0.1)
    final = settled(client, job, JobState.COMPLETED)
    assert final.attempts == 1, "the lease lapsed and the job was delivered again"
    assert len(expiries) >= 3, f"lease extended {len(expiries) - 1} times in ~5 s with a 2 s lease"
    ordered = sorted(expiries)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]
    assert all(0.5 <= g <= 1.8 for g in gaps), f"extensions not about every half lease: {gaps}"
    d.stop()


def test_reported_progress_reaches_the_job_with_the_next_heartbeat(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    d = drivers.start(server.target, queue, lease_ms=10_000, concurrency=1)  # not due for 5 s
    job = put(client, queue, do="progress", value=37.5, message="chunk 3 of 8", ms=4_000)
    d.wait_for("start", job)
    end = time.monotonic() + 3.5  # a tick is at most lease/8: 1.25 s
    seen = None
    while time.monotonic() < end and seen is None:
        j = client.get(job)
        if j.progress == 37.5:
            seen = j
        time.sleep(0.05)
    assert seen is not None, "the progress was not sent within a few heartbeat ticks"
    assert seen.progress_message == "chunk 3 of 8" and seen.state is JobState.RUNNING
    assert settled(client, job, JobState.COMPLETED).progress == 37.5  # kept after it finishes
    d.stop()


# ------------------------------------------------------------------ §4 settling through faults


def test_a_settle_answered_unavailable_twice_is_resent_and_applied_once(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    """The server applies the first two Ack calls but their answers are lost (UNAVAILABLE):
    the worker (or its channel's retry policy) sends the same tokens again; the server
    answers the repeat with the first outcome. Every job completes once, the worker runs on."""
    proxy = FaultProxy(server.target, lose_replies={"Ack": 2})
    try:
        d = drivers.start(proxy.target, queue)
        jobs = [put(client, queue, do="succeed", result=f"r{i}") for i in range(5)]
        done = [settled(client, j, JobState.COMPLETED, timeout=30) for j in jobs]
        assert [j.result for j in done] == [f"r{i}".encode() for i in range(5)]
        assert all(j.attempts == 1 for j in done), "a job ran again: the lost answers cost its lease"
        # The server applied the first call: the jobs show COMPLETED before the resends land.
        until(lambda: proxy.calls["Ack"] >= 3, 15, f"the lost answers to be resent: {dict(proxy.calls)}")
        assert len(d.seen("start")) == 5
        later = settled(client, put(client, queue, do="succeed"), JobState.COMPLETED)
        assert later.attempts == 1
        d.stop()
    finally:
        proxy.close()


# ------------------------------------------------------------------ §5 cancellation, §4 lost leases


def test_a_job_cancelled_while_running_fires_the_handlers_cancellation(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    d = drivers.start(server.target, queue, lease_ms=2_000)
    job = put(client, queue, do="wait_cancel", ms=15_000)
    d.wait_for("start", job)
    client.cancel(job)
    d.wait_for("cancelled", job, timeout=5)  # seen at the next heartbeat (half the lease)
    d.wait_for("end", job)
    assert client.get(job).state is JobState.CANCELLED
    # The worker runs on.
    settled(client, put(client, queue, do="succeed"), JobState.COMPLETED)
    d.stop()


def test_a_stale_settle_is_logged_once_and_the_worker_runs_on(client: Client, server: ServerProcess,
                                                             drivers: DriverFactory, queue: str) -> None:
    """The handler ignores its cancellation and returns after the job was cancelled: its
    lease is gone, so whatever the worker does with the outcome changes nothing."""
    d = drivers.start(server.target, queue, lease_ms=60_000)  # no heartbeat before the settle
    job = put(client, queue, do="sleep", ms=1_000)
    d.wait_for("start", job)
    client.cancel(job)
    d.wait_for("end", job)
    time.sleep(0.3)
    assert client.get(job).state is JobState.CANCELLED
    settled(client, put(client, queue, do="succeed"), JobState.COMPLETED)
    assert d.proc.poll() is None
    d.stop()
    mentions = [line for line in d.stderr if job in line]
    assert len(mentions) <= 1, f"the lost lease was logged {len(mentions)} times:\n{''.join(mentions)}"


# ------------------------------------------------------------------ §6 stopping


def test_stop_finishes_running_jobs_and_hands_back_the_rest(client: Client, server: ServerProcess,
                                                           drivers: DriverFactory, queue: str) -> None:
    jobs = [put(client, queue, do="sleep", ms=1_000) for _ in range(3)]
    d = drivers.start(server.target, queue, concurrency=1, max_in_flight=3)
    first = d.wait_for("start")[0]["job"]
    until(lambda: client.stats(queue)[0].running == 3, 10, "all three leased to the worker")
    time.sleep(0.2)  # the stream message carrying them has reached the worker
    took = d.stop()
    assert took < 10
    assert client.get(first).state is JobState.COMPLETED
    rest = [client.get(j) for j in jobs if j != first]
    assert all(j.state is JobState.PENDING for j in rest), [(j.id, j.state) for j in rest]
    assert all(j.run_at <= datetime.now(UTC) for j in rest), "handed-back jobs must be ready at once"


def test_stop_after_the_drain_timeout_cancels_and_hands_back_the_handler(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    d = drivers.start(server.target, queue, drain_ms=300)
    job = put(client, queue, do="wait_cancel", ms=20_000)
    d.wait_for("start", job)
    took = d.stop()
    assert took < 8, f"stop took {took:.1f}s with a 0.3 s drain timeout"
    assert client.get(job).state is JobState.PENDING
    assert d.seen("cancelled", job), "the handler's cancellation did not fire at the drain timeout"


# ------------------------------------------------------------------ §7 reconnecting, load


def test_the_worker_reconnects_after_a_server_restart_and_loses_nothing(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    d = drivers.start(server.target, queue)
    before = [put(client, queue, do="succeed") for _ in range(20)]
    for j in before:
        settled(client, j, JobState.COMPLETED)
    port = server.target.rsplit(":", 1)[1]
    db = server.proc.args[server.proc.args.index("--db-path") + 1]  # type: ignore[union-attr]
    server.proc.terminate()
    server.proc.wait(timeout=30)
    restarted = ServerProcess(db, "--port", port)
    try:
        with Client(restarted.target, timeout=10) as c2:
            after = [put(c2, queue, do="succeed") for _ in range(20)]
            done = [settled(c2, j, JobState.COMPLETED, timeout=30) for j in after]
            assert all(j.attempts == 1 for j in done)
        d.stop()
    finally:
        restarted.close()


def test_a_thousand_jobs_at_concurrency_16_finish_once_with_no_lease_left(
    client: Client, server: ServerProcess, drivers: DriverFactory, queue: str
) -> None:
    client.enqueue_many([{"queue": queue, "payload": json.dumps({"do": "succeed"}).encode()}] * 1000)
    d = drivers.start(server.target, queue, concurrency=16)
    until(lambda: client.stats(queue)[0].completed == 1000, 120, "1,000 jobs completed")
    stats = client.stats(queue)[0]
    assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
    assert len(d.seen("start")) == 1000, "a job ran twice"
    d.stop()
