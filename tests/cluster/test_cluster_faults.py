"""Regression tests for the cluster faults found in review (issue 9), each on the real
thing where the fault lives: real LiteFS nodes, a real Consul agent, real edgeq servers.

- Fault 1: a primary that loses its Consul lease while running (what a Consul blip or a
  partition from Consul does) ends its local Lease streams and stops dispatching; workers
  reconnect and jobs keep flowing.
- Fault 3: every background loop runs supervised and restarts after a failure.
- Fault 8: a replica's shutdown ends the Lease streams it proxies (workers reconnect).
The fault-injection suite that found them (and more) is tests/test_chaos.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest
from support.cluster_harness import Cluster, ConsulAgent, Node

from edgeq import Client, Worker
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server import metrics
from edgeq_server.supervise import Supervisor


def info(node: Node) -> pb.GetNodeInfoResponse:
    with grpc.insecure_channel(node.target) as ch:
        return pb_grpc.QueueServiceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)


@pytest.mark.slow
def test_a_primary_that_loses_its_consul_lease_ends_its_lease_streams_and_jobs_keep_flowing(tmp_path: Path) -> None:
    with ConsulAgent(tmp_path) as consul:
        cluster = Cluster(tmp_path, 3, "--drain-seconds", "1", "--grace-seconds", "1", consul=consul)
        with cluster:
            old = cluster.nodes[0]
            assert info(old).role == pb.NODE_ROLE_PRIMARY
            # A raw stream on the primary, and a Python Worker connected to it as well.
            done: list[bytes] = []
            got = threading.Event()

            def handle(job: object) -> None:
                done.append(getattr(job, "payload", b""))
                got.set()

            with grpc.insecure_channel(old.target) as ch, Worker(old.target, ["z"], handle, concurrency=2):
                stub = pb_grpc.QueueServiceStub(ch)
                raw = stub.Lease(pb.LeaseRequest(queues=["zz"], worker_id="raw", max_in_flight=1))
                with Client(old.target, timeout=5) as client:
                    client.enqueue("z", b"before")
                    assert got.wait(20)
                    got.clear()
                    session = consul.lease_session(cluster.consul_key)
                    assert session is not None
                    consul.put(f"/v1/session/destroy/{session}")
                    destroyed = time.monotonic()
                    # The raw stream on the old primary ends with UNAVAILABLE (not silence).
                    with pytest.raises(grpc.RpcError) as err:
                        for _ in raw:
                            pass
                    ended = time.monotonic() - destroyed
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
                    assert ended < 10, f"stream ended only {ended:.1f}s after the lease was lost"
                    # Jobs keep flowing: whichever node holds the lease now, the worker gets them.
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            client.enqueue("z", b"after", idempotency_key="after")
                            break
                        except Exception:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.1)
                    assert got.wait(30), f"worker starved after the lease loss; saw {done}"
                    assert done == [b"before", b"after"]
            roles = sorted(info(n).role for n in cluster.nodes)
            assert roles.count(pb.NODE_ROLE_PRIMARY) == 1, roles


@pytest.mark.slow
def test_a_replica_shutdown_ends_the_lease_streams_it_proxies(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2, "--drain-seconds", "1", "--grace-seconds", "5") as cluster:
        replica = cluster.replicas[0]
        with grpc.insecure_channel(replica.target) as ch:
            call = pb_grpc.QueueServiceStub(ch).Lease(pb.LeaseRequest(queues=["p"], worker_id="w"))
            time.sleep(0.5)  # the proxied stream is open on the primary
            stopping = threading.Thread(target=cluster.stop, args=(replica,))
            started = time.monotonic()
            stopping.start()
            with pytest.raises(grpc.RpcError) as err:
                for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in (err.value.details() or "")
            assert time.monotonic() - started < 4  # at drain, not when the 5 s grace runs out
            stopping.join(30)


async def test_a_failing_loop_is_logged_counted_and_restarted_and_never_ends_silently() -> None:
    """Fault 3: one exception in the replica's position-report loop ended it for good."""
    supervisor = Supervisor()
    runs: list[int] = []
    forever = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError("boom")
        if len(runs) == 3:
            return  # a loop that returns while the server runs is restarted too
        await forever.wait()

    before = metrics.LOOP_RESTARTS.labels("flaky")._value.get()
    supervisor.loop("flaky", flaky)
    for _ in range(200):
        if len(runs) >= 4:
            break
        await asyncio.sleep(0.01)
    assert len(runs) == 4 and supervisor.restarts == {"flaky": 3}
    assert metrics.LOOP_RESTARTS.labels("flaky")._value.get() - before == 3
    assert supervisor.running == ["flaky"]

    async def fails_once() -> None:
        raise ValueError("one-off")

    supervisor.task("one-off", fails_once())
    await asyncio.sleep(0.01)
    assert supervisor.restarts["one-off"] == 1  # seen and counted, not lost in an orphan task
    await supervisor.stop()
    assert supervisor.running == []


@pytest.mark.slow
def test_a_frozen_primary_is_replaced_within_seconds_and_steps_down_when_it_thaws(tmp_path: Path) -> None:
    """The silent failure: SIGSTOP of the primary's LiteFS and edgeq (its kernel still
    answers TCP, so the replicas' LiteFS streams never fail by themselves). The watchdog
    closes them once LiteFS heartbeats stop; a replica takes the lease when the frozen
    primary's Consul session expires; on SIGCONT the old primary finds its lease gone and
    follows the new one: never two primaries."""
    import os
    import signal

    with ConsulAgent(tmp_path) as consul:
        cluster = Cluster(tmp_path, 3, "--drain-seconds", "1", "--grace-seconds", "1", consul=consul)
        with cluster:
            old, a, b = cluster.nodes
            assert info(old).role == pb.NODE_ROLE_PRIMARY
            assert old.proc is not None
            with Client(a.target, timeout=2) as client:
                client.enqueue("f", b"before", idempotency_key="before")
                os.killpg(old.proc.pid, signal.SIGSTOP)
                frozen = time.monotonic()
                try:
                    while True:
                        try:
                            client.enqueue("f", b"during", idempotency_key="during")
                            break
                        except Exception:
                            if time.monotonic() - frozen > 40:
                                raise
                            time.sleep(0.1)
                    outage = time.monotonic() - frozen
                    assert outage < 10, f"writes were out for {outage:.1f}s with the primary frozen"
                    assert pb.NODE_ROLE_PRIMARY in (info(a).role, info(b).role)
                finally:
                    os.killpg(old.proc.pid, signal.SIGCONT)
                deadline = time.monotonic() + 20
                while info(old).role == pb.NODE_ROLE_PRIMARY:
                    assert time.monotonic() < deadline, "the thawed primary never stepped down"
                    time.sleep(0.1)
            roles = [info(n).role for n in cluster.nodes]
            assert roles.count(pb.NODE_ROLE_PRIMARY) == 1, roles
            print("frozen primary: write outage", round(outage, 2), "s")


@pytest.mark.slow
def test_a_buffered_request_the_primary_refuses_goes_to_the_dead_table_and_the_rest_drain(tmp_path: Path) -> None:
    """Fault 6: the outbox drain retried a refused request (RESOURCE_EXHAUSTED) forever and
    blocked every row behind it. Here the primary accepts smaller payloads than the replica
    (a config drift the replica's own validation cannot see)."""
    import os
    import signal

    cluster = Cluster(tmp_path, 2, "--outbox-path", "{dir}/outbox.db", "--outbox-forward-timeout-seconds", "0.5")
    cluster.nodes[0].extra_args = ["--max-payload-bytes", "100"]
    with cluster:
        primary, replica = cluster.nodes
        pid = primary.server_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            with grpc.insecure_channel(replica.target) as ch:
                stub = pb_grpc.QueueServiceStub(ch)
                for payload in (b"a", b"x" * 500, b"b"):
                    request = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="dead", payload=payload)])
                    answer = stub.Enqueue(request, timeout=10)
                    assert answer.buffered
            assert info(replica).outbox_pending == 3
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while (state := info(replica)).outbox_pending:
            assert time.monotonic() < deadline, f"drain stuck: {state}"
            time.sleep(0.1)
        assert state.outbox_dead == 1
        with grpc.insecure_channel(primary.target) as ch:
            jobs = pb_grpc.QueueServiceStub(ch).ListJobs(pb.ListJobsRequest(queue="dead"), timeout=5).jobs
        assert [j.payload for j in jobs] == [b"a", b"b"]  # in order, the refused one set aside
        assert "RESOURCE_EXHAUSTED" in replica.log.read_text()
