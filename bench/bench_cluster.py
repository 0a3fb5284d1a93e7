"""edgeq on a real 3-node LiteFS cluster (loopback, static lease; tests/support/cluster_harness.py):

  1. single Enqueue latency, one client: direct on the primary vs forwarded by a replica
  2. Enqueue throughput through the LiteFS mount with 16 concurrent producers, calls of
     1, 10 and 50 jobs, on the primary and via a replica, and 64/128 single-job producers;
     with the CPU seconds each kind of process used during the run (2 cores shared by all)
  3. replication lag: primary commit (Enqueue reply) -> replica's <db>-pos reaches that TXID
  4. the same latency and throughput with --durability replicated
  5. --durability edge (issue 10): single Enqueue on a replica and on the primary; 16 and 64
     single-job producers on a replica against a single-node server on a plain file driven
     the same way in the same run (the ratio); drain lag (edge ack -> row visible in the
     primary's database) at 1,000 jobs/s; edge Enqueue on a replica -> job on a worker's
     Lease stream (through the same replica); a partitioned replica (primary's edgeq
     SIGSTOPped): its Enqueue latency, then a 100k-job backlog drained after healing, the
     rate and an exactly-once check of every id it answered against the primary's rows

Usage:  bash scripts/test (builds LiteFS once), then
        .venv/bin/python bench/bench_cluster.py [--out bench/results/NAME.json] [--only edge]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.cluster_harness import Cluster

from bench import PAYLOAD, ServerProcess, concurrent_enqueue, grpc_floor_latency, pct, single_enqueue_latency

EDGE = pb.DURABILITY_EDGE

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def producers(cluster: Cluster, target: str, batch: int, seconds: float = 5, count: int = 16) -> dict[str, object]:
    """``count`` producers; CPU seconds used by the LiteFS daemons, the edgeq servers and this
    (client) process during the run."""
    pids = {
        "litefs": [n.proc.pid for n in cluster.nodes if n.proc],
        "edgeq": [n.server_pid() for n in cluster.nodes],
    }
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    client_before = time.process_time()
    t0 = time.perf_counter()
    result: dict[str, object] = dict(asyncio.run(concurrent_enqueue(target, count, seconds, batch)))
    wall = time.perf_counter() - t0
    used = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
    used["bench_client"] = time.process_time() - client_before
    result["cpu_cores_busy"] = {k: round(v / wall, 2) for k, v in used.items()}
    return result


def replication_lag(cluster: Cluster, n: int) -> dict[str, float]:
    replica = cluster.replicas[0]
    lags = []
    with grpc.insecure_channel(cluster.primary.target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        for _ in range(n):
            txid = stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="lag", payload=PAYLOAD)])).txid
            t0 = time.perf_counter()
            while replica.txid() < txid:
                time.sleep(0.0002)
            lags.append(time.perf_counter() - t0)
    return {"samples": n, "p50_ms": pct(lags, 0.5) * 1e3, "p99_ms": pct(lags, 0.99) * 1e3}


def wait_reports(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.primary.target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        while len(stub.GetNodeInfo(pb.GetNodeInfoRequest()).replicas) < len(cluster.replicas):
            time.sleep(0.1)


def primary_rows(cluster: Cluster, queue: str) -> list[str]:
    """Job ids of ``queue`` in the primary's database, read from its file."""
    import apsw

    conn = apsw.Connection(str(cluster.primary.db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [str(r[0]) for r in conn.execute("SELECT id FROM jobs WHERE queue_name = ?", (queue,))]
    finally:
        conn.close()


def drain_lag(cluster: Cluster, rate: float, seconds: float, producers: int = 8) -> dict[str, float]:
    """Edge Enqueues on a replica at ``rate`` jobs/s in all (``producers`` paced aio
    producers); a thread polls the primary's database every ms and notes when each job's
    row appears: lag = seen - edge ack."""
    import threading

    import apsw

    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        conn = apsw.Connection(str(cluster.primary.db), flags=apsw.SQLITE_OPEN_READONLY)
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM jobs").get
        while not stop.is_set():
            for rowid, job_id in conn.execute("SELECT rowid, id FROM jobs WHERE rowid > ? ORDER BY rowid", (last,)):
                seen.setdefault(str(job_id), time.perf_counter())
                last = rowid
            time.sleep(0.001)
        conn.close()

    async def produce() -> float:
        async with grpc.aio.insecure_channel(cluster.replicas[0].target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="drainlag", payload=PAYLOAD)], durability=EDGE)
            t0 = time.perf_counter()
            each = rate / producers

            async def one() -> None:
                for i in range(int(each * seconds)):
                    delay = t0 + i / each - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    resp = await stub.Enqueue(req)
                    acked[resp.results[0].job_id] = time.perf_counter()

            await asyncio.gather(*(one() for _ in range(producers)))
            return time.perf_counter() - t0

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sent = asyncio.run(produce())
    deadline = time.monotonic() + 30
    while len(seen.keys() & acked.keys()) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    watcher.join()
    lags = [seen[j] - t for j, t in acked.items() if j in seen]
    return {"jobs": len(acked), "rate_jobs_per_s": len(acked) / sent, "seen": len(lags),
            "p50_ms": pct(lags, 0.5) * 1e3, "p99_ms": pct(lags, 0.99) * 1e3, "max_ms": max(lags) * 1e3}


def edge_to_worker(cluster: Cluster, n: int) -> dict[str, float]:
    """Edge Enqueue on a replica -> the job on a Lease stream opened on that replica."""
    target = cluster.replicas[0].target
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        stream = stub.Lease(pb.LeaseRequest(queues=["e2w"], worker_id="bench", max_in_flight=10))
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="e2w", payload=PAYLOAD)], durability=EDGE))
            while True:
                msg = next(stream)
                if msg.jobs:
                    break
            lat.append(time.perf_counter() - t0)
            stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=j.lease_token) for j in msg.jobs]))
        stream.cancel()
    return {"samples": n, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


async def _fill(target: str, jobs: int, batch: int, producers: int) -> list[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="backlog", payload=PAYLOAD)] * batch, durability=EDGE)
        ids: list[str] = []
        calls = jobs // batch

        async def one(share: int) -> None:
            for _ in range(share):
                resp = await stub.Enqueue(req)
                ids.extend(r.job_id for r in resp.results)

        await asyncio.gather(*(one(calls // producers + (i < calls % producers)) for i in range(producers)))
        return ids


def partitioned_backlog(cluster: Cluster, jobs: int) -> dict[str, object]:
    """SIGSTOP the primary's edgeq (the replica cannot reach it): the replica's Enqueue
    latency, a ``jobs`` backlog, then SIGCONT and the drain: rate and exactly-once."""
    import signal

    replica = cluster.replicas[0]
    pid = cluster.primary.server_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        latency = single_enqueue_latency(replica.target, 1000, EDGE)
        t0 = time.perf_counter()
        ids = asyncio.run(_fill(replica.target, jobs, 10, 16))
        fill = time.perf_counter() - t0
        depth = info(replica).edge_log_jobs
    finally:
        os.kill(pid, signal.SIGCONT)
    t0 = time.perf_counter()
    while info(replica).edge_log_jobs > 0:
        time.sleep(0.02)
    drained = time.perf_counter() - t0
    rows = primary_rows(cluster, "backlog")
    return {
        "enqueue_while_partitioned": latency, "backlog_jobs": depth, "fill_jobs_per_s": jobs / fill,
        "drain_seconds": drained, "drain_jobs_per_s": depth / drained,
        "answered_ids": len(ids), "stored_rows": len(rows), "distinct_stored": len(set(rows)),
        "lost": len(set(ids) - set(rows)), "duplicated": len(rows) - len(set(rows)),
        "unexpected": len(set(rows) - set(ids)),
    }


def info(node: object) -> pb.GetNodeInfoResponse:
    with grpc.insecure_channel(node.target) as ch:  # type: ignore[attr-defined]
        return pb_grpc.QueueServiceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)


def edge(results: dict[str, object], backlog: int) -> None:
    results["grpc_floor_unary"] = grpc_floor_latency(2000)
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(os.path.join(d, "single.db"))
        try:
            results["single_node_enqueue"] = single_enqueue_latency(srv.target, 1000)
            for count in (16, 64):
                results[f"single_node_{count}_producers_batch1"] = asyncio.run(
                    concurrent_enqueue(srv.target, count, 5)
                )
        finally:
            srv.stop()
    with tempfile.TemporaryDirectory() as d, Cluster(Path(d), 3, "--durability", "edge") as cluster:
        wait_reports(cluster)
        results["edge_enqueue_on_replica"] = single_enqueue_latency(cluster.replicas[0].target, 1000)
        results["edge_enqueue_on_primary"] = single_enqueue_latency(cluster.primary.target, 1000)
        for count in (16, 64):
            r = producers(cluster, cluster.replicas[0].target, 1, count=count)
            single = results[f"single_node_{count}_producers_batch1"]
            r["ratio_to_single_node"] = round(r["jobs_per_s"] / single["jobs_per_s"], 2)  # type: ignore[index,operator]
            results[f"edge_{count}_producers_batch1_on_replica"] = r
        results["edge_16_producers_batch1_on_primary"] = producers(cluster, cluster.primary.target, 1)
        while any(info(n).edge_log_jobs for n in cluster.nodes):
            time.sleep(0.05)
        results["edge_drain_lag_at_1000_per_s"] = drain_lag(cluster, 1000, 5)
        results["edge_enqueue_to_worker_via_replica"] = edge_to_worker(cluster, 300)
        results["edge_partitioned_replica_backlog"] = partitioned_backlog(cluster, backlog)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--only", choices=["edge"], help="run one section")
    ap.add_argument("--backlog", type=int, default=100_000, help="jobs in the partitioned-replica backlog")
    args = ap.parse_args()
    results: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.only == "edge":
        edge(results, args.backlog)
        finish(results, args.out)
        return
    with tempfile.TemporaryDirectory() as d, Cluster(Path(d), 3) as cluster:
        wait_reports(cluster)
        results["enqueue_direct_on_primary"] = single_enqueue_latency(cluster.primary.target, 1000)
        results["enqueue_forwarded_by_replica"] = single_enqueue_latency(cluster.replicas[0].target, 1000)
        for batch in (1, 10, 50):
            results[f"16_producers_batch{batch}_on_primary"] = producers(cluster, cluster.primary.target, batch)
        results["16_producers_batch10_via_replica"] = producers(cluster, cluster.replicas[0].target, 10)
        for count in (64, 128):  # more single-job producers -> bigger groups per commit
            results[f"{count}_producers_batch1_on_primary"] = producers(cluster, cluster.primary.target, 1, count=count)
        results["replication_lag"] = replication_lag(cluster, 300)
    with tempfile.TemporaryDirectory() as d, Cluster(Path(d), 3, "--durability", "replicated") as cluster:
        wait_reports(cluster)
        results["replicated_enqueue_direct_on_primary"] = single_enqueue_latency(cluster.primary.target, 1000)
        results["replicated_enqueue_forwarded_by_replica"] = single_enqueue_latency(cluster.replicas[0].target, 1000)
        for batch in (1, 10):
            results[f"replicated_16_producers_batch{batch}_on_primary"] = producers(
                cluster, cluster.primary.target, batch
            )
    edge(results, args.backlog)
    finish(results, args.out)


def finish(results: dict[str, object], out: str | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
