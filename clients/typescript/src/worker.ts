/**
 * Worker: one Lease stream with credits (maxInFlight), at most `concurrency` handlers at a
 * time, heartbeats at half the lease, batched acks/nacks, reconnect with exponential
 * backoff and full jitter when the stream ends (drain, primary change, network), and a
 * draining stop().
 *
 * Settles go out one flush at a time; a flush that fails transiently is resent unchanged
 * (same lease tokens: the server answers a repeated Ack/Nack with its first outcome) until
 * the leases would have expired. STALE/INVALID outcomes and settles given up on are logged
 * once per job.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { LeaseOutcome, type Job } from "./gen/edgeq/v1/queue_pb.js";
import type { EdgeqClient } from "./client.js";

/** Throw to retry after `afterMs` (0: at once). */
export class RetryError extends Error {
  constructor(readonly afterMs = 0, message = "retry") {
    super(message);
  }
}
/** Throw to fail the job for good (dead-letter state). */
export class FailError extends Error {}

export type Handler = (job: Job, signal: AbortSignal) => Promise<void>;

export interface WorkerOptions {
  concurrency?: number;
  maxInFlight?: number;
  leaseDurationMs?: number;
  workerId?: string;
  minBackoffMs?: number;
  /** Also bounds the pause between settle resends. */
  maxBackoffMs?: number;
  /** Where refused and failed settles are reported (default: console). */
  logger?: Pick<Console, "warn" | "error">;
}

/** Settle errors worth resending: the server restarting, draining, failing over, or a
 * write committed but not yet confirmed by replicas. */
const TRANSIENT = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Internal, Code.Unknown, Code.Aborted]);

const dur = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) });
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

type Settle = { jobId: string } & (
  | { ack: { leaseToken: string } }
  | { nack: { leaseToken: string; errorMessage: string; retryDelay?: ReturnType<typeof dur>; terminal?: boolean } }
);

export class Worker {
  private readonly opts: Required<Omit<WorkerOptions, "workerId">> & { workerId: string };
  private flushing?: Promise<void>;
  private readonly stopping = new AbortController();
  private readonly handlers = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private readonly pending: Settle[] = [];
  private waiters: (() => void)[] = [];
  private loop?: Promise<void>;
  private flusher?: ReturnType<typeof setInterval>;

  constructor(
    private readonly client: EdgeqClient,
    private readonly queues: string[],
    private readonly handler: Handler,
    options: WorkerOptions = {},
  ) {
    const concurrency = options.concurrency ?? 8;
    this.opts = {
      concurrency,
      maxInFlight: options.maxInFlight ?? concurrency,
      leaseDurationMs: options.leaseDurationMs ?? 30_000,
      workerId: options.workerId ?? "",
      minBackoffMs: options.minBackoffMs ?? 100,
      maxBackoffMs: options.maxBackoffMs ?? 5_000,
      logger: options.logger ?? console,
    };
  }

  start(): this {
    this.flusher = setInterval(() => {
      if (!this.flushing) void this.flush();
    }, 5);
    this.loop = this.run();
    return this;
  }

  /** Stop taking jobs, let running handlers finish for up to drainMs (then abort their
   * signal and nack them for an immediate retry), flush settles. */
  async stop(drainMs = 30_000): Promise<void> {
    this.stopping.abort();
    await this.loop;
    const all = Promise.all(this.running);
    const timer = new Promise((r) => setTimeout(r, drainMs));
    await Promise.race([all, timer]);
    this.handlers.abort();
    await all;
    clearInterval(this.flusher);
    await this.flush();
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopping.signal.aborted) {
      let delivered = false;
      try {
        const stream = this.client.raw.lease(
          {
            queues: this.queues, workerId: this.opts.workerId, maxInFlight: this.opts.maxInFlight,
            leaseDuration: dur(this.opts.leaseDurationMs),
          },
          { signal: this.stopping.signal },
        );
        for await (const message of stream) {
          for (const leased of message.jobs) {
            delivered = true;
            await this.slot();
            if (this.stopping.signal.aborted) {
              this.pending.push({ jobId: leased.job?.id ?? "", nack: { leaseToken: leased.leaseToken, errorMessage: "worker stopping", retryDelay: dur(0.001) } });
              continue;
            }
            const p = this.handle(leased.job!, leased.leaseToken).finally(() => {
              this.running.delete(p);
              this.waiters.shift()?.();
            });
            this.running.add(p);
          }
        }
      } catch {
        // the stream ended (UNAVAILABLE on drain or primary change, network, our abort)
      }
      if (this.stopping.signal.aborted) return;
      attempt = delivered ? 1 : attempt + 1;
      const cap = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(attempt, 16));
      await sleep(Math.random() * cap, this.stopping.signal);
    }
  }

  private async slot(): Promise<void> {
    while (this.running.size >= this.opts.concurrency) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  private async handle(job: Job, leaseToken: string): Promise<void> {
    const beat = setInterval(() => {
      this.client.heartbeat([leaseToken], this.opts.leaseDurationMs).catch(() => undefined);
    }, this.opts.leaseDurationMs / 2);
    const jobId = job.id;
    try {
      await this.handler(job, this.handlers.signal);
      this.pending.push({ jobId, ack: { leaseToken } });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (err instanceof FailError) {
        this.pending.push({ jobId, nack: { leaseToken, errorMessage: message, terminal: true } });
      } else if (err instanceof RetryError) {
        this.pending.push({ jobId, nack: { leaseToken, errorMessage: message, retryDelay: dur(Math.max(err.afterMs, 0.001)) } });
      } else {
        this.pending.push({ jobId, nack: { leaseToken, errorMessage: message } });
      }
    } finally {
      clearInterval(beat);
    }
  }

  /** Sends what is pending; one flush at a time (a running one is awaited first). */
  private async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.pending.length === 0) return;
    const batch = this.pending.splice(0, this.pending.length);
    this.flushing = (async () => {
      const acks = batch.filter((s) => "ack" in s);
      const nacks = batch.filter((s) => "nack" in s);
      if (acks.length) {
        const items = acks.map((s) => ("ack" in s ? s.ack : undefined)!);
        await this.send("ack", acks, async () => (await this.client.ack(items)).outcomes);
      }
      if (nacks.length) {
        const items = nacks.map((s) => ("nack" in s ? s.nack : undefined)!);
        await this.send("nack", nacks, async () => (await this.client.nack(items)).outcomes);
      }
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  /** One settle call; a transient failure resends the same items with backoff until the
   * leases would have expired. Refused outcomes and a call given up on are logged once. */
  private async send(what: string, batch: Settle[], call: () => Promise<LeaseOutcome[]>): Promise<void> {
    const log = this.opts.logger;
    const giveUp = Date.now() + this.opts.leaseDurationMs;
    let backoff = this.opts.minBackoffMs;
    for (;;) {
      try {
        const outcomes = await call();
        outcomes.forEach((outcome, i) => {
          if (outcome !== LeaseOutcome.OK && batch[i]) {
            log.warn(`edgeq: ${what} of job ${batch[i].jobId} refused (${LeaseOutcome[outcome]}): the lease expired, was re-leased or the job cancelled; nothing changed`);
          }
        });
        return;
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (!TRANSIENT.has(code) || Date.now() + backoff >= giveUp) {
          // The leases expire and the jobs are delivered again (at-least-once).
          log.error(`edgeq: ${what} of jobs ${batch.map((s) => s.jobId).join(", ")} failed (${String(err)}); they will be redelivered`);
          return;
        }
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, this.opts.maxBackoffMs);
      }
    }
  }
}
