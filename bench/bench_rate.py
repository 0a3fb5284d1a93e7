"""Rate-limit accuracy (issue 15): a queue limited to RATE jobs a second, a backlog far
larger than it, and workers fast enough to take many times more; over a window of
SECONDS (after a warm-up that spends the initial burst), how many jobs were leased per
second, read from the jobs' own lease times (``started_at``, the server's clock). The
target: within 5 % of the limit. ``--keys N`` measures a per-key limit instead: RATE jobs a
second for each value of the job header ``customer`` (SetRateLimit key_header), the backlog
spread over N customers; each key's rate is reported.

    .venv/bin/python bench/bench_rate.py --rate 100 --seconds 60 --out bench/results/rate.json
    .venv/bin/python bench/bench_rate.py --rate 50 --keys 3 --seconds 60
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
    ap.add_argument("--keys", type=int, default=0, help="a per-key limit over this many header values")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(str(Path(tmp) / "rate.db"))
        try:
            with Client(server.target) as client:
                keys = max(1, a.keys)
                if a.keys:
                    client.set_rate_limit("rated", a.rate, per=1.0, key_header="customer")
                else:
                    client.set_rate_limit("rated", a.rate, per=1.0)
                total = (int(a.rate * (a.warmup + a.seconds) * 1.5) + a.rate) * keys
                for i in range(0, total, 1000):
                    client.enqueue_many([
                        JobSpec("rated", b"x", headers={"customer": f"c{(i + j) % keys}"} if a.keys else None)
                        for j in range(min(1000, total - i))
                    ])
                with Worker(client, ["rated"], lambda job: None, concurrency=16):
                    start = time.time()
                    time.sleep(a.warmup + a.seconds + 1.0)
                lo, hi = start + a.warmup, start + a.warmup + a.seconds
                leased = [
                    (j.started_at.timestamp(), j.headers.get("customer", ""))
                    for j in client.list("rated", page_size=1000) if j.started_at is not None
                ]
        finally:
            server.stop()
    in_window = sum(1 for t, _ in leased if lo <= t < hi)
    observed = in_window / a.seconds / keys
    report: dict[str, object] = {
        "rate_limit_per_second": a.rate, "window_seconds": a.seconds, "leased_in_window": in_window,
        "observed_per_second": round(observed, 2), "error_pct": round(100 * (observed - a.rate) / a.rate, 2),
        "leased_total": len(leased), "backlog": total,
    }
    if a.keys:
        per_key = {
            f"c{k}": round(sum(1 for t, c in leased if c == f"c{k}" and lo <= t < hi) / a.seconds, 2)
            for k in range(keys)
        }
        report.update({
            "per_key_limit": True, "keys": keys, "observed_per_second_by_key": per_key,
            "worst_key_error_pct": round(max(abs(100 * (v - a.rate) / a.rate) for v in per_key.values()), 2),
        })
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
