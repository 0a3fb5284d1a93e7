"""edgeq benchmark: starts a real server process on a fresh SQLite file and measures

  1. single-job Enqueue latency, one client, one call at a time (p50/p99)
  2. concurrent single-job Enqueue throughput (aio client, N in flight) -> group commit at work
  3. batched Enqueue throughput (jobs/s)
  4. dispatch latency: Enqueue call start -> job received on an open Lease stream (p50/p99)
  5. full cycle with the Python Worker: enqueue (batched) -> lease -> handler -> ack (jobs/s)

Usage:  .venv/bin/python bench/bench.py [--quick] [--out bench/results/NAME.json]
Everything runs on this machine (2 cores shared by server and clients); numbers are noisy
(limits.md: treat +-25%). Nothing here is a test: no thresholds, just numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 200


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class ServerProcess:
    def __init__(self, db: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeq_server", "serve", "--port", "0", "--db-path", db, "--log-level", "WARNING",
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.search(r"listening on ([\d.]+):(\d+)", line)
            if m:
                self.target = f"{m.group(1)}:{m.group(2)}"
                break
        else:
            raise RuntimeError("server did not start")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


_ECHO_SERVER = """
import asyncio, grpc
async def main():
    server = grpc.aio.server()
    async def echo(request, context):
        return request
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "floor.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def grpc_floor_latency(n: int) -> dict[str, float]:
    """The floor under every edgeq RPC on this machine: a bare grpcio aio server (another
    process) echoing a 100-byte message back to a sync client, sequentially."""
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            echo = ch.unary_unary("/floor.Echo/Echo")
            for _ in range(200):
                echo(PAYLOAD)
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                echo(PAYLOAD)
                lat.append(time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()
    return {"calls": n, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def ghz_enqueue(target: str, concurrency: int, n: int) -> dict[str, object]:
    """P2 with an independent load tool: ghz (built by scripts/bench into .cache/ghz, or
    $EDGEQ_GHZ_BIN, or on PATH) sending single-job Enqueues at ``concurrency``."""
    import base64
    import shutil

    binary = os.environ.get("EDGEQ_GHZ_BIN") or str(ROOT / ".cache/ghz/bin/ghz")
    if not os.access(binary, os.X_OK):
        binary = shutil.which("ghz") or ""
    if not binary:
        return {"skipped": "ghz missing (bash scripts/bench builds it)"}
    data = json.dumps({"jobs": [{"queue": "ghz", "payload": base64.b64encode(PAYLOAD).decode()}]})
    out = subprocess.run(
        [binary, "--insecure", "--proto", str(ROOT / "proto/edgeq/v1/queue.proto"), "--import-paths",
         str(ROOT / "proto"), "--call", "edgeq.v1.QueueService/Enqueue", "-d", data, "-c", str(concurrency),
         "-n", str(n), "--format", "json", target],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(out.stdout)
    lat = {row["percentage"]: row["latency"] / 1e6 for row in report["latencyDistribution"]}
    return {"concurrency": concurrency, "calls": n, "rps": round(report["rps"]), "p50_ms": lat.get(50),
            "p99_ms": lat.get(99), "status": report["statusCodeDistribution"]}


def sdk_enqueue_latency(target: str, n: int) -> dict[str, float]:
    """P2 with the Python SDK: ``Client.enqueue`` (an auto idempotency key, the retry
    policy, the result model), sequential, from this process."""
    from edgeq import Client

    with Client(target) as client:
        for _ in range(200):
            client.enqueue("sdk", PAYLOAD)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.enqueue("sdk", PAYLOAD)
            lat.append(time.perf_counter() - t0)
    return {"calls": n, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def single_enqueue_latency(target: str, n: int, durability: int = 0) -> dict[str, float]:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="lat", payload=PAYLOAD)], durability=durability)
        for _ in range(200):  # warm up
            stub.Enqueue(req)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            stub.Enqueue(req)
            lat.append(time.perf_counter() - t0)
    return {"calls": n, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3}


async def concurrent_enqueue(
    target: str, concurrency: int, seconds: float, batch: int = 1, durability: int = 0
) -> dict[str, float]:
    """``concurrency`` producers, each sending Enqueue calls of ``batch`` jobs back to back."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="conc", payload=PAYLOAD)] * batch, durability=durability)
        done = 0
        lat: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await stub.Enqueue(req)
                lat.append(time.perf_counter() - t0)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        el = time.perf_counter() - t0
    return {"concurrency": concurrency, "batch": batch, "calls_per_s": done / el, "jobs_per_s": done * batch / el,
            "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def bench_batched(target: str, batch: int, seconds: float) -> dict[str, float]:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="batch", payload=PAYLOAD)] * batch)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            stub.Enqueue(req)
            n += batch
        el = time.perf_counter() - t0
    return {"batch": batch, "jobs_per_s": n / el}


def bench_dispatch_latency(target: str, n: int) -> dict[str, float]:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.QueueServiceStub(ch)
        stream = stub.Lease(pb.LeaseRequest(queues=["disp"], worker_id="bench", max_in_flight=10))
        lat = []
        after_reply = []
        for _ in range(n):
            t0 = time.perf_counter()
            stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="disp", payload=PAYLOAD)]))
            t1 = time.perf_counter()
            while True:
                msg = next(stream)
                if msg.jobs:
                    break
            t2 = time.perf_counter()
            lat.append(t2 - t0)
            after_reply.append(max(0.0, t2 - t1))
            stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=j.lease_token) for j in msg.jobs]))
        stream.cancel()
    return {"samples": n, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "after_enqueue_reply_p50_ms": pct(after_reply, 0.5) * 1e3,
            "after_enqueue_reply_p99_ms": pct(after_reply, 0.99) * 1e3}


def bench_full_cycle(target: str, jobs: int, concurrency: int) -> dict[str, float]:
    from edgeq import Client, Worker

    done = threading.Event()
    count = 0
    lock = threading.Lock()

    def handler(job: object) -> None:
        nonlocal count
        with lock:
            count += 1
            if count >= jobs:
                done.set()

    with Client(target) as client:
        worker = Worker(client, ["cycle"], handler, concurrency=concurrency, max_in_flight=256)
        worker.start()
        t0 = time.perf_counter()
        batch = 500
        for i in range(0, jobs, batch):
            client.enqueue_many([{"queue": "cycle", "payload": PAYLOAD}] * min(batch, jobs - i))
        t_enq = time.perf_counter() - t0
        done.wait(timeout=300)
        # Wait until every job is acked (completed), not just handled.
        while True:
            st = client.stats("cycle")[0]
            if st.completed >= jobs or time.perf_counter() - t0 > 300:
                break
            time.sleep(0.01)
        el = time.perf_counter() - t0
        worker.stop()
    return {"jobs": jobs, "worker_concurrency": concurrency, "jobs_per_s": jobs / el,
            "enqueue_phase_s": t_enq, "total_s": el}


def bench_steady_state_size(seconds: float) -> dict[str, object]:
    """Steady load (enqueue -> worker -> ack) with a 2 s retention for completed jobs: the
    database file (plus WAL) should plateau instead of growing with the job count."""
    from edgeq import Client, Worker

    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "steady.db")
        srv = ServerProcess(db, "--retention-completed-seconds", "2", "--retention-interval-seconds", "1")
        samples: list[dict[str, float]] = []
        try:
            with Client(srv.target) as client:
                worker = Worker(client, ["steady"], lambda job: None, concurrency=8, max_in_flight=256).start()
                t0 = time.perf_counter()
                next_sample = t0
                while time.perf_counter() - t0 < seconds:
                    client.enqueue_many([{"queue": "steady", "payload": PAYLOAD}] * 200)
                    st = client.stats("steady")[0]
                    if st.pending + st.running > 5000:  # keep the backlog bounded: steady, not a flood
                        time.sleep(0.05)
                    if time.perf_counter() >= next_sample:
                        size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
                        samples.append({"t_s": round(time.perf_counter() - t0, 1), "mb": round(size / 1e6, 2),
                                        "completed_retained": st.completed,
                                        "processed": worker.processed})
                        next_sample += seconds / 6
                worker.stop()
        finally:
            srv.stop()
    return {"retention_completed_s": 2, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-worker", action="store_true")
    args = ap.parse_args()
    scale = 0.2 if args.quick else 1.0
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
    }
    results["grpc_floor_unary"] = grpc_floor_latency(int(2000 * scale))
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(os.path.join(d, "bench.db"))
        try:
            results["enqueue_single_latency"] = single_enqueue_latency(srv.target, int(3000 * scale))
            results["p2_sdk_enqueue"] = sdk_enqueue_latency(srv.target, int(3000 * scale))
            results["p2_ghz_enqueue"] = [ghz_enqueue(srv.target, c, int(3000 * scale)) for c in (1, 16)]
            results["enqueue_concurrent"] = [
                asyncio.run(concurrent_enqueue(srv.target, c, 3 * scale + 1)) for c in (16, 64)
            ]
            results["enqueue_batched"] = [bench_batched(srv.target, b, 3 * scale + 1) for b in (100, 1000)]
            results["dispatch_latency"] = bench_dispatch_latency(srv.target, int(1000 * scale))
            if not args.skip_worker:
                results["full_cycle_worker"] = bench_full_cycle(srv.target, int(30000 * scale), 8)
        finally:
            srv.stop()
    if not args.skip_worker:
        results["steady_state_file_size"] = bench_steady_state_size(30 * scale)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
