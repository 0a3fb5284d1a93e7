"""Fairness between groups (issue 15: "one tenant's 1M-job burst does not starve another's
10 jobs"): tenant A enqueues ``--big`` jobs, then tenant B enqueues ``--small``; workers
claim (``--batch`` at a time, as a Lease stream's credits do) and ack at the store, on the
writer's own connection, no gRPC. Reports how many leases it took until B's last job was
leased, with fair groups (JobSpec.group) and, for comparison, the same jobs without groups
(plain FIFO: B waits for all of A). Also the claim cost while the backlog is that large.

    .venv/bin/python bench/bench_fair.py --big 1000000 --small 10
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


def run(big: int, small: int, batch: int, groups: bool, limit_leases: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(str(Path(tmp) / "fair.db"), writer=True)
        db.migrate(conn)
        store = Store(conn)
        now = 1_800_000_000 * SECOND
        ids = (uuid7() for _ in itertools.count())
        started = time.perf_counter()
        for start in range(0, big, 5_000):
            n = min(big, start + 5_000) - start
            with store.conn:
                store.enqueue([JobSpec("q", b"x" * 200, None, 3, group="A" if groups else "") for _ in range(n)],
                              now, ids)
        enqueue_s = time.perf_counter() - started
        now += SECOND
        with store.conn:
            mine = {r.job_id for r in store.enqueue(
                [JobSpec("q", b"y" * 200, None, 3, group="B" if groups else "") for _ in range(small)], now, ids)}
        leases = 0
        last_b = None
        times: list[float] = []
        while leases < limit_leases:
            t0 = time.perf_counter()
            with store.conn:
                got = store.claim(["q"], batch, "w", 30 * SECOND, now)
                store.ack([AckItem(LeaseRef(j.id, j.lease_id or ""), b"") for j in got], now)
            times.append((time.perf_counter() - t0) / max(1, len(got)))
            if not got:
                break
            for j in got:
                leases += 1
                if j.id in mine:
                    mine.discard(j.id)
                    if not mine:
                        last_b = leases
            if last_b is not None and leases >= 10 * small + 100:
                break
            now += 1
        conn.close()
    times.sort()
    return {
        "fair_groups": groups,
        "enqueue_seconds": round(enqueue_s, 1),
        "leases_until_small_tenant_done": last_b,
        "leases_run": leases,
        "small_tenant_done": last_b is not None,
        "claim_ack_p50_us_per_job": round(times[len(times) // 2] * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fifo-leases", type=int, default=20_000,
                    help="without groups, stop after this many leases (B would wait for all of A)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    fair = run(a.big, a.small, a.batch, True, a.big + a.small)
    fifo = run(a.big, a.small, a.batch, False, a.fifo_leases)
    report = {"command": f".venv/bin/python bench/bench_fair.py --big {a.big} --small {a.small} --batch {a.batch}",
              "big_tenant_jobs": a.big, "small_tenant_jobs": a.small, "batch": a.batch,
              "with_groups": fair, "without_groups": fifo}
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
