"""Scale (issue 12): how costs grow with the jobs stored.

For each size (default 0, 100k, 1M jobs; 10M with ``--sizes 0,10000000``) a database is
filled directly with SQL (200-byte payloads; 80 % completed, 5 % failed, 5 % cancelled,
10 % pending in other queues), then a server process is started on it and measured:

- start-up: process start -> "listening" (open, migrations, recovery of expired leases);
- Enqueue p50/p99 (1 client, sequential, a queue of its own);
- claim: Enqueue reply -> job on an idle Lease stream (P3), p50/p99;
- storage: bytes per job of the filled file, and of an all-pending database of the same size
  (without idempotency keys, and with the 41-character key the SDKs send with every job).

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ServerProcess, bench_dispatch_latency, single_enqueue_latency

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from edgeq_server import db

MICROS = 1_000_000


def fill(path: str, jobs: int, pending_only: bool = False, keyed: bool = False) -> None:
    """``jobs`` rows through SQL (uuid-shaped ids in insert order), in chunks."""
    conn = db.connect(path, writer=True)
    db.migrate(conn)
    now = int(time.time() * MICROS)
    chunk = 200_000
    done = 0
    while done < jobs:
        n = min(chunk, jobs - done)
        with conn:
            conn.execute(
                """
                WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?1 + ?2 - 1)
                INSERT INTO jobs (id, queue_name, payload, status, attempts, max_attempts, priority, run_at,
                                  created_at, completed_at, idempotency_key)
                SELECT printf('%08x-0000-7000-8000-%012x', i / 65536, i),
                       'bulk-' || (i % 16),
                       randomblob(200),
                       CASE WHEN ?3 THEN 'pending' WHEN i % 20 < 16 THEN 'completed' WHEN i % 20 = 16 THEN 'failed'
                            WHEN i % 20 = 17 THEN 'cancelled' ELSE 'pending' END,
                       1, 3, 0, ?4, ?4,
                       CASE WHEN ?3 OR i % 20 >= 18 THEN NULL ELSE ?4 END,
                       CASE WHEN ?5 THEN printf('auto-%08x-0000-7000-8000-%012x', i / 65536, i) END
                FROM seq
                """,
                (done, n, 1 if pending_only else 0, now, 1 if keyed else 0),
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
    pending_path = os.path.join(d, f"pending-{jobs}.db")
    per_pending: dict[str, float] = {}
    if jobs:
        for keyed in (False, True):  # the SDKs send an idempotency key with every job (auto-<uuid7>)
            fill(pending_path, jobs, pending_only=True, keyed=keyed)
            per_pending["with_sdk_key" if keyed else "no_key"] = round(size_of(pending_path) / jobs, 1)
            os.remove(pending_path)
    os.remove(path)
    return {
        "jobs": jobs, "fill_s": round(fill_s, 1), "startup_s": round(startup, 2),
        "enqueue_p50_ms": round(enqueue["p50_ms"], 3), "enqueue_p99_ms": round(enqueue["p99_ms"], 3),
        "claim_after_reply_p50_ms": round(claim["after_enqueue_reply_p50_ms"], 3),
        "claim_after_reply_p99_ms": round(claim["after_enqueue_reply_p99_ms"], 3),
        "bytes_per_job_mixed": round(bytes_mixed / jobs, 1) if jobs else None,
        "bytes_per_pending_job": per_pending.get("no_key"),
        "bytes_per_pending_job_with_sdk_key": per_pending.get("with_sdk_key"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0,100000,1000000")
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
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
