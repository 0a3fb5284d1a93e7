"""edgeq on a real 3-node LiteFS cluster (loopback, static lease; tests/cluster_harness.py):

  1. single Enqueue latency, one client: direct on the primary vs forwarded by a replica
  2. Enqueue throughput through the LiteFS mount with 16 concurrent producers, calls of
     1, 10 and 50 jobs, on the primary and via a replica, and 64/128 single-job producers;
     with the CPU seconds each kind of process used during the run (2 cores shared by all)
  3. replication lag: primary commit (Enqueue reply) -> replica's <db>-pos reaches that TXID
  4. the same latency and throughput with --durability replicated

Usage:  bash scripts/test (builds LiteFS once), then
        .venv/bin/python bench/bench_cluster.py [--out bench/results/NAME.json]
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
from cluster_harness import Cluster

from bench import PAYLOAD, concurrent_enqueue, pct, single_enqueue_latency

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    results: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
