"""P1 (issue 12): edgeq's full cycle against beanstalkd's on the same machine, same run.

- beanstalkd 1.12 (Debian; ``-b`` binlog with its default fsync at most every 50 ms), 4
  client processes (greenstalk), each looping put -> reserve -> delete of a 200-byte job.
- edgeq (a single-node server on a plain file), 4 producer/consumer pairs (processes): each
  producer enqueues its share in batches (``Client.enqueue_many``, SDK defaults), each
  consumer is a Python ``Worker`` with SDK defaults (concurrency 8) acking every job.

Each side runs ``--seconds`` per trial, ``--trials`` times alternating; the medians and the
ratio edgeq/beanstalkd are printed (and written with ``--out``).

    apt-get install beanstalkd && .venv/bin/pip install greenstalk
    .venv/bin/python bench/bench_peer.py [--seconds 5] [--trials 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PAYLOAD, ServerProcess

PAIRS = 4
BATCH = 100  # jobs per enqueue_many
WARMUP = 1.0  # seconds before a consumer starts counting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _beanstalk_client(port: int, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import greenstalk

    c = greenstalk.Client(("127.0.0.1", port), encoding=None, use="bench", watch="bench")
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c.put(PAYLOAD)
        job = c.reserve(timeout=5)
        c.delete(job)
        done += 1
    c.close()
    out.put(done)


def beanstalk_cycle(seconds: float) -> float:
    """Jobs/s through put -> reserve -> delete, 4 clients, binlog on (default fsync)."""
    port = _free_port()
    binlog = tempfile.mkdtemp(prefix="beanstalk-")
    proc = subprocess.Popen(["beanstalkd", "-l", "127.0.0.1", "-p", str(port), "-b", binlog])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        procs = [mp.Process(target=_beanstalk_client, args=(port, seconds, out)) for _ in range(PAIRS)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        total = sum(out.get(timeout=seconds + 60) for _ in procs)
        for p in procs:
            p.join()
        return total / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(binlog, ignore_errors=True)


def _producer(target: str, queue: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from edgeq import Client

    sent = 0
    with Client(target) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            st = client.stats(queue)
            if st and st[0].pending > 20 * BATCH:  # keep a bounded backlog: measure the cycle, not a flood
                time.sleep(0.002)
                continue
            client.enqueue_many([{"queue": queue, "payload": PAYLOAD}] * BATCH)
            sent += BATCH
    out.put(sent)


def _consumer(target: str, queue: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A Worker with SDK defaults; reports jobs acked per second over ``seconds`` after a
    1 s warm-up (process start and imports are not counted)."""
    from edgeq import Worker

    worker = Worker(target, [queue], lambda job: None)  # SDK defaults
    worker.start()
    time.sleep(WARMUP)
    before, t0 = worker.stats.acked, time.perf_counter()
    time.sleep(seconds)
    rate = (worker.stats.acked - before) / (time.perf_counter() - t0)
    worker.stop()
    out.put(rate)


def edgeq_cycle(target: str, seconds: float) -> float:
    """Jobs/s acked, 4 producer/consumer pairs (one queue each), SDK defaults."""
    rates: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    sent: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    run = f"cycle{time.monotonic_ns()}"
    procs = []
    for i in range(PAIRS):
        procs.append(mp.Process(target=_consumer, args=(target, f"{run}-{i}", seconds, rates)))
        procs.append(mp.Process(target=_producer, args=(target, f"{run}-{i}", seconds + WARMUP + 1, sent)))
    for p in procs:
        p.start()
    total = sum(rates.get(timeout=seconds + 120) for _ in range(PAIRS))
    for _ in range(PAIRS):
        sent.get(timeout=60)
    for p in procs:
        p.join()
    return float(total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    if shutil.which("beanstalkd") is None:
        raise SystemExit("beanstalkd missing: apt-get install beanstalkd")
    bean: list[float] = []
    edge: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(os.path.join(d, "peer.db"))
        try:
            for _ in range(args.trials):
                bean.append(beanstalk_cycle(args.seconds))
                edge.append(edgeq_cycle(srv.target, args.seconds))
                print(f"beanstalkd {bean[-1]:,.0f} jobs/s   edgeq {edge[-1]:,.0f} jobs/s", flush=True)
        finally:
            srv.stop()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pairs": PAIRS, "seconds": args.seconds, "trials": args.trials,
        "beanstalkd_binlog_4_clients_jobs_per_s": [round(x) for x in bean],
        "edgeq_4_pairs_jobs_per_s": [round(x) for x in edge],
        "median_ratio": round(statistics.median(edge) / statistics.median(bean), 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
