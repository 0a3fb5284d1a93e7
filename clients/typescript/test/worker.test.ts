// The Worker against a small scripted QueueService (connect-node's HTTP/2 adapter): what it
// sends for each handler outcome, batched heartbeats, lost leases, timeouts, stopping, a
// refused stream, and the unary retry policy read from service-config.json.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  EdgeqClient,
  FailError,
  LeaseOutcome,
  QueueService,
  RETRY_POLICY,
  RetryError,
  Worker,
  retryPolicyOf,
  type Handler,
  type WorkerOptions,
} from "../src/index.js";

type Nack = { leaseToken: string; errorMessage: string; retryDelay?: { seconds: bigint; nanos: number }; terminal: boolean };

class Fake {
  leaseRequests: { maxInFlight: number }[] = [];
  leaseError?: ConnectError;
  toLease: { job: { id: string; queue: string; attempts: number }; leaseToken: string }[] = [];
  acks: { leaseToken: string; result: Uint8Array }[][] = [];
  nacks: Nack[][] = [];
  heartbeats: string[][] = [];
  /** Heartbeat outcome per token (default OK). */
  beatOutcome = new Map<string, LeaseOutcome>();
  statsFailures: ConnectError[] = [];
  statsCalls: number[] = [];

  routes = (router: ConnectRouter) => router.service(QueueService, {
    lease: async function* (this: void, req, ctx) {
      fake.leaseRequests.push({ maxInFlight: req.maxInFlight });
      if (fake.leaseError) throw fake.leaseError;
      const jobs = fake.toLease.splice(0);
      if (jobs.length) yield { jobs };
      await new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));
    },
    ack: (req) => {
      fake.acks.push(req.items.map((i) => ({ leaseToken: i.leaseToken, result: i.result })));
      return { outcomes: req.items.map(() => LeaseOutcome.OK) };
    },
    nack: (req) => {
      fake.nacks.push(req.items.map((i) => ({ leaseToken: i.leaseToken, errorMessage: i.errorMessage, retryDelay: i.retryDelay, terminal: i.terminal })));
      return { outcomes: req.items.map(() => LeaseOutcome.OK) };
    },
    heartbeat: (req) => {
      fake.heartbeats.push([...req.leaseTokens]);
      return { outcomes: req.leaseTokens.map((t) => fake.beatOutcome.get(t) ?? LeaseOutcome.OK) };
    },
    getQueueStats: () => {
      fake.statsCalls.push(Date.now());
      const err = fake.statsFailures.shift();
      if (err) throw err;
      return { stats: [] };
    },
  });
}
let fake: Fake;

const servers: http2.Http2Server[] = [];
const sessions = new Set<http2.ServerHttp2Session>();
after(() => {
  for (const s of sessions) s.destroy();
  for (const s of servers) s.close();
});

async function scripted(jobs = 0): Promise<[Fake, EdgeqClient]> {
  fake = new Fake();
  for (let i = 1; i <= jobs; i++) fake.toLease.push({ job: { id: `job-${i}`, queue: "w", attempts: 1 }, leaseToken: `tok-${i}` });
  const f = fake;
  const server = http2.createServer(connectNodeAdapter({ routes: f.routes }));
  servers.push(server);
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return [f, new EdgeqClient(`127.0.0.1:${port}`, { timeoutMs: 5000 })];
}

function quiet(): { warnings: string[]; errors: string[]; logger: WorkerOptions["logger"] } {
  const warnings: string[] = [];
  const errors: string[] = [];
  return { warnings, errors, logger: { warn: (m: string) => warnings.push(m), error: (m: string) => errors.push(m) } };
}

async function until(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const tokens = (batches: { leaseToken: string }[][]) => batches.flat().map((i) => i.leaseToken).sort();

test("outcomes: a result is acked with it, errors, Fail, Retry and a thrown string nacked", async () => {
  const [f, c] = await scripted(5);
  const log = quiet();
  const handler: Handler = async (job) => {
    switch (job.id) {
      case "job-1": return "hello";
      case "job-2": throw new Error("x".repeat(10_000));
      case "job-3": throw new FailError("bad input");
      case "job-4": throw new RetryError(0, "later");
      default: throw "nil map write"; // eslint-disable-line no-throw-literal
    }
  };
  const worker = new Worker(c, ["w"], handler, { logger: log.logger, concurrency: 2 }).start();
  try {
    await until(() => f.acks.flat().length + f.nacks.flat().length === 5, "5 settles");
  } finally {
    await worker.stop(1000);
  }
  assert.equal(f.leaseRequests[0].maxInFlight, 8, "maxInFlight defaults to 4 x concurrency");
  assert.equal(new TextDecoder().decode(f.acks.flat()[0].result), "hello");
  const nacks = new Map(f.nacks.flat().map((n) => [n.leaseToken, n]));
  assert.equal(nacks.get("tok-2")!.errorMessage.length, 8192, "error texts are clipped");
  assert.equal(nacks.get("tok-2")!.retryDelay, undefined, "an error: the server's backoff");
  assert.equal(nacks.get("tok-3")!.terminal, true);
  assert.ok(nacks.get("tok-4")!.retryDelay && nacks.get("tok-4")!.retryDelay!.nanos > 0, "Retry(0): at once, not the server's backoff");
  assert.equal(nacks.get("tok-5")!.errorMessage, "panic: nil map write");
  assert.equal(f.nacks.length, 1, "the four nacks went out in one call");
});

test("one batched heartbeat for running and waiting leases; STALE aborts that job's signal only", async () => {
  const [f, c] = await scripted(3);
  f.beatOutcome.set("tok-1", LeaseOutcome.STALE);
  const log = quiet();
  const aborted = new Set<string>();
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const worker = new Worker(c, ["w"], async (job, signal) => {
    signal.addEventListener("abort", () => aborted.add(job.id));
    await gate;
    return "done";
  }, { logger: log.logger, concurrency: 2, leaseDurationMs: 1000 }).start();
  try {
    await until(() => f.heartbeats.length >= 2, "two heartbeat ticks");
    assert.deepEqual([...f.heartbeats[0]].sort(), ["tok-1", "tok-2", "tok-3"], "one call for all due leases, the waiting one too");
    assert.ok(!f.heartbeats[1].includes("tok-1"), "a lost lease is no longer extended");
    assert.deepEqual([...aborted], ["job-1"]);
    release();
    await until(() => f.acks.flat().length === 2, "the other two acked");
  } finally {
    await worker.stop(1000);
  }
  assert.deepEqual(tokens(f.acks), ["tok-2", "tok-3"], "the lost lease's outcome is not sent");
  assert.equal(f.nacks.length, 0);
  assert.equal(log.warnings.filter((w) => w.includes("job-1")).length, 1, log.warnings.join("\n"));
  assert.equal(worker.lostLeases, 1);
});

test("a handler past its timeout is aborted and nacked at once; its late result is dropped", async () => {
  const [f, c] = await scripted(1);
  const log = quiet();
  let sawAbort = false;
  const worker = new Worker(c, ["w"], async (_job, signal) => {
    await new Promise((r) => setTimeout(r, 400));
    sawAbort = signal.aborted;
    return "too late";
  }, { logger: log.logger, handlerTimeoutMs: 100 }).start();
  try {
    await until(() => f.nacks.length === 1, "the timeout's nack", 2000);
    assert.match(f.nacks[0][0].errorMessage, /^handler timed out after 100ms$/);
    assert.equal(f.nacks[0][0].retryDelay, undefined, "the server's backoff");
    await new Promise((r) => setTimeout(r, 500));
  } finally {
    await worker.stop(1000);
  }
  assert.ok(sawAbort);
  assert.equal(f.acks.length, 0);
});

test("stop hands back jobs not started at once, and running ones after the drain timeout", async () => {
  const [f, c] = await scripted(3);
  const log = quiet();
  const worker = new Worker(c, ["w"], (_job, signal) => new Promise<void>((r) => signal.addEventListener("abort", () => r())),
    { logger: log.logger, concurrency: 1 }).start();
  await until(() => f.leaseRequests.length > 0, "the stream");
  await new Promise((r) => setTimeout(r, 200));
  const started = Date.now();
  await worker.stop(300);
  assert.ok(Date.now() - started >= 290 && Date.now() - started < 3000);
  const nacks = f.nacks.flat();
  assert.deepEqual(nacks.map((n) => n.leaseToken).sort(), ["tok-1", "tok-2", "tok-3"]);
  for (const n of nacks) assert.ok(n.retryDelay && n.retryDelay.seconds === 0n && n.retryDelay.nanos > 0, "an immediate retry");
  assert.equal(f.nacks[0].length, 2, "the two not started went first, together");
  assert.equal(f.acks.length, 0);
});

test("a stream refused for good stops the worker with that error", async () => {
  const [f, c] = await scripted();
  f.leaseError = new ConnectError("bad token", Code.Unauthenticated);
  const log = quiet();
  const worker = new Worker(c, ["w"], async () => {}, { logger: log.logger }).start();
  await assert.rejects(worker.done, (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated);
  assert.equal(f.leaseRequests.length, 1, "not reopened");
  assert.equal(log.errors.length, 1);
  await worker.stop();
});

test("other stream errors reconnect with backoff, logged", async () => {
  const [f, c] = await scripted();
  f.leaseError = new ConnectError("draining", Code.Unavailable);
  const log = quiet();
  const worker = new Worker(c, ["w"], async () => {}, { logger: log.logger, minBackoffMs: 10, maxBackoffMs: 40 }).start();
  try {
    await until(() => f.leaseRequests.length >= 4, "reconnects");
  } finally {
    await worker.stop(100);
  }
  assert.ok(log.warnings.some((w) => /lease stream lost .*reconnecting/.test(w)), log.warnings.join("\n"));
});

test("the unary retry policy is service-config.json's, and the server's pushback is honoured", async () => {
  const config = JSON.parse(readFileSync(new URL("../src/service-config.json", import.meta.url), "utf8"));
  const p = config.methodConfig[0].retryPolicy;
  assert.equal(RETRY_POLICY.maxAttempts, p.maxAttempts);
  assert.equal(RETRY_POLICY.initialBackoffMs, Number(p.initialBackoff.replace("s", "")) * 1000);
  assert.equal(RETRY_POLICY.maxBackoffMs, Number(p.maxBackoff.replace("s", "")) * 1000);
  assert.equal(RETRY_POLICY.backoffMultiplier, p.backoffMultiplier);
  assert.deepEqual([...RETRY_POLICY.retryableStatusCodes], [Code.Unavailable]);
  assert.equal(retryPolicyOf({ methodConfig: [] }, "edgeq.v1.QueueService"), undefined);

  const [f, c] = await scripted();
  const unavailable = () => new ConnectError("later", Code.Unavailable, { "grpc-retry-pushback-ms": "300" });
  f.statsFailures = [unavailable(), unavailable()];
  await c.stats();
  assert.equal(f.statsCalls.length, 3);
  assert.ok(f.statsCalls[1] - f.statsCalls[0] >= 280, `pushback not honoured: ${f.statsCalls[1] - f.statsCalls[0]}ms`);

  f.statsCalls = [];
  f.statsFailures = Array.from({ length: 10 }, () => new ConnectError("down", Code.Unavailable));
  await assert.rejects(c.stats(), (err: unknown) => ConnectError.from(err).code === Code.Unavailable);
  assert.equal(f.statsCalls.length, RETRY_POLICY.maxAttempts);

  f.statsCalls = [];
  f.statsFailures = [new ConnectError("no", Code.FailedPrecondition)];
  await assert.rejects(c.stats());
  assert.equal(f.statsCalls.length, 1, "only the listed codes are retried");
});
