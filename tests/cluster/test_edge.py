"""Edge durability on real LiteFS clusters (loopback, static lease): Enqueue acknowledged
once fsynced in the answering node's edge log, on a replica and on the primary; GetJob
finds the job there at once (ACCEPTED) and everywhere once drained, under the same id;
coalesced drains in acceptance order, exactly once across kill -9 and SIGSTOP; the same
idempotency key at two nodes ends as one job both ids name; the size cap; permanent
refusals; visibility (GetNodeInfo, GetQueueStats, health)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from support.cluster_harness import Cluster, ConsulAgent, Node, all_jobs, health, info, stub
from support.wait import until

from edgeq import Client, JobState
from edgeq.v1 import queue_pb2 as pb

pytestmark = pytest.mark.slow

EDGE = ("--durability", "edge")


def enqueue(node: Node, *specs: pb.JobSpec, durability: int = 0) -> pb.EnqueueResponse:
    ch, s = stub(node.target)
    with ch:
        return s.Enqueue(pb.EnqueueRequest(jobs=list(specs), durability=durability), timeout=10)  # type: ignore[arg-type]


def get_job(node: Node, job_id: str, min_txid: int = 0) -> pb.Job:
    ch, s = stub(node.target)
    with ch:
        return s.GetJob(pb.GetJobRequest(job_id=job_id, min_txid=min_txid), timeout=10).job


def lease_and_ack(node: Node, queue: str) -> str:
    """Lease one job of ``queue`` through ``node`` and ack it; its id."""
    ch, s = stub(node.target)
    with ch:
        call = s.Lease(pb.LeaseRequest(queues=[queue], worker_id="w", max_in_flight=1), timeout=30)
        for msg in call:
            if msg.jobs:
                leased = msg.jobs[0]
                s.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)]), timeout=10)
                call.cancel()
                return str(leased.job.id)
    raise AssertionError("the Lease stream ended without a job")


@contextmanager
def primary_stopped(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP the primary's edgeq server: nothing reaches it, the drain waits."""
    pid = cluster.primary.server_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_edge_enqueue_is_answered_by_the_replica_and_the_primary_and_reaches_every_node_once(tmp_path: Path) -> None:
    with Cluster(tmp_path, 3, *EDGE) as cluster:
        answered: list[tuple[Node, pb.EnqueueResponse]] = []
        for node in cluster.nodes:
            for i in range(5):
                resp = enqueue(node, pb.JobSpec(queue="e", payload=f"{node.index}-{i}".encode()))
                assert resp.accepted_at_edge and resp.buffered and resp.txid == 0
                assert resp.accepted_by == node.target
                job_id = resp.results[0].job_id
                assert uuid.UUID(job_id).version == 7 and not resp.results[0].duplicate
                answered.append((node, resp))
                # The accepting node finds it at once: still at the edge, or already drained.
                assert get_job(node, job_id).state in (pb.JOB_STATE_ACCEPTED, pb.JOB_STATE_PENDING)
        ids = [r.results[0].job_id for _, r in answered]
        until(lambda: all(info(n).edge_log_jobs == 0 for n in cluster.nodes), what="edge logs drained")
        for node in cluster.nodes:
            stored = all_jobs(node.target, "e", min_txid=cluster.primary.txid())
            assert sorted(j.id for j in stored) == sorted(ids)  # exactly once, under the answered ids
            for job_id in ids:
                assert get_job(node, job_id).state == pb.JOB_STATE_PENDING
        # Per node, in the order it accepted them.
        stored_order = [j.payload for j in all_jobs(cluster.primary.target, "e")]
        for node in cluster.nodes:
            mine = [p for p in stored_order if p.startswith(b"%d-" % node.index)]
            assert mine == [f"{node.index}-{i}".encode() for i in range(5)]
        assert info(cluster.replicas[0]).durability == "edge"


def test_a_request_overrides_the_server_default_both_ways(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2) as cluster:  # server default: local
        replica = cluster.replicas[0]
        local = enqueue(replica, pb.JobSpec(queue="o", payload=b"l"))
        assert not local.accepted_at_edge and local.txid > 0
        edge = enqueue(replica, pb.JobSpec(queue="o", payload=b"e"), durability=pb.DURABILITY_EDGE)
        assert edge.accepted_at_edge and edge.txid == 0 and edge.accepted_by == replica.target
        until(lambda: get_job(replica, edge.results[0].job_id).state == pb.JOB_STATE_PENDING, what="drained")
    with Cluster(tmp_path / "b", 2, *EDGE) as cluster:
        replica = cluster.replicas[0]
        local = enqueue(replica, pb.JobSpec(queue="o", payload=b"l"), durability=pb.DURABILITY_LOCAL)
        assert not local.accepted_at_edge and local.txid > 0
        assert get_job(cluster.primary, local.results[0].job_id, min_txid=local.txid).state == pb.JOB_STATE_PENDING


def test_while_no_primary_answers_the_replica_accepts_shows_and_counts_jobs_then_drains_them_coalesced(
    tmp_path: Path,
) -> None:
    with Cluster(tmp_path, 2, *EDGE) as cluster:
        replica = cluster.replicas[0]
        before = cluster.primary.txid()
        with primary_stopped(cluster):
            ids = []
            t0 = time.monotonic()
            for i in range(300):
                spec = pb.JobSpec(queue="p" if i % 2 else "q", payload=b"%03d" % i)
                if i == 5:
                    spec.delay.FromSeconds(3600)
                ids.append(enqueue(replica, spec).results[0].job_id)
            assert time.monotonic() - t0 < 30  # no waiting on the stopped primary
            job = get_job(replica, ids[3])
            assert job.state == pb.JOB_STATE_ACCEPTED and job.id == ids[3] and job.payload == b"003"
            assert job.queue == "p" and job.max_attempts == 3 and job.created_at.seconds > 0
            # The delay counts from acceptance, not from the drain.
            delayed = get_job(replica, ids[5])
            assert delayed.run_at.seconds - delayed.created_at.seconds in (3599, 3600)
            node = info(replica)
            assert node.edge_log_jobs == 300 and node.edge_log_bytes > 0
            assert node.edge_log_capacity_bytes == 1024 * 1024 * 1024
            assert node.edge_log_oldest_age.ToNanoseconds() > 0
            ch, s = stub(replica.target)
            with ch:
                stats = {q.queue: q for q in s.GetQueueStats(pb.GetQueueStatsRequest(), timeout=10).stats}
            assert stats["p"].accepted == 150 and stats["q"].accepted == 150
            assert health(replica) == health_pb2.HealthCheckResponse.SERVING  # the edge log accepts
            with Client(replica.target, timeout=5, durability="edge") as client:  # the SDK's view
                sdk = client.enqueue("sdk", b"via the SDK")
                assert sdk.accepted_at_edge and sdk.accepted_by == replica.target and sdk.txid == 0
                assert client.get(sdk.job_id).state is JobState.ACCEPTED
                assert client.node_info().edge_log_jobs == 301
        until(lambda: info(replica).edge_log_jobs == 0, what="edge log drained")
        assert info(replica).edge_log_drain_rate > 0
        with Client(replica.target, timeout=5) as client:
            assert client.get(sdk.job_id).state is JobState.PENDING
        stored = all_jobs(cluster.primary.target, "p") + all_jobs(cluster.primary.target, "q")
        assert sorted(j.id for j in stored) == sorted(ids)
        # Coalesced: 300 single-job Enqueues reached the primary in a few transactions.
        assert cluster.primary.txid() - before < 30
        # In acceptance order per queue.
        p = all_jobs(cluster.primary.target, "p")
        assert [j.payload for j in p] == [b"%03d" % i for i in range(1, 300, 2)]
        # Read-your-writes on the accepting node after the hand-over.
        assert get_job(replica, ids[3]).state == pb.JOB_STATE_PENDING


def test_the_same_key_at_two_nodes_ends_as_one_job_that_both_ids_name(tmp_path: Path) -> None:
    with Cluster(tmp_path, 3, *EDGE) as cluster:
        a, b = cluster.replicas
        with primary_stopped(cluster):
            first = enqueue(a, pb.JobSpec(queue="k", payload=b"a", idempotency_key="order-1")).results[0]
            again = enqueue(a, pb.JobSpec(queue="k", payload=b"a2", idempotency_key="order-1")).results[0]
            assert again.duplicate and again.job_id == first.job_id  # same node: known at once
            other = enqueue(b, pb.JobSpec(queue="k", payload=b"b", idempotency_key="order-1")).results[0]
            assert not other.duplicate and other.job_id != first.job_id  # the window: b cannot know yet
        until(lambda: info(a).edge_log_jobs == 0 and info(b).edge_log_jobs == 0, what="drained")
        stored = [j for j in all_jobs(cluster.primary.target, "k", min_txid=cluster.primary.txid())]
        assert len(stored) == 1
        for node in cluster.nodes:
            until(lambda n=node: n.txid() >= cluster.primary.txid(), what="replicated")  # type: ignore[misc]
            assert get_job(node, first.job_id).id == get_job(node, other.job_id).id == stored[0].id
        # Once stored, a third node answers with the stored id (duplicate) at once.
        late = enqueue(cluster.primary, pb.JobSpec(queue="k", payload=b"c", idempotency_key="order-1")).results[0]
        assert late.duplicate and late.job_id == stored[0].id


def test_a_full_edge_log_refuses_with_retry_info_and_stores_nothing_more(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2, *EDGE, "--edge-log-max-bytes", "2000") as cluster:
        replica = cluster.replicas[0]
        with primary_stopped(cluster):
            accepted = []
            with pytest.raises(grpc.RpcError) as err:
                for i in range(100):
                    accepted.append(enqueue(replica, pb.JobSpec(queue="f", payload=b"x" * 100 + b"%03d" % i)))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(err.value)
            assert status is not None
            kinds = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
            reason = error_details_pb2.ErrorInfo()
            kinds["google.rpc.ErrorInfo"].Unpack(reason)
            assert reason.reason == "EDGE_LOG_FULL"
            assert "google.rpc.RetryInfo" in kinds
            assert 5 < len(accepted) < 20
            assert info(replica).edge_log_bytes <= 2000
        until(lambda: info(replica).edge_log_jobs == 0, what="drained")
        assert sorted(j.id for j in all_jobs(cluster.primary.target, "f")) == sorted(
            a.results[0].job_id for a in accepted
        )


def test_a_request_the_primary_refuses_for_good_is_kept_dead_and_the_rest_drain(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2, *EDGE)
    cluster.primary.extra_args = ["--max-payload-bytes", "1000"]  # the replica takes 1 MiB
    with cluster:
        replica = cluster.replicas[0]
        with primary_stopped(cluster):
            ok1 = enqueue(replica, pb.JobSpec(queue="r", payload=b"small-1")).results[0].job_id
            bad = enqueue(replica, pb.JobSpec(queue="r", payload=b"x" * 5000)).results[0].job_id
            ok2 = enqueue(replica, pb.JobSpec(queue="r", payload=b"small-2")).results[0].job_id
        until(lambda: info(replica).edge_log_jobs == 0, what="drained")
        assert info(replica).outbox_dead == 1
        assert [j.id for j in all_jobs(cluster.primary.target, "r")] == [ok1, ok2]
        refused = get_job(replica, bad)
        assert refused.state == pb.JOB_STATE_FAILED and "refused by the primary" in refused.error_message


def test_kill9_of_a_replica_with_a_full_edge_log_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2, *EDGE) as cluster:
        replica = cluster.replicas[0]
        with primary_stopped(cluster):
            ids = [enqueue(replica, pb.JobSpec(queue="x", payload=b"%d" % i)).results[0].job_id for i in range(50)]
            cluster.kill9(replica)
        cluster.start(replica)
        until(lambda: info(replica).edge_log_jobs == 0, timeout=60, what="drained after restart")
        assert [j.id for j in all_jobs(cluster.primary.target, "x")] == ids


@pytest.mark.parametrize("keep", [0, 60])
def test_a_stale_replica_that_wins_the_lease_gets_back_what_the_edge_logs_drained(tmp_path: Path, keep: int) -> None:
    """LiteFS gives the lease to the first candidate that takes the Consul lock, not the most
    up to date. Node 2 (a candidate) is down while 40 jobs are enqueued at the edge of the
    primary (node 1) and of a replica (node 3, not a candidate) and drained with replicated
    durability (node 3 applied them); then the primary is killed and node 2 restarts and
    takes the lease without them; node 3 is re-snapshotted from it. With the edge logs
    keeping drained requests (``--edge-log-keep-seconds 60``) node 3 offers its 20 to the
    new primary when it sees it, node 1 its 20 when it restarts: all 40 exist once. With
    ``0`` (deleted once stored) the same run loses all 40: the fault is real.

    Also a key twin (a producer that timed out at one edge and retried the key at another:
    two edge ids, one job) that a worker leased and acked before the rollback: after the
    re-offers it is one job again, both ids name it, and it is PENDING — it runs again (what
    the chaos checker counts as an ack kept, not lost)."""
    with ConsulAgent(tmp_path) as consul:
        cluster = Cluster(tmp_path, 3, *EDGE, "--edge-log-keep-seconds", str(keep), consul=consul)
        cluster.nodes[2].consul_candidate = False
        with cluster:
            old, stale, follower = cluster.nodes
            assert info(old).role == pb.NODE_ROLE_PRIMARY
            cluster.kill9(stale)
            ids = [enqueue(n, pb.JobSpec(queue="s", payload=b"%d" % i)).results[0].job_id
                   for i in range(20) for n in (old, follower)]
            until(lambda: info(old).edge_log_jobs == 0 and info(follower).edge_log_jobs == 0,
                  timeout=30, what="both edge logs drained")
            until(lambda: len(all_jobs(follower.target, "s")) == 40, timeout=30, what="node 3 applied all 40")
            # The twin: with node 1 dead (node 2 still down) node 3 accepts the key at its edge
            # and dies with it undrained; node 1 comes back as the primary and stores the same
            # key under its own id, which a worker leases and acks; node 3 comes back and its
            # copy drains as an alias of node 1's.
            spec = pb.JobSpec(queue="t", payload=b"twin", idempotency_key="twin")
            cluster.kill9(old)
            twin = [enqueue(follower, spec).results[0].job_id]
            cluster.kill9(follower)
            cluster.start(old)
            until(lambda: info(old).role == pb.NODE_ROLE_PRIMARY, timeout=60, what="node 1 primary again")
            twin.append(enqueue(old, spec).results[0].job_id)
            assert twin[0] != twin[1]  # each edge gave its own id
            assert lease_and_ack(old, "t") == twin[1]
            cluster.start(follower)
            until(lambda: info(follower).edge_log_jobs == 0, timeout=60, what="node 3's twin drained")
            until(lambda: len({get_job(old, j).id for j in twin}) == 1, timeout=30, what="the twin an alias")
            until(lambda: len(all_jobs(follower.target, "t")) == 1, timeout=30, what="node 3 applied the ack")
            cluster.kill9(old)
            cluster.start(stale)  # node 1 is dead: node 2 cannot catch up, and takes the lease
            cluster.primary = stale
            until(lambda: info(stale).role == pb.NODE_ROLE_PRIMARY, timeout=60, what="node 2 primary")
            until(lambda: info(follower).primary == stale.target, timeout=60, what="node 3 follows node 2")
            cluster.start(old)  # rejoins as a replica of node 2
            until(lambda: info(old).primary == stale.target, timeout=60, what="node 1 follows node 2")
            if keep:
                until(lambda: sorted(j.id for j in all_jobs(stale.target, "s")) == sorted(ids), timeout=60,
                      what="all 40 jobs on the new primary")
                assert "offering it again" in follower.log.read_text()
                until(lambda: len({get_job(stale, j).id for j in twin}) == 1, timeout=60,
                      what="both twin ids name one job again")
                (again,) = all_jobs(stale.target, "t")
                assert again.id in twin and again.state == pb.JOB_STATE_PENDING  # the acked work runs again
            else:
                time.sleep(3)  # what a re-offer would have needed, and more
                assert all_jobs(stale.target, "s") == []
