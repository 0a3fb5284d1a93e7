"""Rate-limit accuracy (issue 15): a queue limited to RATE jobs a second, a backlog far
larger than it, and workers fast enough to take many times more; over a window of
SECONDS (after a warm-up that spends the initial burst), how many jobs were leased per
second, read from the jobs' own lease times (``started_at``, the server's clock). The
target: within 5 % of the limit.

    .venv/bin/python bench/bench_rate.py --rate 100 --seconds 60 --out bench/results/rate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import ServerProcess
from edgeq import Client, JobSpec, Worker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100, help="jobs per second the queue is limited to")
    ap.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (the burst is spent)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(str(Path(tmp) / "rate.db"))
        try:
            with Client(server.target) as client:
                client.set_rate_limit("rated", a.rate, per=1.0)
                total = int(a.rate * (a.warmup + a.seconds) * 1.5) + a.rate
                for i in range(0, total, 1000):
                    client.enqueue_many([JobSpec("rated", b"x") for _ in range(min(1000, total - i))])
                with Worker(client, ["rated"], lambda job: None, concurrency=16):
                    start = time.time()
                    time.sleep(a.warmup + a.seconds + 1.0)
                lo, hi = start + a.warmup, start + a.warmup + a.seconds
                leased = [
                    j.started_at.timestamp() for j in client.list("rated", page_size=1000)
                    if j.started_at is not None
                ]
        finally:
            server.stop()
    in_window = sum(1 for t in leased if lo <= t < hi)
    observed = in_window / a.seconds
    report = {
        "rate_limit_per_second": a.rate, "window_seconds": a.seconds, "leased_in_window": in_window,
        "observed_per_second": round(observed, 2), "error_pct": round(100 * (observed - a.rate) / a.rate, 2),
        "leased_total": len(leased), "backlog": total,
    }
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
