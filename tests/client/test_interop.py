"""Interop across the three clients against one real server: a TypeScript producer
enqueues, a Python Worker nacks some jobs into retries, a Go Worker processes and acks, and
the Python client checks every job's final state and attempts.

Needs go and the TypeScript client's node_modules (`bash scripts/test` prepares both);
missing tools skip here and FAIL under CI=true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.procs import ServerProcess

from edgeq import Client, Retry, Worker

ROOT = Path(__file__).resolve().parents[2]
N = 30
DELAY_MS = 4000  # jobs not meant for the Python worker become due after this


def _require() -> None:
    missing = []
    if shutil.which("go") is None:
        missing.append("go")
    if not (ROOT / "clients/typescript/node_modules/.bin/tsx").exists():
        missing.append("clients/typescript/node_modules (npm ci)")
    if missing:
        message = "interop test needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def test_typescript_produces_python_nacks_go_acks(tmp_path: Path) -> None:
    _require()
    server = ServerProcess(tmp_path / "interop.db")
    try:
        # 1. TypeScript producer: jobs i % 3 == 0 due now, the rest in DELAY_MS.
        out = subprocess.run(
            ["node_modules/.bin/tsx", "examples/produce.ts", server.target, str(N), str(DELAY_MS)],
            cwd=ROOT / "clients/typescript", capture_output=True, text=True, timeout=60, check=True,
        )
        ids = json.loads(out.stdout.strip().splitlines()[-1])
        assert len(ids) == N
        # 2. Python worker, alone while only the i % 3 == 0 jobs are due: nacks each into a
        #    retry that comes due together with the others.
        nacked: list[bytes] = []
        all_nacked = threading.Event()

        def nack(job: object) -> None:
            nacked.append(getattr(job, "payload", b""))
            if len(nacked) == len(range(0, N, 3)):
                all_nacked.set()
            raise Retry(delay=DELAY_MS / 1000, message="python says later")

        with Worker(server.target, ["interop"], nack, concurrency=4):
            assert all_nacked.wait(DELAY_MS / 1000 - 1), f"python worker saw {nacked}"
        assert sorted(nacked) == sorted(f"job-{i}".encode() for i in range(0, N, 3))
        # 3. Go worker: every job, once due, acked.
        go = subprocess.run(
            ["go", "run", "./cmd/edgeq-interop-worker", "-target", server.target, "-queue", "interop",
             "-jobs", str(N), "-timeout", "60s"],
            cwd=ROOT / "clients/go", capture_output=True, text=True, timeout=180,
        )
        assert go.returncode == 0, go.stderr + go.stdout
        # 4. Python client: final states and attempts.
        with Client(server.target) as client:
            deadline = time.monotonic() + 10
            while True:
                jobs = [client.get(i) for i in ids]
                if all(j.state.name == "COMPLETED" for j in jobs) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        for i, job in enumerate(jobs):
            assert job.state.name == "COMPLETED", (i, job)
            assert job.payload == f"job-{i}".encode()
            assert job.headers == {"producer": "typescript"}
            assert job.attempts == (2 if i % 3 == 0 else 1), (i, job.attempts)
    finally:
        server.close()
