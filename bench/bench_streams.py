"""Lease stream churn: 1,000 Lease streams opened and closed again and again against one
server process for N minutes; the server's RSS is sampled after every round (issue 11:
"RSS flat"). With ``--idle 0,1000,10000``: idle streams held open instead, the server's
RSS and P3 (Enqueue reply -> job on another stream) measured beside them.

    .venv/bin/python bench/bench_streams.py [--minutes 10] [--streams 1000] [--out FILE]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ServerProcess
from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

PER_CHANNEL = 50  # under the server's per-connection limit (100)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_round(target: str, streams: int) -> float:
    """Open ``streams`` Lease streams (each waits for its headers), then cancel them all."""
    t0 = time.perf_counter()
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range((streams + PER_CHANNEL - 1) // PER_CHANNEL)]
    calls = []
    for i in range(streams):
        stub = pb_grpc.QueueServiceStub(channels[i // PER_CHANNEL])
        calls.append(stub.Lease(pb.LeaseRequest(queues=[f"churn{i % 10}"], worker_id=f"w{i}"), timeout=60))
    await asyncio.gather(*(c.initial_metadata() for c in calls))
    for c in calls:
        c.cancel()
    for ch in channels:
        await ch.close()
    return time.perf_counter() - t0


def summary(samples: list[tuple[float, float]]) -> dict[str, object]:
    """RSS per minute (mean, min, max): single samples swing with the allocator, the
    per-minute mean shows a trend if there is one."""
    minutes: dict[int, list[float]] = {}
    for t, rss in samples:
        minutes.setdefault(int(t // 60), []).append(rss)
    per_minute = [
        {"minute": m, "mean_mib": round(sum(v) / len(v), 1), "min_mib": min(v), "max_mib": max(v)}
        for m, v in sorted(minutes.items()) if len(v) >= 5
    ]
    means = [m["mean_mib"] for m in per_minute]
    return {
        "rss_per_minute": per_minute,
        "rss_first_minute_mean_mib": means[0] if means else None,
        "rss_last_minute_mean_mib": means[-1] if means else None,
        "rss_max_mib": max(r for _, r in samples),
    }


async def hold_idle(target: str, streams: int, pid: int) -> dict[str, object]:
    """Open ``streams`` idle Lease streams (queues nobody enqueues to) and hold them while
    the server's RSS is read and P3 is measured on another queue beside them."""
    from bench import bench_dispatch_latency

    per_channel = 90  # under the per-connection limit
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range((streams + per_channel - 1) // per_channel)]
    calls = [pb_grpc.QueueServiceStub(channels[i // per_channel]).Lease(
        pb.LeaseRequest(queues=[f"idle{i % 100}"], worker_id=f"idle{i}"), timeout=600) for i in range(streams)]
    t0 = time.perf_counter()
    await asyncio.gather(*(c.initial_metadata() for c in calls))
    opened_s = time.perf_counter() - t0
    await asyncio.sleep(2)
    rss = rss_mib(pid)
    # P3 from a thread (the sync bench helper) while this loop keeps the idle streams alive.
    result = await asyncio.to_thread(bench_dispatch_latency, target, 500)
    for c in calls:
        c.cancel()
    for ch in channels:
        await ch.close()
    return {"idle_streams": streams, "open_s": round(opened_s, 2), "server_rss_mib": round(rss, 1),
            "p3_after_reply_p50_ms": round(float(result["after_enqueue_reply_p50_ms"]), 3),  # type: ignore[arg-type]
            "p3_after_reply_p99_ms": round(float(result["after_enqueue_reply_p99_ms"]), 3)}  # type: ignore[arg-type]


def idle(counts: list[int], out: str | None) -> None:
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory() as d:
            srv = ServerProcess(os.path.join(d, "idle.db"), "--max-lease-streams", str(max(n + 100, 10_000)))
            try:
                rows.append(asyncio.run(hold_idle(srv.target, n, srv.proc.pid)))
            finally:
                srv.stop()
        print(json.dumps(rows[-1]), flush=True)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "idle": rows}
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--out")
    ap.add_argument("--idle", help="instead: hold this many idle streams (comma-separated counts, e.g. 0,1000,10000)"
                    " and report the server's RSS and P3 beside them")
    args = ap.parse_args()
    if args.idle:
        idle([int(x) for x in args.idle.split(",")], args.out)
        return
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(os.path.join(d, "streams.db"))
        try:
            pid = srv.proc.pid
            start_rss = rss_mib(pid)
            samples: list[tuple[float, float]] = []
            rounds, opened, seconds = 0, 0, []
            t_end = time.monotonic() + args.minutes * 60
            t0 = time.monotonic()
            while time.monotonic() < t_end:
                seconds.append(asyncio.run(one_round(srv.target, args.streams)))
                rounds += 1
                opened += args.streams
                time.sleep(0.2)  # let the server finish closing them
                samples.append((round(time.monotonic() - t0, 1), round(rss_mib(pid), 1)))
                print(f"round {rounds}: {seconds[-1]:.2f}s, RSS {samples[-1][1]} MiB", flush=True)
            result = summary(samples) | {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "minutes": args.minutes, "streams_per_round": args.streams, "rounds": rounds,
                "streams_opened": opened, "round_seconds_median": sorted(seconds)[len(seconds) // 2],
                "rss_start_mib": round(start_rss, 1), "samples": samples,
            }
        finally:
            srv.stop()
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
