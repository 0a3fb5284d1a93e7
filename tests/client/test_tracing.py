"""OpenTelemetry end to end with the in-memory exporter: the producer's trace context rides
in the job's headers (W3C traceparent), the Worker's handler span is its child, a failing
handler's span records the error, and ``--tracing`` gives a SERVER span per RPC."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.serverthread import ServerThread
from support.wait import until

from edgeq import Client, LeasedJob, Worker

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):  # the global provider can be set once per process
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    st = ServerThread(str(tmp_path / "t.db"), tracing=True)
    st.start()
    try:
        yield st
    finally:
        st.close()


def test_the_handler_span_is_a_child_of_the_span_that_enqueued(server: ServerThread) -> None:
    queue = f"traced-{uuid.uuid4().hex[:8]}"
    EXPORTER.clear()
    tracer = trace.get_tracer("test")
    done = threading.Event()
    with Client(server.target) as client:
        with tracer.start_as_current_span("signup request") as producer:
            job_id = client.enqueue(queue, b"x").job_id
        ctx = producer.get_span_context()
        headers = client.get(job_id).headers
        assert headers["traceparent"].split("-")[1] == format(ctx.trace_id, "032x")
        with Worker(client, [queue], lambda job: done.set()):
            assert done.wait(20)
            until(lambda: [s for s in EXPORTER.get_finished_spans() if s.name == f"process {queue}"], what="span")
    (span,) = [s for s in EXPORTER.get_finished_spans() if s.name == f"process {queue}"]
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == ctx.trace_id and span.parent is not None and span.parent.span_id == ctx.span_id
    assert span.attributes is not None and span.attributes["messaging.message.id"] == job_id
    server_spans = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert any(s.name.endswith("QueueService/Enqueue") for s in server_spans), [s.name for s in server_spans]


def test_a_failing_handlers_span_records_the_error(server: ServerThread) -> None:
    queue = f"traced-{uuid.uuid4().hex[:8]}"
    EXPORTER.clear()
    failed = threading.Event()

    def handler(job: LeasedJob) -> None:
        failed.set()
        raise RuntimeError("smtp said no")

    with Client(server.target) as client:
        client.enqueue(queue, b"x", max_attempts=1)
        with Worker(client, [queue], handler):
            assert failed.wait(20)
            until(lambda: [s for s in EXPORTER.get_finished_spans() if s.name == f"process {queue}"], what="span")
    (span,) = [s for s in EXPORTER.get_finished_spans() if s.name == f"process {queue}"]
    assert span.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)
