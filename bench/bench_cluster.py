"""edgeq on a real 3-node LiteFS cluster (loopback, static lease; tests/cluster_harness.py):

  1. single Enqueue latency, one client: direct on the primary vs forwarded by a replica
  2. Enqueue throughput through the LiteFS mount with 16 concurrent producers (single-job calls)
  3. replication lag: primary commit (Enqueue reply) -> replica's <db>-pos reaches that TXID

Usage:  bash scripts/test (builds LiteFS once), then
        .venv/bin/python bench/bench_cluster.py [--out bench/results/NAME.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    results: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as d, Cluster(Path(d), 3) as cluster:
        results["enqueue_direct_on_primary"] = single_enqueue_latency(cluster.primary.target, 1000)
        results["enqueue_forwarded_by_replica"] = single_enqueue_latency(cluster.replicas[0].target, 1000)
        results["enqueue_16_producers_on_primary"] = asyncio.run(concurrent_enqueue(cluster.primary.target, 16, 5))
        results["enqueue_16_producers_via_replica"] = asyncio.run(
            concurrent_enqueue(cluster.replicas[0].target, 16, 5)
        )
        results["replication_lag"] = replication_lag(cluster, 300)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
