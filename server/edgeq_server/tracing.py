"""OpenTelemetry for ``edgeq serve --tracing`` (optional: ``pip install 'edgeq-server[otel]'``):
a SERVER span per RPC from opentelemetry-instrumentation-grpc's grpc.aio interceptor, and,
for the ``serve`` command, an SDK tracer provider exporting by OTLP as the standard
``OTEL_EXPORTER_OTLP_*`` / ``OTEL_SERVICE_NAME`` variables say. A process that installed
its own provider (tests, an embedding application) keeps it."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
_MISSING = "--tracing needs OpenTelemetry: pip install 'edgeq-server[otel]'"


def server_interceptor() -> Any:
    """The grpc.aio server interceptor that opens a span per RPC."""
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError as exc:
        raise ValueError(_MISSING) from exc
    return aio_server_interceptor()  # type: ignore[no-untyped-call]


def configure_exporter() -> None:
    """An SDK provider with a batching OTLP exporter, unless a provider is installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ValueError(_MISSING) from exc
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": "edgeq"}))
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning("tracing on but no OTLP exporter installed (opentelemetry-exporter-otlp-proto-grpc): "
                    "spans are made and dropped")
    else:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
