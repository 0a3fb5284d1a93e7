package edgeq

// OpenTelemetry: the caller's trace follows its jobs. Enqueue writes the W3C trace context
// of ctx (traceparent, tracestate) into each job's headers, unless the job already carries
// one; the Worker runs each handler in a CONSUMER span ("process <queue>") whose parent is
// that context, with the span in the handler's ctx, errors and panics recorded. Spans go
// to the global TracerProvider (otel.SetTracerProvider): without one they cost nothing.
// The same header names and span shape as the Python and TypeScript SDKs.

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
)

const tracerName = "github.com/edgeq/edgeq/clients/go"

// W3C Trace Context, whatever global propagator the program set (its default is a no-op).
var traceContext = propagation.TraceContext{}

// withTrace returns job with ctx's trace context in its headers (a copy when it adds one).
func withTrace(ctx context.Context, job *edgeqv1.JobSpec) *edgeqv1.JobSpec {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return job
	}
	if _, ok := job.GetHeaders()["traceparent"]; ok {
		return job
	}
	carrier := propagation.MapCarrier{}
	traceContext.Inject(ctx, carrier)
	out := &edgeqv1.JobSpec{}
	if job != nil {
		out = proto.Clone(job).(*edgeqv1.JobSpec)
	}
	if out.Headers == nil {
		out.Headers = make(map[string]string, len(carrier))
	}
	for k, v := range carrier {
		out.Headers[k] = v
	}
	return out
}

// handlerSpan starts the CONSUMER span of one handler run, child of the producer's span.
func handlerSpan(ctx context.Context, job *edgeqv1.Job) (context.Context, trace.Span) {
	parent := traceContext.Extract(ctx, propagation.MapCarrier(job.GetHeaders()))
	return otel.Tracer(tracerName).Start(parent, "process "+job.GetQueue(),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "edgeq"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", job.GetQueue()),
			attribute.String("messaging.message.id", job.GetId()),
			attribute.Int("edgeq.attempt", int(job.GetAttempts())),
		))
}

// endHandlerSpan records the handler's error (a panic included) and ends the span.
func endHandlerSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
	}
	span.End()
}
