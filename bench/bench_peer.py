"""P1 (issue 12): edgeq's full cycle against beanstalkd's on the same machine, same run.

- beanstalkd 1.12 (Debian; ``-b`` binlog with its default fsync at most every 50 ms), 4
  client processes (greenstalk), each looping put -> reserve -> delete of a 200-byte job.
- edgeq (a single-node server on a plain file), 4 producer/consumer pairs, a process each:
  a producer enqueuing batches of 100 (``Client.enqueue_many``) while its pair's backlog is
  under 2,000 jobs, and a Python ``Worker`` with SDK defaults acking every job.

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
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PAYLOAD, ServerProcess

PAIRS = 4
BATCH = 100  # jobs per enqueue_many
WARMUP = 1.0  # seconds before a consumer starts counting
BACKLOG = 2_000  # jobs a pair keeps enqueued ahead of its acks
_WORKER_OPTS: dict[str, object] = json.loads(os.environ.get("EDGEQ_BENCH_WORKER", "{}"))  # experiments only


class Trial(NamedTuple):
    """One side of one trial: jobs/s and CPU microseconds per job, server and clients."""

    jobs_per_s: float
    server_us_per_job: float
    clients_us_per_job: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _beanstalk_client(port: int, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import greenstalk

    c = greenstalk.Client(("127.0.0.1", port), encoding=None, use="bench", watch="bench")
    done = 0
    cpu0 = _own_cpu()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c.put(PAYLOAD)
        job = c.reserve(timeout=5)
        c.delete(job)
        done += 1
    cpu = _own_cpu() - cpu0
    c.close()
    out.put((done, cpu))


def beanstalk_cycle(seconds: float) -> Trial:
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
        server_cpu0 = _cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        reports = [out.get(timeout=seconds + 60) for _ in procs]
        elapsed = time.perf_counter() - t0
        server_cpu = _cpu_seconds(proc.pid) - server_cpu0
        for p in procs:
            p.join()
        done = sum(r[0] for r in reports)
        return Trial(done / elapsed, server_cpu / done * 1e6, sum(r[1] for r in reports) / done * 1e6)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(binlog, ignore_errors=True)


def _pair(target: str, queue: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """One producer/consumer pair (one process): a Worker with SDK defaults acking every
    job, and a producer enqueuing batches of ``BATCH`` (``Client.enqueue_many``) while the
    pair's own backlog (enqueued, not yet acked) is under ``BACKLOG``. Reports jobs acked
    per second over ``seconds`` after a warm-up (process start is not counted)."""
    from edgeq import Client, Worker

    with Client(target) as client:
        worker = Worker(client, [queue], lambda job: None, **_WORKER_OPTS)  # SDK defaults unless overridden
        worker.start()
        sent = 0
        t_start = time.perf_counter()
        t0 = t_start + WARMUP
        before = None
        cpu0 = 0.0
        while (now := time.perf_counter()) < t0 + seconds:
            if before is None and now >= t0:
                before, t0, cpu0 = worker.stats.acked, now, _own_cpu()
            if sent - worker.stats.acked >= BACKLOG:
                time.sleep(0.0005)
                continue
            client.enqueue_many([{"queue": queue, "payload": PAYLOAD}] * BATCH)
            sent += BATCH
        done = worker.stats.acked - (before or 0)
        rate = done / (time.perf_counter() - t0)
        cpu = _own_cpu() - cpu0
        worker.stop()
    out.put((rate, done, cpu))


def edgeq_cycle(srv: ServerProcess, seconds: float) -> Trial:
    """Jobs/s acked, 4 producer/consumer pairs (one queue and one process each), SDK defaults."""
    target = srv.target
    rates: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    run = f"cycle{time.monotonic_ns()}"
    procs = [mp.Process(target=_pair, args=(target, f"{run}-{i}", seconds, rates)) for i in range(PAIRS)]
    for p in procs:
        p.start()
    # The server's CPU over the measured window (after the pairs' warm-up) only.
    time.sleep(WARMUP + 0.3)
    server_cpu0, t0 = _cpu_seconds(srv.proc.pid), time.perf_counter()
    reports = [rates.get(timeout=seconds + 120) for _ in range(PAIRS)]
    server_cpu, elapsed = _cpu_seconds(srv.proc.pid) - server_cpu0, time.perf_counter() - t0
    for p in procs:
        p.join()
    rate = sum(r[0] for r in reports)
    clients_us = sum(r[2] for r in reports) / sum(r[1] for r in reports) * 1e6
    return Trial(rate, server_cpu / (rate * elapsed) * 1e6, clients_us)


def _py_spy() -> str:
    """py-spy from PATH, else the one beside this interpreter (the venv's)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else "py-spy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--profile", help="py-spy the server during each edgeq trial into this raw file")
    args = ap.parse_args()
    if shutil.which("beanstalkd") is None:
        raise SystemExit("beanstalkd missing: apt-get install beanstalkd")
    bean: list[Trial] = []
    edge: list[Trial] = []
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(os.path.join(d, "peer.db"))
        try:
            for _ in range(args.trials):
                bean.append(beanstalk_cycle(args.seconds))
                spy = None
                if args.profile:  # py-spy on the server during the measured part of each edgeq trial
                    spy = subprocess.Popen(
                        [
                            _py_spy(),
                            "record",
                            "-p",
                            str(srv.proc.pid),
                            "-d",
                            str(int(args.seconds)),
                            "-r",
                            "200",
                            "-f",
                            "raw",
                            "-o",
                            args.profile,
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                edge.append(edgeq_cycle(srv, args.seconds))
                if spy is not None:
                    spy.wait()
                b, e = bean[-1], edge[-1]
                print(
                    f"beanstalkd {b.jobs_per_s:,.0f} jobs/s (CPU/job: server {b.server_us_per_job:.0f} us,"
                    f" clients {b.clients_us_per_job:.0f} us)   edgeq {e.jobs_per_s:,.0f} jobs/s"
                    f" (server {e.server_us_per_job:.0f} us, clients {e.clients_us_per_job:.0f} us)",
                    flush=True,
                )
        finally:
            srv.stop()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pairs": PAIRS,
        "seconds": args.seconds,
        "trials": args.trials,
        "beanstalkd_binlog_4_clients_jobs_per_s": [round(t.jobs_per_s) for t in bean],
        "edgeq_4_pairs_jobs_per_s": [round(t.jobs_per_s) for t in edge],
        "median_ratio": round(
            statistics.median(t.jobs_per_s for t in edge) / statistics.median(t.jobs_per_s for t in bean), 2
        ),
        # CPU microseconds per job (medians): where the 2 cores go on each side.
        "beanstalkd_cpu_us_per_job": {
            "server": round(statistics.median(t.server_us_per_job for t in bean)),
            "clients": round(statistics.median(t.clients_us_per_job for t in bean)),
        },
        "edgeq_cpu_us_per_job": {
            "server": round(statistics.median(t.server_us_per_job for t in edge)),
            "clients": round(statistics.median(t.clients_us_per_job for t in edge)),
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
