/**
 * Worker: one Lease stream with credits (maxInFlight), at most `concurrency` handlers at a
 * time, heartbeats at half the lease, batched acks/nacks, reconnect with exponential
 * backoff and full jitter when the stream ends (drain, primary change, network), and a
 * draining stop().
 */
import type { Job } from "./gen/edgeq/v1/queue_pb.js";
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
  maxBackoffMs?: number;
}

const dur = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) });
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

type Settle = { ack: { leaseToken: string } } | { nack: { leaseToken: string; errorMessage: string; retryDelay?: ReturnType<typeof dur>; terminal?: boolean } };

export class Worker {
  private readonly opts: Required<Omit<WorkerOptions, "workerId">> & { workerId: string };
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
    };
  }

  start(): this {
    this.flusher = setInterval(() => void this.flush(), 5);
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
              this.pending.push({ nack: { leaseToken: leased.leaseToken, errorMessage: "worker stopping", retryDelay: dur(0.001) } });
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
    try {
      await this.handler(job, this.handlers.signal);
      this.pending.push({ ack: { leaseToken } });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (err instanceof FailError) {
        this.pending.push({ nack: { leaseToken, errorMessage: message, terminal: true } });
      } else if (err instanceof RetryError) {
        this.pending.push({ nack: { leaseToken, errorMessage: message, retryDelay: dur(Math.max(err.afterMs, 0.001)) } });
      } else {
        this.pending.push({ nack: { leaseToken, errorMessage: message } });
      }
    } finally {
      clearInterval(beat);
    }
  }

  private async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const batch = this.pending.splice(0, this.pending.length);
    const acks = batch.flatMap((s) => ("ack" in s ? [s.ack] : []));
    const nacks = batch.flatMap((s) => ("nack" in s ? [s.nack] : []));
    try {
      if (acks.length) await this.client.ack(acks);
      if (nacks.length) await this.client.nack(nacks);
    } catch {
      // lost settles: the leases expire and the jobs are delivered again (at-least-once)
    }
  }
}
