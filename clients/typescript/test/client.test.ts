import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import { EdgeqClient, JobState, NodeRole, RetryError, Worker, errorField, errorReason } from "../src/index.js";

const python = process.env.EDGEQ_PYTHON ?? resolve("../../.venv/bin/python");
const servers: ChildProcess[] = [];

/** A real edgeq server (the Python one), by default on port 0 with a fresh database. */
async function startServer(port = "0", db = join(mkdtempSync(join(tmpdir(), "edgeq-ts-")), "e.db")): Promise<string> {
  const proc = spawn(python, ["-m", "edgeq_server", "serve", "--port", port, "--db-path", db, "--log-level", "WARNING",
    "--drain-seconds", "1", "--grace-seconds", "1"], { stdio: ["ignore", "pipe", "inherit"] });
  servers.push(proc);
  const lines = createInterface({ input: proc.stdout! });
  for await (const line of lines) {
    if (line.startsWith("edgeq listening on ")) return line.slice("edgeq listening on ".length);
  }
  throw new Error("server exited before listening");
}

let client: EdgeqClient;
before(async () => { client = new EdgeqClient(await startServer()); });
after(() => { for (const s of servers) s.kill("SIGKILL"); });

async function waitState(id: string, want: JobState) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const job = await client.get(id);
    if (job.state === want) return job;
    if (Date.now() > deadline) throw new Error(`job ${id} is ${JobState[job.state]}, wanted ${JobState[want]}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("round trip, idempotency, stats, node info and named errors", async () => {
  const resp = await client.enqueue({ queue: "mail", payload: new TextEncoder().encode("hi"), idempotencyKey: "k" });
  const id = resp.results[0].jobId;
  const job = await client.get(id, resp.txid);
  assert.equal(new TextDecoder().decode(job.payload), "hi");
  assert.equal(job.state, JobState.PENDING);
  const again = await client.enqueue({ queue: "mail", payload: new Uint8Array([1]), idempotencyKey: "k" });
  assert.ok(again.results[0].duplicate);
  assert.equal(again.results[0].jobId, id);
  assert.equal((await client.stats("mail"))[0].pending, 1n);
  assert.equal((await client.list({ queue: "mail" })).jobs.length, 1);
  assert.equal((await client.nodeInfo()).role, NodeRole.STANDALONE);
  await assert.rejects(client.enqueue({ queue: "", payload: new Uint8Array() }), (err: unknown) => {
    const e = ConnectError.from(err);
    return e.code === Code.InvalidArgument && e.rawMessage.includes("jobs[0].queue")
      && errorReason(err) === "INVALID_FIELD" && errorField(err) === "jobs[0].queue";
  });
  await assert.rejects(client.get("0190a0a0-0000-7000-8000-000000000000"), (err: unknown) => ConnectError.from(err).code === Code.NotFound);
});

test("bulk cancel and retry by queue and state in bounded calls", async () => {
  for (let i = 0; i < 5; i++) await client.enqueue({ queue: "tsbulk", payload: new Uint8Array([i]) });
  assert.equal(await client.cancelJobs({ queue: "tsbulk" }, 2), 5n); // calls of 2, 2, 1
  assert.equal(await client.retryJobs({ queue: "tsbulk", state: JobState.CANCELLED }), 5n);
  assert.equal((await client.stats("tsbulk"))[0].pending, 5n);
  await assert.rejects(client.retryJobs({ queue: "tsbulk", state: JobState.PENDING }),
    (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && e.message.includes("selection.state"));
});

test("a uniqueKey returns the active job holding it, duplicate and unique", async () => {
  const first = await client.enqueue({ queue: "tsuq", payload: new Uint8Array([1]), uniqueKey: "daily" });
  const again = await client.enqueue({ queue: "tsuq", payload: new Uint8Array([2]), uniqueKey: "daily" });
  assert.equal(first.results[0].duplicate, false);
  assert.deepEqual([again.results[0].jobId, again.results[0].duplicate, again.results[0].unique],
    [first.results[0].jobId, true, true]);
  assert.equal((await client.get(first.results[0].jobId)).uniqueKey, "daily");
});

test("a handler's reported progress reaches the job with the next heartbeat", async () => {
  const id = (await client.enqueue({ queue: "tsprog", payload: new Uint8Array([1]) })).results[0].jobId;
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const worker = new Worker(client, ["tsprog"], async (_job, _signal, reportProgress) => {
    reportProgress(60, "three fifths");
    assert.throws(() => reportProgress(Number.NaN), RangeError);
    await gate;
  }, { concurrency: 1, leaseDurationMs: 30000 }).start(); // not due for 15 s: sent for the report
  try {
    for (let i = 0; i < 200; i++) {
      const job = await client.get(id);
      if (job.progress === 60) { assert.equal(job.progressMessage, "three fifths"); break; }
      assert.ok(i < 199, "progress never reached the job");
      await new Promise((r) => setTimeout(r, 50));
    }
    release();
    await waitState(id, JobState.COMPLETED);
  } finally {
    await worker.stop(5000);
  }
});

test("schedules and rate limits from the client", async () => {
  const s = await client.upsertSchedule({ name: "tss", queue: "tssq", cron: "0 * * * *", timeZone: "Asia/Tokyo" });
  assert.equal(s.timeZone, "Asia/Tokyo");
  assert.ok(s.nextRunAt);
  assert.equal((await client.pauseSchedule("tss")).paused, true);
  assert.equal((await client.resumeSchedule("tss")).paused, false);
  assert.deepEqual((await client.listSchedules()).map((x) => x.name), ["tss"]);
  assert.equal(await client.deleteSchedule("tss"), true);
  await client.setRateLimit("tsrl", 12, 60000);
  const [stats] = await client.stats("tsrl");
  assert.equal(stats.rateLimitJobs, 12n);
  assert.equal(stats.rateLimitPeriod?.seconds, 60n);
});

test("setRateLimit with keyHeader: a per-key limit, shown in stats", async () => {
  await client.setRateLimit("tskrl", 20, 60000);
  await client.setRateLimit("tskrl", 4, 2500, { keyHeader: "tenant" });
  let [stats] = await client.stats("tskrl");
  assert.equal(stats.keyRateLimitHeader, "tenant");
  assert.equal(stats.keyRateLimitJobs, 4n);
  assert.equal(stats.keyRateLimitPeriod?.seconds, 2n);
  assert.equal(stats.keyRateLimitPeriod?.nanos, 500_000_000);
  assert.equal(stats.rateLimitJobs, 20n); // the queue-wide limit stays
  await client.setRateLimit("tskrl", 0, undefined, { keyHeader: "tenant" });
  [stats] = await client.stats("tskrl");
  assert.equal(stats.keyRateLimitHeader, "");
  assert.equal(stats.keyRateLimitJobs, 0n);
  assert.equal(stats.rateLimitJobs, 20n);
});

test("fair groups: enqueue with a group, setGroupWeight, listGroups", async () => {
  const resp = await client.enqueue(
    { queue: "tsfq", payload: new Uint8Array([1]), group: "tenant-a" },
    { queue: "tsfq", payload: new Uint8Array([2]), group: "tenant-b" },
    { queue: "tsfq", payload: new Uint8Array([3]), group: "tenant-b" },
  );
  assert.equal((await client.get(resp.results[0].jobId, resp.txid)).group, "tenant-a");
  await client.setGroupWeight("tsfq", "tenant-b", 3);
  const groups = await client.listGroups("tsfq");
  assert.deepEqual(groups.map((g) => [g.group, g.weight, g.pending, g.running]),
    [["tenant-a", 1, 1n, 0n], ["tenant-b", 3, 2n, 0n]]); // the idle default group is not listed
  await assert.rejects(client.enqueue({ queue: "tsfq", group: "bad\u0001" }),
    (err: unknown) => ConnectError.from(err).code === Code.InvalidArgument && errorField(err) === "jobs[0].group");
});

test("durability on a standalone server: edge acts as local, replicated is refused", async () => {
  const c = new EdgeqClient(await startServer(), { durability: "edge" });
  const resp = await c.enqueue({ queue: "d", payload: new Uint8Array([1]) });
  assert.equal(resp.acceptedAtEdge, false);
  assert.ok(resp.txid > 0n);
  await assert.rejects(c.enqueueWith({ durability: "replicated" }, { queue: "d" }),
    (err: unknown) => ConnectError.from(err).code === Code.FailedPrecondition);
  const [stats] = await c.stats("d");
  assert.equal(stats.pending, 1n);
  assert.equal(stats.accepted, 0n);
  const info = await c.nodeInfo();
  assert.equal(info.durability, "local");
  assert.equal(info.edgeLogJobs, 0n);
});

test("a worker acks, retries then fails, and keeps long jobs alive with heartbeats", async () => {
  const ids: string[] = [];
  for (let i = 0; i < 10; i++) ids.push((await client.enqueue({ queue: "w", payload: new TextEncoder().encode("ok") })).results[0].jobId);
  const bad = (await client.enqueue({ queue: "w", payload: new TextEncoder().encode("bad"), maxAttempts: 2 })).results[0].jobId;
  const slow = (await client.enqueue({ queue: "w", payload: new TextEncoder().encode("slow") })).results[0].jobId;
  const worker = new Worker(client, ["w"], async (job) => {
    const p = new TextDecoder().decode(job.payload);
    if (p === "bad") throw new RetryError(1, "boom");
    if (p === "slow") await new Promise((r) => setTimeout(r, 3000)); // lease is 2 s
  }, { concurrency: 4, leaseDurationMs: 2000 }).start();
  try {
    for (const id of ids) await waitState(id, JobState.COMPLETED);
    const failed = await waitState(bad, JobState.FAILED);
    assert.equal(failed.attempts, 2);
    assert.match(failed.errorMessage, /boom/);
    const long = await waitState(slow, JobState.COMPLETED);
    assert.equal(long.attempts, 1);
  } finally {
    await worker.stop(5000);
  }
});

test("stop() lets a running handler finish and acks it", async () => {
  const id = (await client.enqueue({ queue: "drain", payload: new Uint8Array([1]) })).results[0].jobId;
  let started!: () => void;
  const running = new Promise<void>((r) => { started = r; });
  const worker = new Worker(client, ["drain"], async () => {
    started();
    await new Promise((r) => setTimeout(r, 500));
  }).start();
  await running;
  await worker.stop(5000);
  assert.equal((await waitState(id, JobState.COMPLETED)).attempts, 1);
});

test("a worker reconnects by itself when the server restarts", async () => {
  const db = join(mkdtempSync(join(tmpdir(), "edgeq-ts-")), "e.db");
  const target = await startServer("0", db);
  const first = servers[servers.length - 1];
  const c = new EdgeqClient(target);
  const seen: string[] = [];
  const worker = new Worker(c, ["r"], async (job) => { seen.push(new TextDecoder().decode(job.payload)); },
    { concurrency: 1, maxBackoffMs: 300 }).start();
  try {
    await c.enqueue({ queue: "r", payload: new TextEncoder().encode("one") });
    const until = async (n: number) => {
      const deadline = Date.now() + 20_000;
      while (seen.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    };
    await until(1);
    // SIGTERM: the server drains (the stream ends UNAVAILABLE); a new one takes its port and file.
    const exited = new Promise((r) => first.once("exit", r));
    first.kill("SIGTERM");
    await exited;
    await startServer(target.slice(target.lastIndexOf(":") + 1), db);
    await c.enqueue({ queue: "r", payload: new TextEncoder().encode("two") });
    await until(2);
    assert.deepEqual(seen, ["one", "two"]);
  } finally {
    await worker.stop(2000);
  }
});
