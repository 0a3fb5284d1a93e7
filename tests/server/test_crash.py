"""Crash safety: kill -9 the server process in the middle of a load of enqueues and acks,
restart it on the same file, and check that nothing acknowledged was lost and no job is
left RUNNING past its lease. Real processes, real SQLite file, real signals; bounded in
count and time."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from support.procs import ServerProcess

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
LEASE_SECONDS = 1


def test_kill_9_during_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    server = ServerProcess(db)
    target = server.target
    enqueued: set[str] = set()
    acked: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def producer(n: int) -> None:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            i = 0
            while not stop.is_set() and i < 20_000:
                batch = 1 + (i % 7)  # single and batched enqueues
                try:
                    resp = stub.Enqueue(
                        pb.EnqueueRequest(jobs=[pb.JobSpec(queue="crash", payload=f"{n}-{i}".encode())] * batch),
                        timeout=5,
                    )
                except grpc.RpcError:
                    return  # the server died: stop producing
                with lock:
                    enqueued.update(r.job_id for r in resp.results)
                i += batch

    def worker() -> None:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            lease = pb.LeaseRequest(queues=["crash"], worker_id="crash-test", max_in_flight=64)
            lease.lease_duration.FromSeconds(LEASE_SECONDS)
            try:
                for msg in stub.Lease(lease, timeout=60):
                    if not msg.jobs:
                        continue
                    resp = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=j.lease_token) for j in msg.jobs]),
                                    timeout=5)
                    with lock:
                        acked.update(
                            j.job.id for j, o in zip(msg.jobs, resp.outcomes, strict=True) if o == pb.LEASE_OUTCOME_OK
                        )
                    if stop.is_set():
                        return
            except grpc.RpcError:
                return

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)] + [threading.Thread(target=worker)]
    for t in threads:
        t.start()
    # Kill once real load has happened (bounded wait), mid-flight.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(enqueued) > 2000 and len(acked) > 300:
                break
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)
    killed_at = time.time()
    server.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(enqueued) > 2000 and len(acked) > 300, "load did not build up before the kill"

    server = ServerProcess(db)
    target = server.target
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            seen: dict[str, pb.Job] = {}
            token = ""
            while True:
                page = stub.ListJobs(pb.ListJobsRequest(queue="crash", page_size=1000, page_token=token), timeout=10)
                seen.update((j.id, j) for j in page.jobs)
                token = page.next_page_token
                if not token:
                    break
            missing = enqueued - seen.keys()
            assert not missing, f"{len(missing)} acknowledged enqueues lost"
            not_completed = [i for i in acked if seen[i].state != pb.JOB_STATE_COMPLETED]
            assert not not_completed, f"{len(not_completed)} acknowledged acks lost"
            running = [j for j in seen.values() if j.state == pb.JOB_STATE_RUNNING]
            for j in running:
                # Every lease left behind ends no later than one lease length after the kill.
                assert j.lease_expires_at.ToSeconds() <= killed_at + LEASE_SECONDS + 1
            # ... and the restarted server returns them to PENDING once their leases lapse.
            deadline = time.monotonic() + 15
            while True:
                stats = stub.GetQueueStats(pb.GetQueueStatsRequest(queues=["crash"]), timeout=10).stats[0]
                if stats.running == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert stats.running == 0, f"{stats.running} jobs stuck RUNNING after their leases lapsed"
            assert stats.pending + stats.completed + stats.failed == len(seen)
    finally:
        server.close()
