"""OpenTelemetry, when it is installed (``pip install edgeq[otel]``): the W3C trace context
travels in the job's headers from the producer to the worker.

- ``inject(headers)``: at Enqueue, the caller's current span context goes into the job's
  headers (``traceparent``, ``tracestate``) unless the job already carries one.
- ``handler_span(job)``: the Worker runs each handler in a CONSUMER span whose parent is the
  context extracted from the job's headers, so the handler's span is a child of the span
  that enqueued it; an exception is recorded on it.

Without OpenTelemetry both do nothing (no dependency, no cost)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

ENABLED = propagate is not None
_TRACER_NAME = "edgeq"


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current trace context into ``headers`` (a job's), unless it has one."""
    if propagate is None or "traceparent" in headers:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        headers.setdefault(key, value)


@contextlib.contextmanager
def handler_span(queue: str, job_id: str, attempt: int, headers: Any) -> Iterator[None]:
    """A CONSUMER span around one handler run, child of the producer's (from ``headers``)."""
    if trace is None or propagate is None:
        yield
        return
    parent = propagate.extract(dict(headers))
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "edgeq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "edgeq.attempt": attempt,
        },
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
