"""Real LiteFS clusters (loopback, static lease): node roles and positions (GetNodeInfo),
replica health following the primary, replicated durability, the partition outbox, and
manual failover counting acknowledged writes lost with each durability setting."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from support.cluster_harness import Cluster, ConsulAgent, all_jobs, health, info, stub
from support.wait import until

from edgeq import Client, EdgeqError, Fail, JobState, Worker
from edgeq.v1 import queue_pb2 as pb

pytestmark = pytest.mark.slow

RESULTS = Path(os.environ.get("EDGEQ_FAILOVER_RESULTS", "")) if os.environ.get("EDGEQ_FAILOVER_RESULTS") else None


def test_node_info_shows_roles_primary_and_replica_positions(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        ch, s = stub(cluster.replicas[0].target)
        with ch:
            txid = s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", payload=b"x")]), timeout=10).txid
        primary = info(cluster.primary)
        assert primary.role == pb.NODE_ROLE_PRIMARY
        assert primary.address == cluster.primary.target and primary.primary == ""
        assert primary.durability == "local"
        for node in cluster.replicas:
            replica = info(node)
            assert replica.role == pb.NODE_ROLE_REPLICA
            assert replica.primary == cluster.primary.target
            assert replica.primary_reachable
        # Every replica reports its position to the primary as LiteFS applies transactions.
        until(
            lambda: sorted((r.node, r.txid >= txid) for r in info(cluster.primary).replicas)
            == sorted((n.target, True) for n in cluster.replicas),
            what="replica position reports",
        )


def test_a_replica_started_before_the_primary_created_the_database_waits_for_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2)
    try:
        primary, replica = cluster.nodes
        primary.delay_seconds = 3  # LiteFS is up (the replica can sync), edgeq is not yet
        cluster.start(primary, wait=False)
        cluster.start(replica, wait=False)
        time.sleep(1.5)
        assert replica.proc is not None and replica.proc.poll() is None  # waiting, not crashed
        assert not primary.db.exists()
        cluster.wait_serving(primary, 60)
        cluster.wait_serving(replica, 60)
        ch, s = stub(replica.target)
        with ch:
            txid = s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="q", payload=b"x")]), timeout=10).txid
        assert [j.payload for j in all_jobs(replica.target, "q", txid)] == [b"x"]
        assert "waiting for the primary to create" in replica.log.read_text()
    finally:
        cluster.close()


def test_replica_health_follows_whether_the_primary_answers(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2) as cluster:
        replica = cluster.replicas[0]
        assert health(replica) == health_pb2.HealthCheckResponse.SERVING
        # Readiness by role: "edgeq.primary" is SERVING only where writes are applied.
        until(lambda: health(cluster.primary, "edgeq.primary") == health_pb2.HealthCheckResponse.SERVING,
              what="the primary's edgeq.primary SERVING")
        assert health(replica, "edgeq.primary") == health_pb2.HealthCheckResponse.NOT_SERVING
        pid = cluster.primary.server_pid()
        assert health(replica, "edgeq.live") == health_pb2.HealthCheckResponse.SERVING
        os.kill(pid, signal.SIGSTOP)  # the primary's edgeq hangs; LiteFS itself still replicates
        try:
            until(lambda: health(replica) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
            assert not info(replica).primary_reachable
            # Not ready, still live: restarting a replica would not bring the primary back.
            assert health(replica, "edgeq.live") == health_pb2.HealthCheckResponse.SERVING
        finally:
            os.kill(pid, signal.SIGCONT)
        until(lambda: health(replica) == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")


def test_replicated_durability_answers_after_a_replica_applied_the_write(tmp_path: Path) -> None:
    args = ("--durability", "replicated", "--durability-timeout-seconds", "1")
    with Cluster(tmp_path, 3, *args) as cluster:
        until(lambda: len(info(cluster.primary).replicas) == 2, what="both replicas reporting")
        ch, s = stub(cluster.replicas[0].target)
        with ch:
            for i in range(20):
                txid = s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="d", payload=b"%d" % i)]), timeout=10).txid
                # Already applied on at least one replica when the write was acknowledged.
                assert max(n.txid() for n in cluster.replicas) >= txid
        assert info(cluster.primary).durability == "replicated"
        ch, s = stub(cluster.primary.target)
        with ch:  # a job leased while the replicas are up, acked once they are gone
            stream = s.Lease(pb.LeaseRequest(queues=["d"], worker_id="w", max_in_flight=1))
            leased = next(m for m in stream if m.jobs).jobs[0]
            stream.cancel()
        for node in cluster.replicas:
            cluster.stop(node)
        ch, s = stub(cluster.primary.target)
        request = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="d", payload=b"alone", idempotency_key="k")])
        with ch:
            # Every write waits for the replicas, not only Enqueue: an Ack too.
            with pytest.raises(grpc.RpcError) as err:
                s.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)]), timeout=10)
            assert err.value.code() == grpc.StatusCode.ABORTED, err.value.details()
            # Fault 2: "committed, not confirmed" is not UNAVAILABLE ("not written", which
            # clients retry blindly): ABORTED with ErrorInfo COMMITTED_NOT_REPLICATED.
            with pytest.raises(grpc.RpcError) as err:
                s.Enqueue(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.ABORTED
            assert "replica" in (err.value.details() or "")
            rich = rpc_status.from_call(err.value)  # type: ignore[arg-type]
            assert rich is not None
            info_detail = error_details_pb2.ErrorInfo()
            assert rich.details[0].Unpack(info_detail)
            assert (info_detail.reason, info_detail.domain) == ("COMMITTED_NOT_REPLICATED", "edgeq.v1")
            committed_at = int(info_detail.metadata["txid"])
            # Committed on the primary all the same: a retry with the key finds it, not a twin;
            # and once a replica is back, the retry is confirmed.
            assert [j.payload for j in all_jobs(cluster.primary.target, "d")][-1] == b"alone"
            first = [j.id for j in all_jobs(cluster.primary.target, "d") if j.idempotency_key == "k"]
            cluster.start(cluster.replicas[0])
            retried = s.Enqueue(request, timeout=20)
            assert retried.results[0].duplicate and retried.results[0].job_id == first[0]
            assert retried.txid >= committed_at
            assert [j.id for j in all_jobs(cluster.primary.target, "d") if j.idempotency_key == "k"] == first


def test_outbox_buffers_enqueues_while_the_primary_hangs_and_drains_them_once_in_order(tmp_path: Path) -> None:
    args = ("--outbox-path", "{dir}/outbox.db", "--outbox-forward-timeout-seconds", "0.5")
    with Cluster(tmp_path, 2, *args) as cluster:
        replica = cluster.replicas[0]
        pid = cluster.primary.server_pid()
        os.kill(pid, signal.SIGSTOP)
        answers = []
        try:
            ch, s = stub(replica.target)
            with ch:
                for i in range(30):
                    spec = pb.JobSpec(queue="out", payload=b"%03d" % i)
                    if i == 7:
                        spec.idempotency_key = "mine-7"
                    answers.append(s.Enqueue(pb.EnqueueRequest(jobs=[spec]), timeout=10))
                # A bad request is refused on the spot, naming the field, and not buffered.
                with pytest.raises(grpc.RpcError) as err:
                    s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="", payload=b"x")]), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "jobs[0].queue" in (err.value.details() or "")
            assert all(a.buffered and a.txid == 0 and len(a.results[0].job_id) == 36 for a in answers)
            assert all(a.accepted_at_edge and a.accepted_by == replica.target for a in answers)
            keys = [a.results[0].idempotency_key for a in answers]
            assert keys[7] == "mine-7" and all(k == "" for i, k in enumerate(keys) if i != 7)
            assert info(replica).outbox_pending == 30 and info(replica).edge_log_jobs == 30
        finally:
            os.kill(pid, signal.SIGCONT)
        until(lambda: info(replica).outbox_pending == 0, what="outbox drained")
        jobs = all_jobs(cluster.primary.target, "out")
        # Exactly once and in the order the replica accepted them, with their keys.
        assert [j.payload for j in jobs] == [b"%03d" % i for i in range(30)]
        assert [j.idempotency_key for j in jobs] == keys
        # Stored under the ids the replica answered with when it buffered them.
        assert [j.id for j in jobs] == [a.results[0].job_id for a in answers]
        # With the primary back, Enqueue through the replica is forwarded again.
        ch, s = stub(replica.target)
        with ch:
            resp = s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="out", payload=b"after")]), timeout=10)
        assert not resp.buffered and resp.results[0].job_id and resp.txid


def _produce(target: str, name: str, stop: threading.Event, acked: list[str], errors: list[str]) -> None:
    ch, s = stub(target)
    with ch:
        i = 0
        while not stop.is_set():
            key = f"{name}-{i}"
            try:
                s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="fo", payload=key.encode(), idempotency_key=key)]),
                          timeout=2)
                acked.append(key)
            except grpc.RpcError as exc:
                errors.append(str(exc.code()))
                time.sleep(0.01)
            i += 1


@pytest.mark.parametrize("durability", ["local", "replicated"])
def test_failover_promote_a_replica_and_count_acknowledged_writes_lost(tmp_path: Path, durability: str) -> None:
    """Async replication loses what the replicas had not applied when the primary died. Make
    that window wide on purpose: kill -9 both replicas, keep writing to the primary for a
    while, kill -9 the primary, then promote a replica (static lease: restart it as the
    candidate, repoint the other). "local" acknowledges those writes and loses them;
    "replicated" refuses to acknowledge them, so nothing acknowledged is lost."""
    args = ("--durability", durability, "--durability-timeout-seconds", "1", "--drain-seconds", "1",
            "--grace-seconds", "1")
    with Cluster(tmp_path, 3, *args) as cluster:
        until(lambda: len(info(cluster.primary).replicas) == 2, what="both replicas reporting")
        old = cluster.primary
        acked: list[str] = []
        errors: list[str] = []
        stop = threading.Event()
        producers = [
            threading.Thread(target=_produce, args=(old.target, f"p{i}", stop, acked, errors)) for i in range(4)
        ]
        for t in producers:
            t.start()
        try:
            until(lambda: len(acked) >= 300, what="300 acknowledged enqueues")
            for node in cluster.replicas:
                cluster.kill9(node)
            # A write a replica confirmed just before it died is answered a moment later: let
            # those answers arrive before counting what the primary acknowledges on its own.
            time.sleep(0.5)
            replicated_part = len(acked)
            time.sleep(1.5)  # writes only the primary has
            acked_alone = len(acked) - replicated_part
            cluster.kill9(old)
            killed_at = time.monotonic()
        finally:
            stop.set()
            for t in producers:
                t.join()
        acked_before_kill = set(acked)
        assert len(acked_before_kill) == len(acked) >= 300
        # Promote the most caught-up replica (the static-lease procedure in docs/operations.md).
        # Both are down: their positions are the newest LTX files in their data dirs.
        new, other = sorted(cluster.replicas, key=lambda n: n.stored_txid(), reverse=True)
        cluster.promote(new, [other])
        assert info(new).role == pb.NODE_ROLE_PRIMARY and info(other).primary == new.target
        # Serving again: an enqueue through the other replica is forwarded to the new primary.
        with Client(other.target) as client:
            back = client.enqueue("fo", b"after-failover")
            outage = time.monotonic() - killed_at
            stored = {j.payload.decode() for j in all_jobs(new.target, "fo", back.txid)}
            # And a worker connected through the other replica processes it.
            done = threading.Event()

            def handle(job: object) -> None:
                if getattr(job, "payload", b"") == b"after-failover":
                    done.set()

            with Worker(other.target, ["fo"], handle, concurrency=4):
                assert done.wait(30)
        lost = sorted(acked_before_kill - stored)
        report = {"durability": durability, "acked": len(acked_before_kill), "acked_with_replicas_down": acked_alone,
                  "lost": len(lost), "failed_calls": len(errors), "restart_to_serving_seconds": round(outage, 2)}
        print("failover:", json.dumps(report))
        if RESULTS is not None:
            with RESULTS.open("a") as f:
                f.write(json.dumps(report) + "\n")
        if durability == "replicated":
            assert acked_alone == 0
            assert lost == [], f"acknowledged writes lost under replicated durability: {lost[:10]}"
        else:
            assert acked_alone > 0
            # Every write only the dead primary had is gone. (Up to one call per producer can
            # have been replicated before the replicas died and acknowledged after.)
            assert len(lost) >= acked_alone - len(producers) > 0


def test_consul_lease_fails_over_by_itself_and_a_worker_on_a_replica_resumes(tmp_path: Path) -> None:
    """Real Consul (dev agent, 1 s session TTL): kill -9 the primary; the other candidate
    takes the lease, the non-candidate replica follows it, a worker connected through that
    replica resumes, and enqueues through any node succeed. Reports the write outage."""
    with ConsulAgent(tmp_path) as consul:
        cluster = Cluster(tmp_path, 3, "--drain-seconds", "1", "--grace-seconds", "1", consul=consul)
        cluster.nodes[2].consul_candidate = False  # node 3 only ever replicates
        with cluster:
            old, heir, follower = cluster.nodes
            assert info(old).role == pb.NODE_ROLE_PRIMARY
            assert info(follower).primary == old.target
            seen: list[bytes] = []
            got = threading.Event()

            def handle(job: object) -> None:
                seen.append(getattr(job, "payload", b""))
                got.set()

            with Client(follower.target, timeout=2) as client, Worker(follower.target, ["cf"], handle, concurrency=2):
                client.enqueue("cf", b"before")
                assert got.wait(20)
                got.clear()
                cluster.kill9(old)
                killed_at = time.monotonic()
                while True:  # the write outage, as a producer on the replica sees it
                    try:
                        client.enqueue("cf", b"after", idempotency_key="after")
                        break
                    except EdgeqError:  # UNAVAILABLE / deadline until a primary is back
                        if time.monotonic() - killed_at > 60:
                            raise
                        time.sleep(0.05)
                outage = time.monotonic() - killed_at
                cluster.primary = heir
                assert info(heir).role == pb.NODE_ROLE_PRIMARY
                assert info(follower).primary == heir.target
                # The worker on the replica resumes: its proxied stream ended when the primary
                # changed, it reconnected, and the new primary delivers the job.
                assert got.wait(30), f"worker did not resume; saw {seen}"
                assert seen == [b"before", b"after"]
            # Enqueue through each surviving node works.
            for node in (heir, follower):
                ch, s = stub(node.target)
                with ch:
                    assert s.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="cf2", payload=b"x")]), timeout=10).txid
    report = {"consul_failover_write_outage_seconds": round(outage, 2)}
    print("failover:", json.dumps(report))
    if RESULTS is not None:
        with RESULTS.open("a") as f:
            f.write(json.dumps(report) + "\n")


def test_the_dashboard_on_a_replica_reads_locally_and_forwards_actions(tmp_path: Path) -> None:
    """``--http-port`` on a replica of a real 2-node LiteFS cluster: the cluster page shows
    this node as a replica and the primary's view (its replica list); the dead-jobs page
    lists a job failed on the primary once replicated; its Retry (a POST with the page's
    CSRF token) is forwarded to the primary, which stores it."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    from support.cluster_harness import free_port

    cluster = Cluster(tmp_path, 2)
    http_port = free_port()
    cluster.nodes[1].extra_args = ["--http-port", str(http_port)]
    with cluster:
        replica = cluster.replicas[0]
        with Client(cluster.primary.target, timeout=5) as client:
            job_id = client.enqueue("dash", b'{"n": 1}', max_attempts=1).job_id

            def fail(job: object) -> None:
                raise Fail("broken")

            with Worker(replica.target, ["dash"], fail, concurrency=1):
                until(lambda: client.get(job_id).state == JobState.FAILED, what="failed")
        base = f"http://127.0.0.1:{http_port}"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        cluster_page = opener.open(f"{base}/cluster", timeout=10).read().decode()
        assert "This node" in cluster_page and ">replica<" in cluster_page
        assert "The primary" in cluster_page and replica.target in cluster_page  # the primary lists it
        def dead_page() -> str | None:
            page = opener.open(f"{base}/dead", timeout=10).read().decode()
            return page if job_id in page else None

        page = until(dead_page, what="the failed job on the replica's dead page")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        body = urllib.parse.urlencode({"csrf": csrf.group(1), "back": "/dead"}).encode()
        with opener.open(f"{base}/jobs/{job_id}/retry", data=body, timeout=10) as answer:
            assert "notice=retry" in answer.url
        with Client(cluster.primary.target, timeout=5) as client:
            assert client.get(job_id).state == JobState.PENDING
