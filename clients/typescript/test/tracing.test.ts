// OpenTelemetry end to end against a real edgeq server, with the in-memory exporter: the
// producer's trace context rides in the job's headers (W3C traceparent), the Worker's
// handler span is its child, and a failing handler's span records the error. The SDK
// (provider, propagator, context manager) is registered here only: the client itself uses
// just @opentelemetry/api. (node --test runs each file in its own process.)
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { randomUUID } from "node:crypto";
import { context, propagation, trace, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from "@opentelemetry/sdk-trace";
import { EdgeqClient, TRACER_NAME, Worker } from "../src/index.js";

const exporter = new InMemorySpanExporter();
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
propagation.setGlobalPropagator(new W3CTraceContextPropagator());
trace.setGlobalTracerProvider(new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] }));

const python = process.env.EDGEQ_PYTHON ?? resolve("../../.venv/bin/python");
let server: ChildProcess | undefined;

/** A real edgeq server (the Python one) on port 0 with a fresh database. */
async function startServer(): Promise<string> {
  const db = join(mkdtempSync(join(tmpdir(), "edgeq-ts-otel-")), "e.db");
  const proc = spawn(python, ["-m", "edgeq_server", "serve", "--port", "0", "--db-path", db, "--log-level", "WARNING",
    "--drain-seconds", "1", "--grace-seconds", "1"], { stdio: ["ignore", "pipe", "inherit"] });
  server = proc;
  for await (const line of createInterface({ input: proc.stdout! })) {
    if (line.startsWith("edgeq listening on ")) return line.slice("edgeq listening on ".length);
  }
  throw new Error("server exited before listening");
}

let client: EdgeqClient;
before(async () => { client = new EdgeqClient(await startServer()); });
after(() => { server?.kill("SIGKILL"); });

const queueName = () => `traced-${randomUUID().slice(0, 8)}`;
const bytes = (s: string) => new TextEncoder().encode(s);

/** Waits (no fixed timing: until the test runner's own timeout) for the finished spans named `name`. */
async function spansNamed(name: string): Promise<ReadableSpan[]> {
  for (;;) {
    const spans = exporter.getFinishedSpans().filter((s) => s.name === name);
    if (spans.length > 0) return spans;
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("the handler span is a child of the span that enqueued the job", async () => {
  const queue = queueName();
  const tracer = trace.getTracer("test");
  const { jobId, producer } = await tracer.startActiveSpan("signup request", async (span) => {
    try {
      const resp = await client.enqueue({ queue, payload: bytes("x") });
      return { jobId: resp.results[0].jobId, producer: span.spanContext() };
    } finally {
      span.end();
    }
  });
  const headers = (await client.get(jobId)).headers;
  assert.ok(headers.traceparent, `no traceparent in ${JSON.stringify(headers)}`);
  assert.equal(headers.traceparent.split("-")[1], producer.traceId);
  assert.equal(headers.traceparent.split("-")[2], producer.spanId);

  let handlerTraceId: string | undefined;
  const worker = new Worker(client, [queue], () => {
    handlerTraceId = trace.getActiveSpan()?.spanContext().traceId; // the span is active in the handler
  }).start();
  let span: ReadableSpan;
  try {
    [span] = await spansNamed(`process ${queue}`);
  } finally {
    await worker.stop(5_000);
  }
  assert.equal(span.kind, SpanKind.CONSUMER);
  assert.equal(span.instrumentationScope.name, TRACER_NAME);
  assert.equal(span.spanContext().traceId, producer.traceId);
  assert.equal(span.parentSpanContext?.spanId, producer.spanId);
  assert.equal(handlerTraceId, producer.traceId);
  assert.equal(span.status.code, SpanStatusCode.UNSET);
  assert.deepEqual(span.attributes, {
    "messaging.system": "edgeq",
    "messaging.operation.type": "process",
    "messaging.destination.name": queue,
    "messaging.message.id": jobId,
    "edgeq.attempt": 1,
  });
});

test("a failing handler's span records the error", async () => {
  const queue = queueName();
  await client.enqueue({ queue, payload: bytes("x"), maxAttempts: 1 });
  const worker = new Worker(client, [queue], () => { throw new Error("smtp said no"); }, { logger: { warn() {}, error() {} } }).start();
  let span: ReadableSpan;
  try {
    [span] = await spansNamed(`process ${queue}`);
  } finally {
    await worker.stop(5_000);
  }
  assert.equal(span.status.code, SpanStatusCode.ERROR);
  assert.equal(span.status.message, "smtp said no");
  const event = span.events.find((e) => e.name === "exception");
  assert.ok(event, `no exception event in ${JSON.stringify(span.events)}`);
  assert.equal(event.attributes?.["exception.message"], "smtp said no");
});

test("enqueue keeps a traceparent the job has, adds none outside a span, and leaves the caller's job alone", async () => {
  const queue = queueName();
  const own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const job = { queue, payload: bytes("x"), headers: { traceparent: own, who: "me" } };
  const plain = { queue, payload: bytes("y"), headers: { who: "me" } };
  const ids = await trace.getTracer("test").startActiveSpan("producer", async (span) => {
    try {
      return (await client.enqueue(job, plain)).results.map((r) => r.jobId);
    } finally {
      span.end();
    }
  });
  assert.deepEqual((await client.get(ids[0])).headers, { traceparent: own, who: "me" });
  assert.ok((await client.get(ids[1])).headers.traceparent);
  assert.deepEqual(plain.headers, { who: "me" }); // copied, not modified
  const outside = (await client.enqueue({ queue, payload: bytes("z") })).results[0].jobId;
  assert.deepEqual((await client.get(outside)).headers, {});
});
