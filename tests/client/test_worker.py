"""``edgeq.Worker`` against a real server (in a background thread): acks, nacks and the
Retry / Fail signals, heartbeats that keep a long job's lease, lease loss (and no false
lease loss when a heartbeat races the worker's own ack), draining on stop(), and
reconnecting after the server restarts on the same port and database."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.serverthread import ServerThread
from support.wait import until

from edgeq import Client, Fail, InvalidArgumentError, Job, JobSpec, JobState, LeasedJob, Retry, Worker
from edgeq.v1 import queue_pb2 as pb

WAIT = 15.0  # bound of every poll; the happy path takes milliseconds to a few seconds


def wait_state(client: Client, job_id: str, state: JobState, timeout: float = WAIT) -> Job:
    until(lambda: client.get(job_id).state is state, timeout, f"job {job_id} to be {state}")
    return client.get(job_id)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    # Fast server-side retry backoff, so nacked jobs come back within milliseconds.
    st = ServerThread(str(tmp_path / "q.db"), backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    st.start()
    yield st
    st.close()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=5) as c:
        yield c


def test_processes_many_jobs(client: Client) -> None:
    seen: list[str] = []
    holders: set[str | None] = set()
    lock = threading.Lock()

    def handler(job: LeasedJob) -> bytes | None:
        with lock:
            seen.append(job.id)
            holders.add(job.job.worker_id)
        n = int(job.payload)
        return b"r%d" % n if n % 2 else None

    ids = [r.job_id for r in client.enqueue_many([JobSpec("many", b"%d" % i) for i in range(200)])]
    with Worker(client, "many", handler, concurrency=4, max_in_flight=32) as worker:
        until(lambda: client.stats("many")[0].completed == 200, what="200 completed")
        until(lambda: worker.acked == 200, what="200 acks counted")
    assert sorted(seen) == sorted(ids)
    stats = worker.stats
    assert (stats.processed, stats.acked, stats.nacked, stats.stale, stats.in_flight) == (200, 200, 0, 0, 0)
    assert client.get(ids[1]).result == b"r1" and client.get(ids[2]).result is None
    # While RUNNING the job names its holder (hostname-pid by default); once settled, nobody.
    assert holders == {f"{socket.gethostname()}-{os.getpid()}"}
    assert client.get(ids[0]).worker_id is None


def test_exception_nacks_until_failed(client: Client) -> None:
    attempts: list[int] = []

    def handler(job: LeasedJob) -> None:
        attempts.append(job.attempts)
        raise ValueError("boom")

    job_id = client.enqueue("flaky", b"x", max_attempts=3).job_id
    with Worker(client, ["flaky"], handler, concurrency=2) as worker:
        job = wait_state(client, job_id, JobState.FAILED)
        until(lambda: worker.nacked == 3, what="3 nacks")
    assert attempts == [1, 2, 3]
    assert job.attempts == 3 and job.error_message == "ValueError('boom')"
    assert worker.acked == 0


def test_retry_and_fail_signals(client: Client) -> None:
    def handler(job: LeasedJob) -> bytes | None:
        kind = job.payload
        if kind == b"retry-now" and job.attempts == 1:
            raise Retry(delay=0)
        if kind == b"retry-later":
            raise Retry(delay=timedelta(seconds=60), message="not yet")
        if kind == b"fail":
            raise Fail("bad input")
        if kind == b"wrong-type":
            return "text"  # type: ignore[return-value]  # on purpose: not bytes
        if kind == b"too-big":
            return b"x" * (1024 * 1024 + 1)  # over the server's result limit: the Ack is refused
        return b"ok"

    ids = {
        kind: r.job_id
        for kind, r in zip(
            ("retry-now", "retry-later", "fail", "wrong-type", "too-big"),
            client.enqueue_many(
                [
                    JobSpec("sig", b"retry-now"),
                    JobSpec("sig", b"retry-later"),
                    JobSpec("sig", b"fail", max_attempts=5),
                    JobSpec("sig", b"wrong-type", max_attempts=1),
                    JobSpec("sig", b"too-big", max_attempts=1),
                ]
            ),
            strict=True,
        )
    }
    with Worker(client, ["sig"], handler, concurrency=4):
        now_job = wait_state(client, ids["retry-now"], JobState.COMPLETED)
        failed = wait_state(client, ids["fail"], JobState.FAILED)
        wrong = wait_state(client, ids["wrong-type"], JobState.FAILED)
        too_big = wait_state(client, ids["too-big"], JobState.FAILED)
        until(lambda: client.get(ids["retry-later"]).state is JobState.PENDING, what="retry-later nacked")
    assert now_job.attempts == 2 and now_job.result == b"ok"
    assert failed.attempts == 1 and failed.error_message == "bad input"
    assert "TypeError" in wrong.error_message and "str" in wrong.error_message
    assert too_big.error_message.startswith("ack refused: RESOURCE_EXHAUSTED") and too_big.result is None
    later = client.get(ids["retry-later"])
    assert later.attempts == 1 and later.error_message == "not yet"
    assert later.run_at > datetime.now(UTC) + timedelta(seconds=50)


def test_heartbeats_keep_a_long_job(client: Client) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(job: LeasedJob) -> bytes:
        started.set()
        release.wait(WAIT)
        return b"lost" if job.lease_lost.is_set() else b"kept"

    job_id = client.enqueue("long", b"x").job_id
    with Worker(client, ["long"], handler, lease_duration=2) as worker:
        assert started.wait(WAIT)
        first_expiry = client.get(job_id).lease_expires_at
        assert first_expiry is not None

        def extended_and_past_first_lease() -> bool:
            job = client.get(job_id)
            assert job.state is JobState.RUNNING and job.attempts == 1
            return (
                job.lease_expires_at is not None
                and job.lease_expires_at > first_expiry
                and datetime.now(UTC) > first_expiry + timedelta(seconds=0.2)
            )

        until(extended_and_past_first_lease, what="the lease to be extended past its first expiry")
        release.set()
        job = wait_state(client, job_id, JobState.COMPLETED)
    assert job.attempts == 1 and job.result == b"kept"
    assert worker.stats.lease_lost == 0 and worker.acked == 1


def test_progress_reported_by_the_handler_reaches_the_job(client: Client) -> None:
    release = threading.Event()

    def handler(job: LeasedJob) -> None:
        job.report_progress(25, "rows 250/1000")
        release.wait(WAIT)
        job.report_progress(100, "done")
        with pytest.raises(ValueError, match="finite"):
            job.report_progress(float("nan"))

    job_id = client.enqueue("prog", b"x").job_id
    with Worker(client, ["prog"], handler, lease_duration=30):  # not due for 15 s: sent for the report
        def reported() -> Job | None:
            job = client.get(job_id)
            return job if job.progress == 25 else None

        job = until(reported, what="the first report")
        assert job.progress_message == "rows 250/1000" and job.state is JobState.RUNNING
        release.set()
        wait_state(client, job_id, JobState.COMPLETED)
    done = client.get(job_id)
    assert (done.progress, done.progress_message) in ((100, "done"), (25, "rows 250/1000"))  # the last tick may miss


def test_lease_lost_when_cancelled(client: Client) -> None:
    started = threading.Event()
    lost: list[bool] = []

    def handler(job: LeasedJob) -> None:
        started.set()
        lost.append(job.lease_lost.wait(WAIT))

    job_id = client.enqueue("cancelme", b"x").job_id
    with Worker(client, ["cancelme"], handler, lease_duration=2) as worker:
        assert started.wait(WAIT)
        client.cancel(job_id)
        until(lambda: worker.processed == 1, what="the handler to see the lease lost")
    # The lost lease's outcome is not sent (docs/worker-contract.md §5): no STALE settle.
    assert lost == [True] and worker.stats.lease_lost == 1 and worker.acked == 0 and worker.stats.stale == 0
    assert client.get(job_id).state is JobState.CANCELLED


class _AckWaitsForAHeartbeat(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Lets an Ack reach the server, then holds its answer until a Heartbeat sent after
    it has been answered: the heartbeat finds the lease settled (STALE) while the worker
    still waits for its Ack's outcome."""

    def __init__(self) -> None:
        self.acked = threading.Event()
        self.heartbeat_after_ack = threading.Event()
        self.late_heartbeats: list[list[int]] = []

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/Ack"):
            self.acked.set()
            self.heartbeat_after_ack.wait(WAIT)
        elif details.method.endswith("/Heartbeat") and self.acked.is_set():
            self.late_heartbeats.append(list(outcome.result().outcomes))
            self.heartbeat_after_ack.set()
        return outcome


def test_heartbeat_racing_the_own_ack_is_not_a_lost_lease(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    hold = _AckWaitsForAHeartbeat()
    seen: list[LeasedJob] = []
    with grpc.insecure_channel(server.target) as ch:
        client = Client(channel=grpc.intercept_channel(ch, hold), timeout=5)
        job_id = client.enqueue("race", b"x").job_id
        caplog.set_level(logging.DEBUG, logger="edgeq.worker")
        with Worker(client, ["race"], seen.append, lease_duration=1) as worker:
            assert hold.heartbeat_after_ack.wait(WAIT), "no heartbeat while the ack was in flight"
            until(lambda: worker.acked == 1, what="the ack")
        assert hold.late_heartbeats[0] == [pb.LEASE_OUTCOME_STALE]  # the race did happen
        assert client.get(job_id).state is JobState.COMPLETED
    assert worker.stats.lease_lost == 0 and worker.stats.stale == 0
    assert not seen[0].lease_lost.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "lost" in r.getMessage()]


def test_stop_drains_in_flight_jobs(server: ServerThread, client: Client) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(job: LeasedJob) -> bytes:
        started.set()
        release.wait(WAIT)
        return b"finished"

    first = client.enqueue("drain", b"1").job_id
    worker = Worker(server.target, ["drain"], handler, concurrency=2).start()
    assert started.wait(WAIT)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": WAIT})
    stopper.start()
    # The Lease stream goes first: once the server has seen it close, new jobs stay put.
    assert server.server is not None
    dispatcher = server.server.dispatcher
    assert dispatcher is not None
    until(lambda: dispatcher.stream_count == 0, what="the lease stream to close")
    second = client.enqueue("drain", b"2").job_id
    assert stopper.is_alive()  # stop() waits for the in-flight handler
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    done = client.get(first)
    assert done.state is JobState.COMPLETED and done.result == b"finished"
    untouched = client.get(second)
    assert untouched.state is JobState.PENDING and untouched.attempts == 0
    assert worker.acked == 1


def test_stop_timeout_hands_unfinished_jobs_back(server: ServerThread, client: Client) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(job: LeasedJob) -> None:
        started.set()
        release.wait(WAIT)

    job_id = client.enqueue("stuck", b"x").job_id
    worker = Worker(server.target, ["stuck"], handler).start()
    try:
        assert started.wait(WAIT)
        t0 = time.monotonic()
        worker.stop(timeout=0.2)
        assert time.monotonic() - t0 < 5
        job = client.get(job_id)
        assert job.state is JobState.PENDING and job.attempts == 1
        assert job.error_message == "worker stopped before the job finished"
        assert job.run_at <= datetime.now(UTC)  # immediate retry, not the backoff policy
    finally:
        release.set()
    # A new worker picks it up again.
    with Worker(server.target, ["stuck"], lambda job: b"second try"):
        assert wait_state(client, job_id, JobState.COMPLETED).attempts == 2


def test_reconnects_after_server_restart(server: ServerThread, client: Client) -> None:
    done: list[bytes] = []

    def handler(job: LeasedJob) -> None:
        done.append(job.payload)

    with Worker(server.target, ["restart"], handler, reconnect_backoff=(0.05, 0.3)) as worker:
        first = client.enqueue("restart", b"before").job_id
        wait_state(client, first, JobState.COMPLETED)
        port = server.port
        server.restart()
        assert server.port == port
        second = client.enqueue("restart", b"after").job_id
        wait_state(client, second, JobState.COMPLETED)
        assert worker.reconnects >= 1
    assert done == [b"before", b"after"]


def test_invalid_queue_name_stops_the_worker(server: ServerThread) -> None:
    worker = Worker(server.target, ["bad queue!"], lambda job: None)
    with pytest.raises(InvalidArgumentError, match="queues"):
        worker.run()
    assert worker.error is not None


def test_stop_from_a_handler(client: Client) -> None:
    handled: list[str] = []
    worker: Worker

    def handler(job: LeasedJob) -> None:
        handled.append(job.id)
        worker.stop(timeout=5)  # returns at once on a handler thread

    worker = Worker(client, ["selfstop"], handler)
    job_id = client.enqueue("selfstop", b"x").job_id
    runner = threading.Thread(target=worker.run)
    runner.start()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert handled == [job_id] and client.get(job_id).state is JobState.COMPLETED


def test_acks_in_flight_work_while_the_server_drains(server: ServerThread, client: Client) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(job: LeasedJob) -> bytes:
        started.set()
        release.wait(WAIT)
        return b"acked during drain"

    job_id = client.enqueue("sigterm", b"x").job_id
    with Worker(server.target, ["sigterm"], handler, reconnect_backoff=(0.05, 0.3)) as worker:
        assert started.wait(WAIT)
        assert server.server is not None and server.server.dispatcher is not None
        dispatcher = server.server.dispatcher
        # The server drains: the Lease stream ends (UNAVAILABLE), acks are still taken until
        # no leases are outstanding, and only then does stop() return.
        stopper = threading.Thread(target=server.stop, kwargs={"drain_seconds": WAIT})
        stopper.start()
        until(lambda: not dispatcher.accepting and dispatcher.stream_count == 0, what="the drain to start")
        release.set()
        stopper.join(WAIT)
        assert not stopper.is_alive() and dispatcher.outstanding == 0
        server.start()
        assert wait_state(client, job_id, JobState.COMPLETED).result == b"acked during drain"
        again = client.enqueue("sigterm", b"y").job_id
        wait_state(client, again, JobState.COMPLETED)
        assert worker.reconnects >= 1
