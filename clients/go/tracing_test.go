package edgeq

// OpenTelemetry against a real server, spans kept by the SDK's in-memory exporter: a job
// enqueued inside a span carries its traceparent, and the Worker's handler runs in a
// CONSUMER span whose parent is that span, its error recorded.

import (
	"context"
	"errors"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	otelcodes "go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
)

func TestTraceContextFollowsTheJobIntoTheHandlersSpan(t *testing.T) {
	exporter := tracetest.NewInMemoryExporter()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	previous := otel.GetTracerProvider()
	otel.SetTracerProvider(provider)
	t.Cleanup(func() { otel.SetTracerProvider(previous); _ = provider.Shutdown(context.Background()) })

	c := dial(t)
	ctx, producer := provider.Tracer("shop").Start(context.Background(), "checkout")
	resp, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "traced", Payload: []byte("x"), MaxAttempts: 1})
	producer.End()
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetResults()[0].GetJobId()
	job, err := c.Get(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tp := job.GetHeaders()["traceparent"]; tp == "" || tp[3:35] != producer.SpanContext().TraceID().String() {
		t.Fatalf("traceparent %q does not carry the producer's trace %s", tp, producer.SpanContext().TraceID())
	}
	// A job that already has a traceparent keeps it.
	own := &edgeqv1.JobSpec{Queue: "other", Payload: []byte("y"),
		Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	if got := withTrace(ctx, own).GetHeaders()["traceparent"]; got != own.Headers["traceparent"] {
		t.Fatalf("traceparent overwritten: %q", got)
	}

	var mu sync.Mutex
	var inHandler trace.SpanContext
	w := NewWorker(c, []string{"traced"}, func(ctx context.Context, job *edgeqv1.Job) error {
		mu.Lock()
		inHandler = trace.SpanContextFromContext(ctx)
		mu.Unlock()
		return errors.New("smtp down")
	}, WorkerOptions{Concurrency: 1})
	stop := runWorker(t, w)
	waitState(t, c, id, edgeqv1.JobState_JOB_STATE_FAILED)
	stop()

	var consumer *tracetest.SpanStub
	for i, s := range exporter.GetSpans() {
		if s.Name == "process traced" {
			consumer = &exporter.GetSpans()[i]
		}
	}
	if consumer == nil {
		t.Fatalf("no handler span among %d spans", len(exporter.GetSpans()))
	}
	if consumer.SpanKind != trace.SpanKindConsumer || consumer.Parent.SpanID() != producer.SpanContext().SpanID() ||
		consumer.SpanContext.TraceID() != producer.SpanContext().TraceID() {
		t.Fatalf("handler span kind %v parent %v trace %v; want CONSUMER, child of %v", consumer.SpanKind,
			consumer.Parent.SpanID(), consumer.SpanContext.TraceID(), producer.SpanContext().SpanID())
	}
	if consumer.Status.Code != otelcodes.Error || consumer.Status.Description != "smtp down" || len(consumer.Events) == 0 {
		t.Fatalf("handler error not recorded: %+v", consumer.Status)
	}
	mu.Lock()
	defer mu.Unlock()
	if inHandler.SpanID() != consumer.SpanContext.SpanID() {
		t.Fatalf("the handler's ctx carries span %v, not its own %v", inHandler.SpanID(), consumer.SpanContext.SpanID())
	}
}
