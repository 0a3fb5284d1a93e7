"""Structured logs: ``edgeq serve --log-format json`` writes one JSON object per line, and a
job event carries the job's id, its queue and the trace id of the RPC that caused it (W3C
``traceparent`` metadata), also when the event is written after the commit."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import grpc
from support.procs import ServerProcess
from support.wait import until

from edgeq.v1 import queue_pb2 as pb
from edgeq.v1 import queue_pb2_grpc as pb_grpc
from edgeq_server import logs

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_trace_ids_are_read_from_traceparent_only_when_well_formed() -> None:
    assert logs.trace_id([("traceparent", TRACEPARENT)]) == TRACE
    assert logs.trace_id([("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")]) == ""
    assert logs.trace_id([("traceparent", "garbage")]) == ""
    assert logs.trace_id(None) == ""


def test_the_json_format_has_the_fields_and_the_text_format_appends_them() -> None:
    for fmt in ("json", "text"):
        out = io.StringIO()
        handler = logs.configure("INFO", fmt, stream=out)
        try:
            token = logs.TRACE_ID.set(TRACE)
            logging.getLogger("edgeq_server.test").info("job failed for good", extra=logs.job_fields("j1", "mail"))
            logs.TRACE_ID.reset(token)
        finally:
            logging.getLogger().removeHandler(handler)
        line = out.getvalue().strip()
        if fmt == "json":
            record = json.loads(line)
            assert {k: record[k] for k in ("level", "logger", "message", "job_id", "queue", "trace_id")} == {
                "level": "INFO", "logger": "edgeq_server.test", "message": "job failed for good",
                "job_id": "j1", "queue": "mail", "trace_id": TRACE,
            }
            assert "time" in record
        else:
            assert line.endswith(f"[job_id=j1 queue=mail trace_id={TRACE}]")


def test_serve_logs_a_failed_job_as_json_with_its_trace_id(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "logs.db", "--log-format", "json", "--log-level", "INFO")
    try:
        with grpc.insecure_channel(server.target) as ch:
            stub = pb_grpc.QueueServiceStub(ch)
            job_id = stub.Enqueue(pb.EnqueueRequest(jobs=[pb.JobSpec(queue="mail", payload=b"x", max_attempts=1)]),
                                  timeout=10).results[0].job_id
            leased = next(iter(stub.Lease(pb.LeaseRequest(queues=["mail"], max_in_flight=1), timeout=10)))
            token = leased.jobs[0].lease_token
            stub.Nack(pb.NackRequest(items=[pb.NackItem(lease_token=token, error_message="smtp down")]),
                      metadata=(("traceparent", TRACEPARENT),), timeout=10)

        def failed_line() -> dict[str, str] | None:
            for line in list(server.output):
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("job_id") == job_id:
                        return record  # type: ignore[no-any-return]
            return None

        record = until(failed_line, 10, "the failed job's log line")
        assert record["message"] == "job failed for good" and record["queue"] == "mail"
        assert record["trace_id"] == TRACE and record["level"] == "INFO"
    finally:
        server.close()
