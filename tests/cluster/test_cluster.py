"""Real LiteFS clusters (3 nodes on loopback, static lease): replication of edgeq's file,
the mount refusing writes on replicas, and a killed replica catching up."""

from __future__ import annotations

from pathlib import Path

import apsw
import grpc
import pytest
from support.cluster_harness import Cluster

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


def enqueue(target: str, queue: str, payloads: list[bytes]) -> list[str]:
    with grpc.insecure_channel(target) as ch:
        resp = pb_grpc.QueueServiceStub(ch).Enqueue(
            pb.EnqueueRequest(jobs=[pb.JobSpec(queue=queue, payload=p) for p in payloads]), timeout=10
        )
    return [r.job_id for r in resp.results]


def get(target: str, job_id: str) -> pb.Job:
    with grpc.insecure_channel(target) as ch:
        return pb_grpc.QueueServiceStub(ch).GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job


def test_jobs_written_on_the_primary_are_read_on_every_replica(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        assert (cluster.replicas[0].mount / ".primary").read_text().strip() == cluster.primary.target
        assert not (cluster.primary.mount / ".primary").exists()
        ids = enqueue(cluster.primary.target, "emails", [b"a", b"b", b"c"])
        for node in cluster.replicas:
            cluster.wait_caught_up(node)
            jobs = [get(node.target, i) for i in ids]
            assert [j.payload for j in jobs] == [b"a", b"b", b"c"]
            assert all(j.state == pb.JOB_STATE_PENDING for j in jobs)


def test_a_direct_sqlite_write_on_a_replica_is_refused(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        replica = cluster.replicas[0]
        before = replica.txid()
        conn = apsw.Connection(str(replica.db))
        try:
            with pytest.raises(apsw.Error):  # LiteFS refuses: disk I/O error (WAL) / read-only
                conn.execute("INSERT INTO queues (name, paused, updated_at) VALUES ('sneaky', 0, 0)")
        finally:
            conn.close()
        # The same write on the primary's mount works: the refusal is LiteFS, not SQLite.
        conn = apsw.Connection(str(cluster.primary.db))
        try:
            conn.set_busy_timeout(5000)
            conn.execute("INSERT INTO queues (name, paused, updated_at) VALUES ('direct', 0, 0)")
        finally:
            conn.close()
        assert cluster.wait_caught_up(replica) > before


def test_a_killed_replica_catches_up_after_restart(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        replica = cluster.replicas[1]
        first = enqueue(cluster.primary.target, "q", [b"before"])
        cluster.wait_caught_up(replica)
        cluster.kill9(replica)
        later = enqueue(cluster.primary.target, "q", [b"while-down-%d" % i for i in range(50)])
        cluster.start(replica)
        cluster.wait_caught_up(replica)
        assert get(replica.target, first[0]).payload == b"before"
        assert get(replica.target, later[-1]).payload == b"while-down-49"


def test_read_your_writes_across_nodes_with_min_txid(tmp_path: Path) -> None:
    with Cluster(tmp_path, 3, "--min-txid-wait-seconds", "0.5") as cluster:
        with grpc.insecure_channel(cluster.primary.target) as ch:
            resp = pb_grpc.QueueServiceStub(ch).Enqueue(
                pb.EnqueueRequest(jobs=[pb.JobSpec(queue="ryw", payload=b"x")]), timeout=10
            )
        # The write's txid is the primary's LiteFS TXID after the commit.
        assert resp.txid == cluster.primary.txid()
        for node in cluster.replicas:
            with grpc.insecure_channel(node.target) as ch:
                stub = pb_grpc.QueueServiceStub(ch)
                job = stub.GetJob(pb.GetJobRequest(job_id=resp.results[0].job_id, min_txid=resp.txid), timeout=10).job
                assert job.payload == b"x"
                assert node.txid() >= resp.txid
                with pytest.raises(grpc.RpcError) as err:  # a position no node has reached
                    stub.GetQueueStats(pb.GetQueueStatsRequest(min_txid=resp.txid + 1000), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "min_txid" in (err.value.details() or "")


def test_writes_sent_to_a_replica_are_forwarded_to_the_primary(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        a, b = cluster.replicas
        with grpc.insecure_channel(a.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            resp = stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="fwd", payload=b"via-a")]), timeout=10)
            job_id = resp.results[0].job_id
            # The txid is the primary's: readable anywhere with min_txid.
            assert resp.txid <= cluster.primary.txid()
            assert get(cluster.primary.target, job_id).payload == b"via-a"
            with grpc.insecure_channel(b.target) as ch_b:
                job = pb_grpc.QueueServiceStub(ch_b).GetJob(
                    pb.GetJobRequest(job_id=job_id, min_txid=resp.txid), timeout=10
                ).job
            assert job.payload == b"via-a"
            # A worker on the primary leases it; its Ack goes through replica A.
            with grpc.insecure_channel(cluster.primary.target) as pch:
                stream = pb_grpc.QueueServiceStub(pch).Lease(pb.LeaseRequest(queues=["fwd"]), timeout=10)
                leased = next(m for m in stream if m.jobs).jobs[0]
                ack = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)]), timeout=10)
                stream.cancel()
            assert list(ack.outcomes) == [pb.LEASE_OUTCOME_OK]
            assert get(cluster.primary.target, job_id).state == pb.JOB_STATE_COMPLETED
            # Errors from the primary come back unchanged (code and field name).
            with pytest.raises(grpc.RpcError) as err:
                stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_forwarded_call_reaching_a_replica_is_refused_not_forwarded_again(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2) as cluster:
        replica = cluster.replicas[0]
        with grpc.insecure_channel(replica.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Enqueue(
                    pb.EnqueueRequest(jobs=[pb.JobSpec(queue="loop", payload=b"x")]),
                    metadata=(("edgeq-forwarded-by", "127.0.0.1:1"),), timeout=10,
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not the primary" in (err.value.details() or "")
        with grpc.insecure_channel(cluster.primary.target) as ch:
            stats = pb_grpc.QueueServiceStub(ch).GetQueueStats(pb.GetQueueStatsRequest(), timeout=10).stats
        assert all(s.queue != "loop" for s in stats)  # nothing was written


def test_a_worker_on_one_replica_gets_jobs_a_producer_enqueues_on_another(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        worker_node, producer_node = cluster.replicas
        with grpc.insecure_channel(worker_node.target) as wch:
            worker = pb_grpc.QueueServiceStub(wch)
            stream = worker.Lease(pb.LeaseRequest(queues=["edge"], worker_id="w-a", max_in_flight=10), timeout=30)
            ids = enqueue(producer_node.target, "edge", [b"1", b"2", b"3"])  # forwarded to the primary
            got: list[pb.LeasedJob] = []
            for message in stream:  # proxied by worker_node from the primary
                got.extend(message.jobs)
                if len(got) >= 3:
                    break
            assert sorted(j.job.id for j in got) == sorted(ids)
            ack = worker.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=j.lease_token) for j in got]), timeout=10)
            assert list(ack.outcomes) == [pb.LEASE_OUTCOME_OK] * 3
            # The primary goes away: the proxied stream ends with UNAVAILABLE (the worker reconnects).
            cluster.kill9(cluster.primary)
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
