"""The ``edgeq serve`` process: SIGTERM drains (Lease streams end with UNAVAILABLE, held
jobs can still be acked, the process exits 0 and leaves a checkpointed file), health
reflects it, and the CLI client commands work against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.procs import ServerProcess

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeq_server", "--server", target, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_sigterm_ends_streams_with_unavailable_accepts_acks_and_exits_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "drain.db"
    server = ServerProcess(db, "--drain-seconds", "5", "--grace-seconds", "1")
    try:
        with grpc.insecure_channel(server.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(service="edgeq.v1.QueueService"), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="d", payload=b"1")]), timeout=5)
            stream = stub.Lease(pb.LeaseRequest(queues=["d"], worker_id="w"), timeout=30)
            held = next(stream).jobs[0]
            os.kill(server.pid, signal.SIGTERM)
            ended = threading.Event()
            code: list[grpc.StatusCode] = []

            def read_rest() -> None:
                try:
                    for _ in stream:
                        pass
                except grpc.RpcError as exc:
                    code.append(exc.code())
                ended.set()

            threading.Thread(target=read_rest, daemon=True).start()
            assert ended.wait(10), "Lease stream did not end after SIGTERM"
            assert code == [grpc.StatusCode.UNAVAILABLE]
            # Draining: the held job can still be acked, and the drain ends as soon as it is.
            resp = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=held.lease_token)]), timeout=5)
            assert list(resp.outcomes) == [pb.LEASE_OUTCOME_OK]
        assert server.wait(timeout=20) == 0
    finally:
        server.close()
    # Clean shutdown leaves the WAL checkpointed and truncated.
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # ... and the ack is durable.
    server = ServerProcess(db)
    try:
        out = cli(server.target, "stats", "d")
        assert out.returncode == 0, out.stderr
        stats = json.loads(out.stdout)["stats"][0]
        assert stats["completed"] == "1" and "pending" not in stats
    finally:
        server.close()


def test_cli_commands_round_trip(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "cli.db")
    try:
        t = server.target
        out = cli(t, "enqueue", "mail", "hello", "--header", "trace=abc", "--priority", "5", "--key", "k1")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["results"][0]["job_id"]
        again = json.loads(cli(t, "enqueue", "mail", "hello", "--key", "k1").stdout)["results"][0]
        assert again == {"job_id": job_id, "duplicate": True, "idempotency_key": "k1"}
        job = json.loads(cli(t, "job", job_id).stdout)["job"]
        assert job["headers"] == {"trace": "abc"} and job["priority"] == 5 and job["state"] == "JOB_STATE_PENDING"
        assert cli(t, "pause", "mail").returncode == 0
        assert json.loads(cli(t, "stats").stdout)["stats"][0]["paused"] is True
        assert cli(t, "resume", "mail").returncode == 0
        assert json.loads(cli(t, "cancel", job_id).stdout)["job"]["state"] == "JOB_STATE_CANCELLED"
        assert json.loads(cli(t, "retry", job_id).stdout)["job"]["state"] == "JOB_STATE_PENDING"
        node = json.loads(cli(t, "node").stdout)
        assert node["role"] == "NODE_ROLE_STANDALONE" and int(node["txid"]) > 0
        listed = cli(t, "jobs", "--queue", "mail", "--state", "pending")
        assert job_id in listed.stdout
        bad = cli(t, "job", "nope")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "job_id" in bad.stderr
        missing = cli(t, "job", "01a20a26-cd61-7030-8173-d14d4cb9e0c8")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    finally:
        server.close()


def test_serve_refuses_invalid_configuration(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeq_server", "serve", "--db-path", str(tmp_path / "x.db"), "--max-batch", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 2 and "max_batch" in out.stderr
    env = {**os.environ, "EDGEQ_PORT": "not-a-number"}
    out = subprocess.run(
        [sys.executable, "-m", "edgeq_server", "serve", "--db-path", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )
    assert out.returncode == 2 and "EDGEQ_PORT" in out.stderr


def test_cli_sends_the_bearer_token(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "auth.db", "--auth-token", "s3cret")
    try:
        denied = cli(server.target, "stats")
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        allowed = cli(server.target, "--token", "s3cret", "pause", "q")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        server.close()


def test_the_cli_inspects_an_edge_log_read_only(tmp_path: Path) -> None:
    """`edgeq edge-log FILE`: jobs waiting to drain and requests refused for good, with
    their reasons, as JSON; the file is not changed."""
    from edgeq_server.store import EdgeLogStore

    path = tmp_path / "edge.db"
    log = EdgeLogStore(str(path))
    with log.transaction():
        log.append(b"req-1", [("id-1", "q", "")], 1_000)
        refused = log.append(b"req-22", [("id-2", "q", ""), ("id-3", "q", "")], 2_000)
    log.reject(refused, "INVALID_ARGUMENT: jobs[0].queue: is required")
    log.close()
    before = path.read_bytes()
    out = subprocess.run([sys.executable, "-m", "edgeq_server", "edge-log", str(path)],
                         capture_output=True, text=True, timeout=30, check=True)
    state = json.loads(out.stdout)
    assert (state["waiting_requests"], state["waiting_jobs"], state["refused_requests"]) == (1, 1, 1)
    assert state["refused"] == [{"seq": refused, "jobs": 2, "created_at_us": 2_000,
                                 "reason": "INVALID_ARGUMENT: jobs[0].queue: is required"}]
    assert path.read_bytes() == before
    missing = subprocess.run([sys.executable, "-m", "edgeq_server", "edge-log", str(tmp_path / "none.db")],
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 1 and "no such edge log" in missing.stderr


def test_a_serve_process_killed_by_a_fatal_signal_leaves_its_stacks(tmp_path: Path) -> None:
    """faulthandler is on: a node that dies from SIGSEGV/SIGABRT (a native crash) prints every
    thread's Python stack before it goes, so its log says where."""
    import signal

    server = ServerProcess(tmp_path / "crash.db")
    try:
        server.proc.send_signal(signal.SIGABRT)
        assert server.proc.wait(timeout=30) != 0
        server.close()
        output = "".join(server.output)
        assert "Fatal Python error: Aborted" in output
        assert "edgeq_server" in output  # frames of the server's threads
    finally:
        server.close()
