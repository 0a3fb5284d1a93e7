"""Scale (issue 12): how costs grow with the jobs stored.

For each size (default 0, 100k, 1M jobs; 10M with ``--sizes 0,10000000``) a database is
filled directly with SQL (200-byte payloads; 80 % completed, 5 % failed, 5 % cancelled,
10 % pending in other queues), then a server process is started on it and measured:

- start-up: process start -> "listening" (open, migrations, recovery of expired leases);
- Enqueue p50/p99 (1 client, sequential, a queue of its own);
- claim: Enqueue reply -> job on an idle Lease stream (P3), p50/p99;
- retention: 1M finished jobs past their retention deleted while a client enqueues (the
  slowest Enqueue meanwhile is the writer's longest stall);
- storage: bytes per job of the filled file, and of an all-pending database written by the
  store's own Enqueue (``PENDING_SAMPLE`` jobs of 200 bytes, in batches of 100): without
  idempotency keys, and with the ``auto-<UUIDv7>`` key the SDKs send with every job.

    .venv/bin/python bench/bench_scale.py [--sizes 0,100000,1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ServerProcess, bench_dispatch_latency, single_enqueue_latency

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from edgeq_server import db
from edgeq_server.ids import uuid7
from edgeq_server.models import JobSpec
from edgeq_server.store import Store

MICROS = 1_000_000
PENDING_SAMPLE = 200_000  # jobs; bytes per job settle long before this


def pending_bytes_per_job(path: str, jobs: int, sdk_key: bool) -> float:
    """Bytes per pending 200-byte job as the server's Enqueue stores them."""
    conn = db.connect(path, writer=True)
    db.migrate(conn)
    store = Store(conn)
    now = int(time.time() * MICROS)
    payload = os.urandom(200)
    for _ in range(0, jobs, 100):
        specs = [
            JobSpec("bulk", payload, None, 3, idempotency_key=f"auto-{uuid7()}" if sdk_key else None)
            for _ in range(100)
        ]
        with conn:
            store.enqueue(specs, now, (uuid7() for _ in range(100)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = size_of(path)
    os.remove(path)
    return round(size / jobs, 1)


def fill(path: str, jobs: int, completed_only: bool = False, age_us: int = 0) -> None:
    """``jobs`` rows through SQL (uuid-shaped ids in insert order), in chunks."""
    conn = db.connect(path, writer=True)
    db.migrate(conn)
    now = int(time.time() * MICROS) - age_us
    chunk = 200_000
    done = 0
    while done < jobs:
        n = min(chunk, jobs - done)
        with conn:
            conn.execute(
                """
                WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?1 + ?2 - 1)
                INSERT INTO jobs (id, queue_name, payload, status, attempts, max_attempts, priority, run_at,
                                  created_at, completed_at)
                SELECT printf('%08x-0000-7000-8000-%012x', i / 65536, i),
                       'bulk-' || (i % 16),
                       randomblob(200),
                       CASE WHEN ?4 THEN 'completed' WHEN i % 20 < 16 THEN 'completed'
                            WHEN i % 20 = 16 THEN 'failed'
                            WHEN i % 20 = 17 THEN 'cancelled' ELSE 'pending' END,
                       1, 3, 0, ?3, ?3,
                       CASE WHEN ?4 THEN ?3 WHEN i % 20 >= 18 THEN NULL ELSE ?3 END
                FROM seq
                """,
                (done, n, now, 1 if completed_only else 0),
            )
        done += n
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def size_of(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def measure(jobs: int, d: str) -> dict[str, object]:
    path = os.path.join(d, f"scale-{jobs}.db")
    t0 = time.perf_counter()
    fill(path, jobs)
    fill_s = time.perf_counter() - t0
    bytes_mixed = size_of(path)
    started = time.perf_counter()
    srv = ServerProcess(path)
    startup = time.perf_counter() - started
    try:
        enqueue = single_enqueue_latency(srv.target, 1000)
        claim = bench_dispatch_latency(srv.target, 500)
    finally:
        srv.stop()
    os.remove(path)
    return {
        "jobs": jobs, "fill_s": round(fill_s, 1), "startup_s": round(startup, 2),
        "enqueue_p50_ms": round(enqueue["p50_ms"], 3), "enqueue_p99_ms": round(enqueue["p99_ms"], 3),
        "claim_after_reply_p50_ms": round(claim["after_enqueue_reply_p50_ms"], 3),
        "claim_after_reply_p99_ms": round(claim["after_enqueue_reply_p99_ms"], 3),
        "bytes_per_job_mixed": round(bytes_mixed / jobs, 1) if jobs else None,
    }


def retention_stall(d: str, jobs: int) -> dict[str, object]:
    """``jobs`` completed jobs two days old and a 1 h retention: while the server deletes
    them, one client enqueues back to back; the slowest Enqueue shows how long the writer
    stalled."""
    path = os.path.join(d, "retention.db")
    fill(path, jobs, completed_only=True, age_us=2 * 86_400 * MICROS)
    srv = ServerProcess(path, "--retention-completed-seconds", "3600", "--retention-interval-seconds", "1")
    lat: list[float] = []
    t0 = time.perf_counter()
    deleted_after = None
    try:
        import grpc

        from edgeq.v1 import queue_pb2 as pb
        from edgeq.v1 import queue_pb2_grpc as pb_grpc

        reader = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            req = pb.EnqueueRequest(jobs=[pb.JobSpec(queue="during-retention", payload=b"x" * 200)])
            next_check = 0.0
            while time.perf_counter() - t0 < 300:
                s = time.perf_counter()
                stub.Enqueue(req, timeout=30)
                lat.append(time.perf_counter() - s)
                if s >= next_check:
                    next_check = s + 1
                    left = reader.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").get
                    if not left:
                        deleted_after = time.perf_counter() - t0
                        break
        reader.close()
    finally:
        srv.stop()
        os.remove(path)
    lat.sort()
    return {
        "finished_jobs_deleted": jobs, "deleted_in_s": None if deleted_after is None else round(deleted_after, 1),
        "enqueues_meanwhile": len(lat), "enqueue_p50_ms": round(lat[len(lat) // 2] * 1e3, 3),
        "enqueue_p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 3), "enqueue_max_ms": round(lat[-1] * 1e3, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0,100000,1000000")
    ap.add_argument("--retention-jobs", type=int, default=1_000_000, help="finished jobs retention deletes (0: skip)")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(measure(n, d))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows:
        r["enqueue_vs_empty"] = round(float(r["enqueue_p50_ms"]) / float(base["enqueue_p50_ms"]), 2)  # type: ignore[arg-type]
        r["claim_vs_empty"] = round(
            float(r["claim_after_reply_p50_ms"]) / float(base["claim_after_reply_p50_ms"]), 2  # type: ignore[arg-type]
        )
    with tempfile.TemporaryDirectory() as d:
        retention = retention_stall(d, args.retention_jobs) if args.retention_jobs else None
        storage = {
            "pending_jobs": PENDING_SAMPLE,
            "bytes_per_pending_job": pending_bytes_per_job(os.path.join(d, "p.db"), PENDING_SAMPLE, False),
            "bytes_per_pending_job_with_sdk_key": pending_bytes_per_job(os.path.join(d, "k.db"), PENDING_SAMPLE, True),
        }
    print(json.dumps(retention), flush=True)
    print(json.dumps(storage), flush=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows, "retention": retention, "storage": storage,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
