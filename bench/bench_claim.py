"""Claim cost at the store (issue 15: "claim cost with all features on stays within 1.5x"):
microseconds per claim of one job (and its ack) from a queue holding PENDING jobs, on the
writer's own connection, no gRPC. ``--features`` turns on what issue 15 added to the claim
path: a rate limit on the queue (generous, so it never throttles: its bucket is read and
charged on every claim) and unique keys on the jobs; ``--groups N`` spreads the jobs over N
fair groups (each claim then takes the group whose turn it is). Run the same script under
the old code (PYTHONPATH) to compare.

    .venv/bin/python bench/bench_claim.py --jobs 100000 [--features] [--groups 10000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from edgeq_server import db
from edgeq_server.ids import uuid7
from edgeq_server.models import AckItem, JobSpec
from edgeq_server.store import Store
from edgeq_server.tokens import LeaseRef

SECOND = 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--claims", type=int, default=5_000)
    ap.add_argument("--features", action="store_true")
    ap.add_argument("--busy-key", type=int, default=0,
                    help="put N jobs of one concurrency key (one of them running) ahead of the others")
    ap.add_argument("--groups", type=int, default=0,
                    help="spread the jobs over N fair groups (JobSpec.group), round robin")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "claim.db")
        conn = db.connect(path, writer=True)
        db.migrate(conn)
        store = Store(conn)
        now = 1_800_000_000 * SECOND
        ids = (uuid7() for _ in itertools.count())
        extra: dict[str, str] = {}
        for start in range(0, a.jobs, 5_000):
            specs = []
            for i in range(start, min(a.jobs, start + 5_000)):
                if a.features:
                    extra = {"unique_key": f"u-{i}"}
                if a.groups:
                    extra = {**extra, "group": f"tenant-{i % a.groups}"}
                specs.append(JobSpec("q", b"x" * 200, None, 3, **extra))  # type: ignore[arg-type]
            with store.conn:
                store.enqueue(specs, now, ids)
        if a.busy_key:
            busy = [JobSpec("q", b"x" * 200, None, 3, concurrency_key="busy") for _ in range(a.busy_key)]
            with store.conn:
                store.conn.execute("UPDATE jobs SET run_at = run_at + 1")  # the others come after the busy key
                store.enqueue(busy, now - 1, ids)
                (held,) = store.claim(["q"], 1, "w", 3600 * SECOND, now)
                assert held.concurrency_key == "busy"
            now += 1
        if a.features and hasattr(store, "set_rate_limit"):
            with store.conn:
                store.set_rate_limit("q", 10**9, SECOND, now)
        times = []
        for n in range(a.claims):
            t = now + n
            started = time.perf_counter()
            with store.conn:
                (job,) = store.claim(["q"], 1, "w", 30 * SECOND, t)
                assert job.lease_id is not None
                store.ack([AckItem(LeaseRef(job.id, job.lease_id), b"")], t)
            times.append(time.perf_counter() - started)
        store.conn.close()
    times.sort()
    report = {
        "jobs": a.jobs, "claims": a.claims, "features": a.features, "busy_key_backlog": a.busy_key,
        "groups": a.groups,
        "claim_ack_p50_us": round(times[len(times) // 2] * 1e6, 1),
        "claim_ack_mean_us": round(sum(times) / len(times) * 1e6, 1),
    }
    print(json.dumps(report))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
