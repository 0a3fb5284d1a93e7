/**
 * Worker: follows docs/worker-contract.md.
 *
 * - One Lease stream with credits (maxInFlight, default 4 × concurrency). Jobs beyond
 *   `concurrency` wait in the worker for a free handler slot; their leases are held and
 *   extended like running ones.
 * - Every held lease (waiting, running, or settling) is extended at half the lease, in one
 *   batched Heartbeat call per tick for all leases due. A STALE/INVALID heartbeat outcome for
 *   a lease not yet settling is a lost lease: that job's AbortSignal aborts, its outcome is
 *   not sent, and the loss is logged once.
 * - Outcomes go out in batches (one Ack and one Nack call per flush, ≤ 256 items, gathered
 *   ≤ 5 ms). A flush failing transiently is resent unchanged (same lease tokens: the server
 *   answers a repeated Ack/Nack with its first outcome) until the leases would have expired.
 *   STALE/INVALID outcomes and settles given up on are logged once per job.
 * - The stream reconnects with full-jitter backoff; a stream refused for good
 *   (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED) stops the worker
 *   with that error (`done` rejects with it).
 * - stop(drainMs): the stream is cancelled, jobs not started are handed back at once, running
 *   handlers get drainMs, then their signal aborts and they are handed back; all outcomes
 *   are flushed before stop() resolves.
 * - Each handler runs in an OpenTelemetry CONSUMER span `process <queue>`, child of the trace
 *   context in the job's headers (tracing.ts); a no-op without an OpenTelemetry SDK.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { LeaseOutcome, type Job } from "./gen/edgeq/v1/queue_pb.js";
import type { EdgeqClient } from "./client.js";
import { inHandlerSpan } from "./tracing.js";

/** Throw to retry after `afterMs` (0: at once). */
export class RetryError extends Error {
  constructor(readonly afterMs = 0, message = "retry") {
    super(message);
  }
}
/** Throw to fail the job for good (dead-letter state). */
export class FailError extends Error {}

/** What a handler may resolve to: nothing, or the job's result (a string is stored UTF-8). */
export type HandlerResult = void | undefined | string | Uint8Array;

/** Reports how far the handler got (a finite number in its own unit, a note of at most 256
 * bytes): sent with the worker's next heartbeat tick (the last report wins), stored on the job. */
export type ReportProgress = (value: number, message?: string) => void;

/** Handles one job. Resolving acks it (a returned string/Uint8Array is the job's result);
 * throwing RetryError / FailError / any other error nacks it (see the contract's §3). `signal`
 * aborts when the lease is lost (cancelled, expired, re-leased), the handler timeout passes,
 * or stop()'s drain timeout ends: the outcome is then not sent (or the job handed back).
 * `reportProgress` reports the job's progress. */
export type Handler = (
  job: Job, signal: AbortSignal, reportProgress: ReportProgress,
) => Promise<HandlerResult> | HandlerResult;

export interface WorkerOptions {
  /** Handlers running at once (default 8). */
  concurrency?: number;
  /** Unsettled leases the server may push to this worker (default 4 × concurrency). */
  maxInFlight?: number;
  /** Lease duration, ≥ 1000 (default 30 000). */
  leaseDurationMs?: number;
  /** A handler running longer is cancelled and nacked (default: no timeout). */
  handlerTimeoutMs?: number;
  workerId?: string;
  /** Reconnect backoff, full jitter: from minBackoffMs doubling to maxBackoffMs (100, 5 000).
   * Also the pause between settle resends. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Where lost leases, refused and failed settles and reconnects are reported (default: console). */
  logger?: Pick<Console, "warn" | "error">;
}

/** Settle errors worth resending: the server restarting, draining, failing over, or a
 * write committed but not yet confirmed by replicas. */
const TRANSIENT = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Internal, Code.Unknown, Code.Aborted]);
/** A Lease stream refused for good: the worker stops with the error. */
const FATAL = new Set([Code.InvalidArgument, Code.Unauthenticated, Code.PermissionDenied, Code.Unimplemented]);
/** Settle batch limits. */
const MAX_BATCH = 256;
const GATHER_MS = 5;
const MAX_ERROR_MESSAGE = 8192;
/** Heartbeat (and lease ack) request limit of the server. */
const MAX_HEARTBEAT = 1000;

const dur = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) });
/** A Nack's retry_delay of 0 means "the server's backoff"; this is the smallest non-zero one. */
const IMMEDIATE = { seconds: 0n, nanos: 1000 };
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(t); resolve(); };
    signal?.addEventListener("abort", onAbort, { once: true });
  });

/** Error texts are clipped to 8192 characters. */
export function clip(text: string): string {
  return text.length <= MAX_ERROR_MESSAGE ? text : text.slice(0, MAX_ERROR_MESSAGE - 3) + "...";
}

function describe(value: unknown): string {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null) {
    try {
      const json = JSON.stringify(value);
      if (json !== undefined) return json;
    } catch {
      // fall through
    }
  }
  return String(value);
}

function formatMs(ms: number): string {
  return ms >= 1000 && ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

type NackItem = { leaseToken: string; errorMessage: string; retryDelay?: typeof IMMEDIATE; terminal?: boolean };
type Outcome = { ack: { leaseToken: string; result?: Uint8Array } } | { nack: NackItem };
type Settle = { held: Held } & Outcome;

/** One lease held by this worker, from its delivery until its Ack/Nack is answered. */
interface Held {
  job: Job;
  token: string;
  controller: AbortController;
  /** performance.now() when it is due for extension. */
  due: number;
  /** performance.now() when the lease lapses unless extended. */
  expires: number;
  state: "waiting" | "running" | "settling";
  /** A heartbeat found it lost: nothing is sent for it. */
  lost: boolean;
  /** Its outcome is decided (sent, handed back, timed out): a later handler result is dropped. */
  decided: boolean;
  timeout?: ReturnType<typeof setTimeout>;
  /** The handler's latest progress report, until a heartbeat takes it. */
  progress?: { value: number; message: string };
}

const now = () => performance.now();

export class Worker {
  private readonly opts: Required<Omit<WorkerOptions, "workerId" | "handlerTimeoutMs">> & {
    workerId: string;
    handlerTimeoutMs: number | undefined;
  };
  private readonly stopping = new AbortController();
  private readonly held = new Map<string, Held>();
  private readonly waiting: Held[] = [];
  /** Handler promises still running (including ones whose outcome will be dropped). */
  private readonly handlerPromises = new Set<Promise<void>>();
  /** Handler slots in use. */
  private busy = 0;
  private idle: (() => void)[] = [];
  private readonly pending: Settle[] = [];
  private gatherTimer?: ReturnType<typeof setTimeout>;
  private readonly flushes = new Set<Promise<void>>();
  private ticker?: ReturnType<typeof setInterval>;
  private beating = false;
  private loop?: Promise<void>;
  private stopped?: Promise<void>;
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;
  /** The error that stopped the worker (a refused Lease stream), if any. */
  error: unknown;
  /** Leases found lost (heartbeat) or refused at settle (STALE/INVALID). */
  lostLeases = 0;
  /** Settles when the worker has stopped; rejects with the error that stopped it, if one did. */
  readonly done: Promise<void>;

  constructor(
    private readonly client: EdgeqClient,
    private readonly queues: string[],
    private readonly handler: Handler,
    options: WorkerOptions = {},
  ) {
    const concurrency = options.concurrency ?? 8;
    if (!(concurrency >= 1)) throw new RangeError("concurrency must be at least 1");
    const leaseDurationMs = options.leaseDurationMs ?? 30_000;
    if (!(leaseDurationMs >= 1000)) throw new RangeError("leaseDurationMs must be at least 1000");
    if (options.handlerTimeoutMs !== undefined && !(options.handlerTimeoutMs > 0)) {
      throw new RangeError("handlerTimeoutMs must be positive");
    }
    this.opts = {
      concurrency,
      maxInFlight: options.maxInFlight ?? 4 * concurrency,
      leaseDurationMs,
      handlerTimeoutMs: options.handlerTimeoutMs,
      workerId: options.workerId ?? "",
      minBackoffMs: options.minBackoffMs ?? 100,
      maxBackoffMs: options.maxBackoffMs ?? 5_000,
      logger: options.logger ?? console,
    };
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined); // not an unhandled rejection when nobody awaits it
  }

  start(): this {
    if (this.loop) return this;
    const tick = Math.min(Math.max(this.opts.leaseDurationMs / 8, 50), 5_000);
    this.ticker = setInterval(() => void this.heartbeat(tick), tick);
    this.loop = this.run();
    return this;
  }

  /** Stop taking jobs, hand back the ones not started, let running handlers finish for up
   * to drainMs (then abort their signal and hand them back for an immediate retry), flush
   * all outcomes. */
  stop(drainMs = 30_000): Promise<void> {
    this.stopped ??= this.drain(drainMs);
    return this.stopped;
  }

  // ------------------------------------------------------------------ the Lease stream

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping.signal.aborted) {
      let reason: unknown = "the stream ended";
      try {
        const stream = this.client.raw.lease(
          {
            queues: this.queues, workerId: this.opts.workerId, maxInFlight: this.opts.maxInFlight,
            leaseDuration: dur(this.opts.leaseDurationMs),
          },
          { signal: this.stopping.signal },
        );
        for await (const message of stream) {
          failures = 0;
          for (const leased of message.jobs) this.receive(leased.job!, leased.leaseToken);
        }
      } catch (err) {
        if (this.stopping.signal.aborted) return;
        const code = ConnectError.from(err).code;
        if (FATAL.has(code)) {
          this.error = err;
          this.opts.logger.error(`edgeq: lease stream refused, stopping the worker: ${String(err)}`);
          void this.stop();
          return;
        }
        reason = err;
      }
      if (this.stopping.signal.aborted) return;
      failures++;
      const cap = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(failures - 1, 30));
      const delay = Math.random() * cap;
      this.opts.logger.warn(`edgeq: lease stream lost (${String(reason)}); reconnecting in ${Math.round(delay)}ms`);
      await sleep(delay, this.stopping.signal);
    }
  }

  private receive(job: Job, token: string): void {
    const t = now();
    const held: Held = {
      job, token, controller: new AbortController(), due: t + this.opts.leaseDurationMs / 2,
      expires: t + this.opts.leaseDurationMs, state: "waiting", lost: false, decided: false,
    };
    this.held.set(token, held);
    if (this.stopping.signal.aborted) {
      this.handBack(held, "worker stopping");
      return;
    }
    this.waiting.push(held);
    this.pump();
  }

  /** Starts waiting jobs while handler slots are free. */
  private pump(): void {
    while (this.busy < this.opts.concurrency && this.waiting.length > 0 && !this.stopping.signal.aborted) {
      const held = this.waiting.shift()!;
      if (held.lost || held.decided) continue;
      this.busy++;
      held.state = "running";
      const p = this.handle(held).finally(() => {
        this.handlerPromises.delete(p);
      });
      this.handlerPromises.add(p);
    }
  }

  private release(): void {
    this.busy--;
    this.pump();
    if (this.busy === 0) for (const wake of this.idle.splice(0)) wake();
  }

  // ------------------------------------------------------------------ handlers

  private async handle(held: Held): Promise<void> {
    const { job, token, controller } = held;
    let released = false;
    const free = () => {
      if (!released) {
        released = true;
        this.release();
      }
    };
    const timeoutMs = this.opts.handlerTimeoutMs;
    if (timeoutMs !== undefined) {
      held.timeout = setTimeout(() => {
        if (held.decided || held.lost) return;
        const message = `handler timed out after ${formatMs(timeoutMs)}`;
        this.opts.logger.warn(`edgeq: job ${job.id}: ${message}; nacking it`);
        controller.abort(new Error(message));
        this.settle(held, { nack: { leaseToken: token, errorMessage: message } });
        free(); // the slot is free again; whatever the handler returns later is dropped
      }, timeoutMs);
    }
    let settle: Outcome;
    try {
      // In a CONSUMER span, child of the producer's (OpenTelemetry; a no-op without an SDK).
      const report: ReportProgress = (value, message = "") => {
        if (!Number.isFinite(value)) throw new RangeError("progress value must be a finite number");
        if (new TextEncoder().encode(message).length > 256) throw new RangeError("progress message must be at most 256 bytes");
        held.progress = { value, message };
      };
      const result = await inHandlerSpan(job, () => this.handler(job, controller.signal, report));
      const bytes = typeof result === "string" ? new TextEncoder().encode(result) : result instanceof Uint8Array ? result : undefined;
      settle = { ack: bytes ? { leaseToken: token, result: bytes } : { leaseToken: token } };
    } catch (err) {
      if (err instanceof FailError) {
        settle = { nack: { leaseToken: token, errorMessage: clip(err.message), terminal: true } };
      } else if (err instanceof RetryError) {
        const delay = err.afterMs > 0 ? dur(err.afterMs) : IMMEDIATE;
        settle = { nack: { leaseToken: token, errorMessage: clip(err.message), retryDelay: delay } };
      } else if (err instanceof Error) {
        settle = { nack: { leaseToken: token, errorMessage: clip(err.message || String(err)) } };
      } else {
        // A thrown non-Error is this language's panic: reported on the job, the worker runs on.
        this.opts.logger.error(`edgeq: job ${job.id} panicked: ${describe(err)}`);
        settle = { nack: { leaseToken: token, errorMessage: clip(`panic: ${describe(err)}`) } };
      }
    } finally {
      clearTimeout(held.timeout);
      free();
    }
    // A lost lease (logged when found) or an outcome already decided: nothing to send.
    if (held.lost || held.decided) return;
    this.settle(held, settle);
  }

  /** Hands a job back for an immediate retry (stop). */
  private handBack(held: Held, why: string): void {
    if (held.lost || held.decided) return;
    held.controller.abort(new Error(why));
    this.settle(held, { nack: { leaseToken: held.token, errorMessage: why, retryDelay: IMMEDIATE } });
  }

  // ------------------------------------------------------------------ settling

  private settle(held: Held, outcome: Outcome): void {
    held.decided = true;
    held.state = "settling";
    this.pending.push({ held, ...outcome } as Settle);
    if (this.pending.length >= MAX_BATCH) {
      this.flushNow();
    } else if (this.gatherTimer === undefined) {
      this.gatherTimer = setTimeout(() => this.flushNow(), GATHER_MS);
    }
  }

  /** Sends what is pending, in batches of at most 256. */
  private flushNow(): void {
    clearTimeout(this.gatherTimer);
    this.gatherTimer = undefined;
    while (this.pending.length > 0) {
      const batch = this.pending.splice(0, MAX_BATCH);
      const p = this.flush(batch).finally(() => this.flushes.delete(p));
      this.flushes.add(p);
    }
  }

  private async flush(batch: Settle[]): Promise<void> {
    const acks = batch.filter((s): s is Settle & { ack: { leaseToken: string } } => "ack" in s);
    const nacks = batch.filter((s): s is Settle & { nack: NackItem } => "nack" in s);
    const calls: Promise<void>[] = [];
    if (acks.length) {
      const items = acks.map((s) => s.ack);
      calls.push(this.send("ack", acks, async () => (await this.client.ack(items)).outcomes));
    }
    if (nacks.length) {
      const items = nacks.map((s) => s.nack);
      calls.push(this.send("nack", nacks, async () => (await this.client.nack(items)).outcomes));
    }
    await Promise.all(calls);
  }

  /** One settle call; a transient failure resends the same items with backoff until the
   * leases would have expired. Refused outcomes and a call given up on are logged once. */
  private async send(what: string, batch: Settle[], call: () => Promise<LeaseOutcome[]>): Promise<void> {
    const log = this.opts.logger;
    let backoff = this.opts.minBackoffMs;
    try {
      for (;;) {
        try {
          const outcomes = await call();
          batch.forEach((s, i) => {
            const outcome = outcomes[i] ?? LeaseOutcome.OK;
            if (outcome !== LeaseOutcome.OK && !s.held.lost) {
              this.lostLeases++;
              log.warn(`edgeq: ${what} of job ${s.held.job.id} refused (${LeaseOutcome[outcome]}): the lease expired, was re-leased or the job cancelled; nothing changed`);
            }
          });
          return;
        } catch (err) {
          const code = ConnectError.from(err).code;
          // Held leases keep being extended while settling; give up once they would lapse.
          const expires = Math.max(...batch.map((s) => s.held.expires));
          if (!TRANSIENT.has(code) || now() + backoff >= expires) {
            // The leases expire and the jobs are delivered again (at-least-once).
            for (const s of batch) {
              log.error(`edgeq: ${what} of job ${s.held.job.id} failed (${String(err)}); it will be delivered again`);
            }
            return;
          }
          await sleep(backoff);
          backoff = Math.min(backoff * 2, this.opts.maxBackoffMs);
        }
      }
    } finally {
      for (const s of batch) this.held.delete(s.held.token);
    }
  }

  // ------------------------------------------------------------------ heartbeats

  /** One batched Heartbeat call for every held lease due (within the next tick). */
  private async heartbeat(tick: number): Promise<void> {
    if (this.beating) return; // the previous call is still out; next tick
    const horizon = now() + tick;
    const due = [...this.held.values()].filter((h) => !h.lost && (h.due <= horizon || h.progress !== undefined));
    if (due.length === 0) return;
    this.beating = true;
    try {
      for (let i = 0; i < due.length; i += MAX_HEARTBEAT) await this.extend(due.slice(i, i + MAX_HEARTBEAT));
    } finally {
      this.beating = false;
    }
  }

  private async extend(due: Held[]): Promise<void> {
    const sent = now();
    const progress = due.flatMap((h) => {
      const p = h.progress;
      h.progress = undefined;
      return p ? [{ leaseToken: h.token, ...p }] : [];
    });
    let outcomes: LeaseOutcome[];
    try {
      outcomes = (await this.client.heartbeat(due.map((h) => h.token), this.opts.leaseDurationMs, progress)).outcomes;
    } catch (err) {
      this.opts.logger.warn(`edgeq: heartbeat of ${due.length} leases failed (${String(err)}); retrying on the next tick`);
      return;
    }
    due.forEach((h, i) => {
      const outcome = outcomes[i] ?? LeaseOutcome.OK;
      if (outcome === LeaseOutcome.OK) {
        h.due = sent + this.opts.leaseDurationMs / 2;
        h.expires = sent + this.opts.leaseDurationMs;
        return;
      }
      // A settle on its way got there first (or will report the loss itself).
      if (h.state === "settling" || h.decided || h.lost) return;
      h.lost = true;
      this.lostLeases++;
      this.held.delete(h.token);
      if (outcome === LeaseOutcome.CANCEL_REQUESTED) {
        this.opts.logger.warn(`edgeq: job ${h.job.id} cancelled (CancelJob): the handler is aborted and nothing is sent`);
      } else {
        this.opts.logger.warn(`edgeq: lease of job ${h.job.id} lost (${LeaseOutcome[outcome]}): cancelled, expired or re-leased; its outcome will not be sent`);
      }
      clearTimeout(h.timeout);
      h.controller.abort(new Error(`lease lost (${LeaseOutcome[outcome]})`));
    });
  }

  // ------------------------------------------------------------------ stopping

  private async drain(drainMs: number): Promise<void> {
    this.stopping.abort();
    await this.loop;
    // Jobs received but not started go back at once.
    for (const held of this.waiting.splice(0)) this.handBack(held, "worker stopping");
    this.flushNow();
    // Running handlers get drainMs.
    if (this.busy > 0) {
      await Promise.race([new Promise<void>((r) => this.idle.push(r)), sleep(drainMs)]);
    }
    const left = [...this.held.values()].filter((h) => h.state === "running" && !h.decided && !h.lost);
    if (left.length) this.opts.logger.warn(`edgeq: drain timeout: handing back ${left.length} unfinished jobs`);
    for (const held of left) this.handBack(held, "worker stopped before the job finished");
    // Let handlers that watch their signal see it before the last flush.
    await sleep(0);
    this.flushNow();
    while (this.flushes.size > 0) await Promise.all(this.flushes);
    clearInterval(this.ticker);
    if (this.error !== undefined) this.rejectDone(this.error);
    else this.resolveDone();
  }
}
