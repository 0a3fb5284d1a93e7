/**
 * OpenTelemetry (the API only, `@opentelemetry/api`): the W3C trace context travels in the
 * job's headers from the producer to the worker, as in the Python SDK.
 *
 * - withTraceContext(headers): at Enqueue, the caller's active span context goes into the
 *   job's headers (`traceparent`, `tracestate`) unless the job already carries a traceparent.
 * - inHandlerSpan(job, run): the Worker runs each handler in a CONSUMER span
 *   `process <queue>` whose parent is the context extracted from the job's headers, so the
 *   handler's span is a child of the span that enqueued it; a thrown error is recorded on it
 *   and sets its status to ERROR.
 *
 * Without an OpenTelemetry SDK registered (a tracer provider, a propagator and, for active
 * spans across awaits, a context manager) the API is a no-op: nothing is added to the
 * headers and no span is recorded.
 */
import { context, propagation, trace, ROOT_CONTEXT, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import type { Job } from "./gen/edgeq/v1/queue_pb.js";

/** The name of the tracer the Worker's spans come from. */
export const TRACER_NAME = "edgeq";

type Headers = { [key: string]: string };

/** `headers` with the active trace context added (keys already there win), unless they
 * carry a `traceparent`; the same object (possibly undefined) when nothing is added. The
 * caller's object is never modified. */
export function withTraceContext(headers: Headers | undefined): Headers | undefined {
  if (headers !== undefined && Object.hasOwn(headers, "traceparent")) return headers;
  const carrier: Headers = {};
  propagation.inject(context.active(), carrier);
  if (Object.keys(carrier).length === 0) return headers;
  return { ...carrier, ...headers };
}

/** Runs `run` in a CONSUMER span `process <queue>`, child of the context in the job's
 * headers, active while it runs; the span ends when `run` settles. */
export async function inHandlerSpan<T>(job: Job, run: () => Promise<T> | T): Promise<T> {
  const parent = propagation.extract(ROOT_CONTEXT, job.headers ?? {});
  const span = trace.getTracer(TRACER_NAME).startSpan(
    `process ${job.queue}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "edgeq",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.id,
        "edgeq.attempt": job.attempts,
      },
    },
    parent,
  );
  try {
    return await context.with(trace.setSpan(parent, span), run);
  } catch (err) {
    if (err instanceof Error) {
      span.recordException(err);
      span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
    } else {
      span.recordException(String(err));
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
    }
    throw err;
  } finally {
    span.end();
  }
}
