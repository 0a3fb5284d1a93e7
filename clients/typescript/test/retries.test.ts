// Retried writes against a small real gRPC server (a scripted QueueService on
// connect-node's HTTP/2 adapter) that answers the first calls of a method with the server's
// rich errors: ABORTED + ErrorInfo COMMITTED_NOT_REPLICATED, or UNAVAILABLE + ErrorInfo
// NO_PRIMARY + RetryInfo (in grpc-status-details-bin).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  AckRequestSchema,
  CancelJobRequestSchema,
  CommittedNotReplicatedError,
  Durability,
  EDGE_LOG_FULL,
  EdgeqClient,
  EnqueueRequestSchema,
  HeartbeatRequestSchema,
  JobState,
  LeaseOutcome,
  NackRequestSchema,
  QueueService,
  RetryJobRequestSchema,
  Worker,
  type ClientOptions,
  errorInfo,
  errorReason,
  retryDelayMs,
} from "../src/index.js";

function errorInfoBytes(reason: string, metadata: Record<string, string>): Uint8Array {
  const w = new BinaryWriter().tag(1, 2).string(reason).tag(2, 2).string("edgeq.v1");
  for (const [k, v] of Object.entries(metadata)) {
    w.tag(3, 2).fork().tag(1, 2).string(k).tag(2, 2).string(v).join();
  }
  return w.finish();
}

function rich(code: Code, message: string, reason: string, metadata: Record<string, string>, retryMs?: number): ConnectError {
  const err = new ConnectError(message, code);
  err.details = [{ type: "google.rpc.ErrorInfo", value: errorInfoBytes(reason, metadata) }];
  if (retryMs !== undefined) {
    const duration = new BinaryWriter().tag(1, 0).int64(Math.floor(retryMs / 1000)).tag(2, 0).int32((retryMs % 1000) * 1e6).finish();
    err.details.push({ type: "google.rpc.RetryInfo", value: new BinaryWriter().tag(1, 2).bytes(duration).finish() });
  }
  return err;
}

const committed = (txid: string) => rich(Code.Aborted, "committed, not confirmed by replicas in time", "COMMITTED_NOT_REPLICATED", { txid });

class Scripted {
  requests = new Map<string, Uint8Array[]>();
  failures = new Map<string, number>();
  errors = new Map<string, ConnectError>();
  keys = new Map<string, string>();
  accepted = new Set<string>(); // job ids enqueued with Durability.EDGE
  outcome = LeaseOutcome.OK;
  leaseJobs: { job: { id: string; queue: string }; leaseToken: string }[] = [];
  private next = 0;

  record<D extends DescMessage>(method: string, schema: D, req: MessageShape<D>) {
    const list = this.requests.get(method) ?? [];
    list.push(toBinary(schema, req));
    this.requests.set(method, list);
    const left = this.failures.get(method) ?? 0;
    if (left > 0) {
      this.failures.set(method, left - 1);
      throw this.errors.get(method) ?? committed("42");
    }
  }

  sent(method: string): Uint8Array[] {
    return this.requests.get(method) ?? [];
  }

  routes = (router: ConnectRouter) => {
    const leaseJobs = () => this.leaseJobs.splice(0);
    return router.service(QueueService, {
      enqueue: (req) => {
        const results = req.jobs.map((job) => {
          const key = `${job.queue}/${job.idempotencyKey}`;
          const existing = job.idempotencyKey ? this.keys.get(key) : undefined;
          const jobId = existing ?? `job-${++this.next}`;
          if (job.idempotencyKey && !existing) this.keys.set(key, jobId); // stored: it committed
          return { jobId, duplicate: existing !== undefined, idempotencyKey: job.idempotencyKey };
        });
        this.record("Enqueue", EnqueueRequestSchema, req);
        if (req.durability !== Durability.EDGE) return { results, txid: 42n };
        for (const r of results) this.accepted.add(r.jobId);
        // As a node whose edge log holds the jobs (only the new field set: see enqueue()).
        return { results, acceptedAtEdge: true, acceptedBy: "edge-1:7000" };
      },
      getJob: (req) => ({ job: { id: req.jobId, state: this.accepted.has(req.jobId) ? JobState.ACCEPTED : JobState.PENDING } }),
      ack: (req) => {
        this.record("Ack", AckRequestSchema, req);
        return { outcomes: req.items.map(() => this.outcome) };
      },
      nack: (req) => {
        this.record("Nack", NackRequestSchema, req);
        return { outcomes: req.items.map(() => this.outcome) };
      },
      heartbeat: (req) => {
        this.record("Heartbeat", HeartbeatRequestSchema, req);
        return { outcomes: req.leaseTokens.map(() => this.outcome) };
      },
      cancelJob: (req) => {
        this.record("CancelJob", CancelJobRequestSchema, req);
        return { job: { id: req.jobId, state: JobState.CANCELLED } };
      },
      retryJob: (req) => {
        this.record("RetryJob", RetryJobRequestSchema, req);
        return { job: { id: req.jobId, state: JobState.PENDING } };
      },
      getQueueStats: () => {
        const left = this.failures.get("GetQueueStats") ?? 0;
        this.failures.set("GetQueueStats", left - 1);
        if (left > 0) throw this.errors.get("GetQueueStats");
        return { stats: [{ queue: "q", accepted: BigInt(this.accepted.size) }] };
      },
      lease: async function* (_req, ctx) {
        const jobs = leaseJobs();
        if (jobs.length) yield { jobs };
        await new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));
      },
    });
  };
}

const servers: http2.Http2Server[] = [];
const sessions = new Set<http2.ServerHttp2Session>();
after(() => {
  for (const s of sessions) s.destroy(); // the clients' connections too: nothing keeps the process alive
  for (const s of servers) s.close();
});

async function scripted(options: ClientOptions = {}): Promise<[Scripted, EdgeqClient]> {
  const s = new Scripted();
  const server = http2.createServer(connectNodeAdapter({ routes: s.routes }));
  servers.push(server);
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return [s, new EdgeqClient(`127.0.0.1:${port}`, { timeoutMs: 5000, ...options })];
}

function allEqual(sent: Uint8Array[], n: number) {
  assert.equal(sent.length, n);
  for (const m of sent) assert.deepEqual(m, sent[0]);
}

test("enqueue resends the same generated keys on COMMITTED_NOT_REPLICATED", async () => {
  const [s, c] = await scripted();
  s.failures.set("Enqueue", 2);
  const mine = { queue: "mail", payload: new Uint8Array([1]) };
  const resp = await c.enqueue(mine, { queue: "mail", payload: new Uint8Array([2]), idempotencyKey: "user-key" });
  assert.equal((mine as { idempotencyKey?: string }).idempotencyKey, undefined); // not modified
  allEqual(s.sent("Enqueue"), 3);
  const key = resp.results[0].idempotencyKey;
  assert.match(key, /^auto-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(resp.results[0].duplicate, false); // enqueued once by the caller
  assert.equal(resp.results[0].jobId, s.keys.get(`mail/${key}`));
  assert.equal(resp.results[1].idempotencyKey, "user-key");
  assert.equal(resp.results[1].duplicate, true); // a caller's key: the server's answer stands
});

test("past the deadline: CommittedNotReplicatedError with the txid and the keys", async () => {
  const [s, c] = await scripted({ timeoutMs: 700 });
  s.failures.set("Enqueue", 1e9);
  s.errors.set("Enqueue", committed("1234"));
  const started = Date.now();
  const err = await c.enqueue({ queue: "q", payload: new Uint8Array() }).then(() => undefined, (e: unknown) => e);
  assert.ok(Date.now() - started < 2000);
  assert.ok(err instanceof CommittedNotReplicatedError, String(err));
  assert.ok(err instanceof ConnectError && ConnectError.from(err) === err && err.code === Code.Aborted);
  assert.equal(err.txid, 1234n);
  assert.equal(err.reason, "COMMITTED_NOT_REPLICATED");
  assert.equal(errorReason(err), "COMMITTED_NOT_REPLICATED");
  const sent = s.sent("Enqueue");
  assert.ok(sent.length >= 3, `${sent.length} attempts`);
  allEqual(sent, sent.length);
  assert.equal(err.idempotencyKeys.length, 1);
  assert.match(err.idempotencyKeys[0], /^auto-/);
});

test("the other writes are resent unchanged", async () => {
  const calls: Record<string, (c: EdgeqClient) => Promise<unknown>> = {
    Ack: (c) => c.ack([{ leaseToken: "t1" }, { leaseToken: "t2" }]),
    Nack: (c) => c.nack([{ leaseToken: "t1", errorMessage: "boom" }]),
    Heartbeat: (c) => c.heartbeat(["t1", "t2"], 5000),
    CancelJob: (c) => c.cancel("j"),
    RetryJob: (c) => c.retry("j"),
  };
  for (const [method, call] of Object.entries(calls)) {
    const [s, c] = await scripted();
    s.failures.set(method, 2);
    await call(c);
    allEqual(s.sent(method), 3);
  }
});

test("reason and retry delay of other errors; plain ABORTED is not retried", async () => {
  const [s, c] = await scripted();
  s.failures.set("GetQueueStats", 1e9);
  s.errors.set("GetQueueStats", rich(Code.Unavailable, "no primary", "NO_PRIMARY", { node: "n1" }, 250));
  const err = await c.stats().then(() => undefined, (e: unknown) => e);
  assert.equal(ConnectError.from(err).code, Code.Unavailable);
  assert.equal(errorReason(err), "NO_PRIMARY");
  assert.deepEqual(errorInfo(err)?.metadata, { node: "n1" });
  assert.equal(retryDelayMs(err), 250);
  assert.ok(!(err instanceof CommittedNotReplicatedError));

  s.failures.set("Enqueue", 1);
  s.errors.set("Enqueue", new ConnectError("other", Code.Aborted));
  const plain = await c.enqueue({ queue: "q" }).then(() => undefined, (e: unknown) => e);
  assert.equal(ConnectError.from(plain).code, Code.Aborted);
  assert.equal(errorReason(plain), "");
  assert.ok(!(plain instanceof CommittedNotReplicatedError));
  assert.equal(s.sent("Enqueue").length, 1);
});

test("durability: the client's default and the per-call override are sent; edge acceptance maps through", async () => {
  const job = { queue: "q", payload: new Uint8Array([1]) };
  const sentDurability = (s: Scripted) => s.sent("Enqueue").map((b) => fromBinary(EnqueueRequestSchema, b).durability);

  let [s, c] = await scripted(); // no default: the server's
  await c.enqueue(job);
  await c.enqueueWith({ durability: "replicated" }, job);
  assert.deepEqual(sentDurability(s), [Durability.UNSPECIFIED, Durability.REPLICATED]);

  [s, c] = await scripted({ durability: "edge" });
  const resp = await c.enqueue(job);
  assert.equal(resp.acceptedAtEdge, true);
  assert.equal(resp.buffered, true);
  assert.equal(resp.acceptedBy, "edge-1:7000");
  assert.equal(resp.txid, 0n);
  assert.equal((await c.get(resp.results[0].jobId)).state, JobState.ACCEPTED);
  assert.equal((await c.stats("q"))[0].accepted, 1n);
  const local = await c.enqueueWith({ durability: "local" }, job);
  assert.equal(local.acceptedAtEdge, false);
  assert.equal(local.buffered, false);
  assert.equal(local.acceptedBy, "");
  assert.deepEqual(sentDurability(s), [Durability.EDGE, Durability.LOCAL]);

  assert.throws(() => new EdgeqClient("127.0.0.1:1", { durability: "fast" as never }), TypeError);
  await assert.rejects(c.enqueueWith({ durability: "fast" as never }, job), TypeError);
});

test("EDGE_LOG_FULL is named, carries its retry delay and is not resent", async () => {
  const [s, c] = await scripted({ durability: "edge" });
  s.failures.set("Enqueue", 1e9);
  s.errors.set("Enqueue", rich(Code.ResourceExhausted, "edge log full", EDGE_LOG_FULL, {}, 2000));
  const err = await c.enqueue({ queue: "q" }).then(() => undefined, (e: unknown) => e);
  assert.equal(ConnectError.from(err).code, Code.ResourceExhausted);
  assert.equal(errorReason(err), "EDGE_LOG_FULL");
  assert.equal(retryDelayMs(err), 2000);
  assert.ok(!(err instanceof CommittedNotReplicatedError));
  assert.equal(s.sent("Enqueue").length, 1);
});

test("the worker resends a failed settle with the same tokens and logs STALE once", async () => {
  const [s, c] = await scripted();
  s.leaseJobs = [{ job: { id: "job-1", queue: "w" }, leaseToken: "tok-1" }];
  s.failures.set("Ack", 2);
  s.errors.set("Ack", new ConnectError("try again", Code.Aborted)); // not retried by the client itself
  s.outcome = LeaseOutcome.STALE;
  const warnings: string[] = [];
  const errors: string[] = [];
  const logger = { warn: (m: string) => warnings.push(m), error: (m: string) => errors.push(m) };
  const worker = new Worker(c, ["w"], async () => {}, { concurrency: 1, minBackoffMs: 10, logger }).start();
  try {
    const deadline = Date.now() + 10_000;
    while (s.sent("Ack").length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  } finally {
    await worker.stop(2000);
  }
  allEqual(s.sent("Ack"), 3);
  assert.equal(errors.length, 0, errors.join("\n"));
  assert.equal(warnings.length, 1, warnings.join("\n"));
  assert.match(warnings[0], /ack of job job-1 refused \(STALE\)/);
});
