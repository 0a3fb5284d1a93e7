/**
 * EdgeqClient: every QueueService RPC over @connectrpc/connect-node's gRPC transport, with a
 * deadline on each unary call, an optional bearer token, and retries of UNAVAILABLE.
 * connect-node has no gRPC service-config retry policy, so an interceptor applies the one
 * in service-config.json (retry-policy.ts) to unary calls, within the deadline, honouring
 * the server's pushback.
 *
 * Retried writes never duplicate: enqueue() sends an idempotency key for every job (the
 * caller's, or "auto-<UUIDv7>" generated once per job before the first attempt), and a
 * write answered ABORTED with reason COMMITTED_NOT_REPLICATED is resent unchanged within
 * the deadline (errors.ts), then thrown as a CommittedNotReplicatedError.
 *
 * `durability` (client option, or per call with enqueueWith()) is when an Enqueue is
 * acknowledged; unset, the server's default (its --durability).
 *
 * With an OpenTelemetry SDK registered, enqueue() puts the caller's active trace context in
 * each job's headers (traceparent, tracestate) unless the job has a traceparent (tracing.ts).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { autoIdempotencyKey, asCommittedNotReplicated, retryCommittedWrites, abortableSleep, retryDelayMs } from "./errors.js";
import { ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { RETRY_POLICY, type RetryPolicy } from "./retry-policy.js";
import { withTraceContext } from "./tracing.js";
import {
  AckRequestSchema,
  Durability,
  EnqueueRequestSchema,
  HeartbeatRequestSchema,
  JobSelectionSchema,
  ListJobsRequestSchema,
  NackRequestSchema,
  QueueService,
  ScheduleSchema,
  type Group,
  type JobSpecSchema,
} from "./gen/edgeq/v1/queue_pb.js";

export interface ClientOptions {
  /** Deadline of each unary call, in ms (default 10 000). */
  timeoutMs?: number;
  /** Bearer token for servers with auth on. */
  token?: string;
  /** When enqueue() is acknowledged (default: the server's own default). */
  durability?: DurabilityLevel;
  /** TLS: `true` verifies the server against the system roots; an object adds a private
   * CA, a client certificate and key (mTLS) or the name to verify. A target
   * `edgeqs://host:port` means TLS too; `edgeq://host:port` and a bare `host:port` are
   * plaintext unless this is set. */
  tls?: true | TlsOptions;
}

/** TLS settings (PEM text or Buffers, as node:tls takes them). */
export interface TlsOptions {
  /** CA(s) the server's certificate must chain to (default: the system roots). */
  ca?: string | Buffer;
  /** Client certificate chain and key, for servers that require one (mTLS). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name to verify the server's certificate against, when it differs from the host. */
  serverName?: string;
}

/** The URL and node:http2 options for `target` and `tls` (exported for tests). */
export function transportTarget(
  target: string, tls: true | TlsOptions | undefined,
): { baseUrl: string; nodeOptions?: Record<string, unknown> } {
  let secure = tls !== undefined;
  let address = target;
  if (target.startsWith("edgeqs://")) {
    secure = true;
    address = target.slice("edgeqs://".length);
  } else if (target.startsWith("edgeq://")) {
    if (secure) throw new TypeError(`${target} means plaintext; use edgeqs:// (or host:port) with tls`);
    address = target.slice("edgeq://".length);
  } else if (target.startsWith("https://")) {
    return { baseUrl: target, nodeOptions: tlsOptions(tls) };
  } else if (target.startsWith("http://")) {
    if (secure) throw new TypeError(`${target} means plaintext; use https:// with tls`);
    return { baseUrl: target };
  }
  if (!secure) return { baseUrl: `http://${address}` };
  return { baseUrl: `https://${address}`, nodeOptions: tlsOptions(tls) };
}

function tlsOptions(tls: true | TlsOptions | undefined): Record<string, unknown> {
  if (tls === undefined || tls === true) return {};
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls: cert and key go together (a client certificate needs its key)");
  }
  const out: Record<string, unknown> = {};
  if (tls.ca !== undefined) out.ca = tls.ca;
  if (tls.cert !== undefined) out.cert = tls.cert;
  if (tls.key !== undefined) out.key = tls.key;
  if (tls.serverName !== undefined) out.servername = tls.serverName;
  return out;
}

/** When an Enqueue is acknowledged: "local" once stored on the primary, "replicated" once
 * replicas confirmed it too, "edge" once durable in the answering node's edge log (even
 * while no primary is reachable; stored on the primary later, exactly once). */
export type DurabilityLevel = "local" | "replicated" | "edge";

/** Per-call settings of enqueueWith(). */
export interface EnqueueOptions {
  /** Overrides the client's durability for this call. */
  durability?: DurabilityLevel;
}

const DURABILITY: Record<DurabilityLevel, Durability> = {
  local: Durability.LOCAL,
  replicated: Durability.REPLICATED,
  edge: Durability.EDGE,
};

function durability(level: DurabilityLevel | undefined): Durability {
  if (level === undefined) return Durability.UNSPECIFIED;
  if (!Object.hasOwn(DURABILITY, level)) throw new TypeError(`unknown durability ${JSON.stringify(level)}`);
  return DURABILITY[level];
}

/** gRPC's retry policy (service-config.json, see retry-policy.ts) for unary calls. */
function retryPolicy(policy: RetryPolicy): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req); // Lease: the Worker reconnects by itself
    let backoff = policy.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const e = ConnectError.from(err);
        if (!policy.retryableStatusCodes.has(e.code) || attempt >= policy.maxAttempts || req.signal.aborted) throw err;
        // The server's pushback when it gave one (grpc-retry-pushback-ms, or its RetryInfo,
        // e.g. NO_PRIMARY during a failover); a negative or malformed pushback means "do not
        // retry", as in gRPC. Else backoff with full jitter.
        const header = e.metadata.get("grpc-retry-pushback-ms");
        let pushback: number | undefined;
        if (header !== null) {
          if (!/^\d+$/.test(header.trim())) throw err;
          pushback = Number(header.trim());
        }
        pushback ??= retryDelayMs(err);
        await abortableSleep(pushback ?? Math.random() * backoff, req.signal);
        if (req.signal.aborted) throw err;
        backoff = Math.min(backoff * policy.backoffMultiplier, policy.maxBackoffMs);
      }
    }
  };
}

export type JobSpecInit = MessageInitShape<typeof JobSpecSchema>;
/** A job's progress, as a Heartbeat carries it. */
export type ProgressReport = { leaseToken: string; value: number; message: string };

export class EdgeqClient {
  /** The generated client, for anything this class does not wrap. */
  readonly raw: Client<typeof QueueService>;
  readonly timeoutMs: number;
  readonly durability: DurabilityLevel | undefined;

  constructor(target: string, options: ClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    durability(options.durability); // unknown values fail here, not at the first enqueue
    this.durability = options.durability;
    // Outermost first: each resend of a committed write gets its own UNAVAILABLE retries.
    const interceptors: Interceptor[] = [retryCommittedWrites(this.timeoutMs), retryPolicy(RETRY_POLICY)];
    if (options.token) {
      const token = options.token;
      interceptors.push((next) => (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      });
    }
    const { baseUrl, nodeOptions } = transportTarget(target, options.tls);
    this.raw = createClient(QueueService, createGrpcTransport({ baseUrl, interceptors, nodeOptions }));
  }

  private get call() {
    return { timeoutMs: this.timeoutMs };
  }

  /** Adds 1..1000 jobs atomically. A job without an idempotencyKey is sent with one the
   * client generates (the caller's object is not modified); results name every key. Such
   * a job is never reported duplicate by that key: a duplicate of a generated key can only
   * be this call's own earlier attempt. A job whose uniqueKey an active job holds comes back
   * as that job, duplicate and unique true.
   *
   * Jobs accepted at the edge come back with acceptedAtEdge (and buffered) true, acceptedBy
   * naming the node whose edge log holds them, and txid 0n; until they reach the primary
   * that node's get() shows them as JobState.ACCEPTED. A node whose edge log is full
   * answers ResourceExhausted with errorReason(err) === EDGE_LOG_FULL: nothing was stored,
   * send again after retryDelayMs(err) (the client does not). */
  enqueue(...jobs: JobSpecInit[]) {
    return this.enqueueWith({}, ...jobs);
  }
  /** enqueue() with per-call options. */
  async enqueueWith(options: EnqueueOptions, ...jobs: JobSpecInit[]) {
    const auto = new Set<number>();
    const specs = jobs.map((job, i) => {
      // The caller's trace context (OpenTelemetry), for the worker's span; a no-op without an SDK.
      const headers = withTraceContext(job.headers);
      if (headers !== undefined && headers !== job.headers) job = { ...job, headers };
      if (job.idempotencyKey) return job;
      auto.add(i);
      return { ...job, idempotencyKey: autoIdempotencyKey() };
    });
    const request = create(EnqueueRequestSchema, { jobs: specs, durability: durability(options.durability ?? this.durability) });
    let resp;
    try {
      resp = await this.raw.enqueue(request, this.call);
    } catch (err) {
      const cnr = asCommittedNotReplicated(err);
      if (cnr === undefined) throw err;
      cnr.idempotencyKeys = request.jobs.map((j) => j.idempotencyKey);
      throw cnr;
    }
    resp.results.forEach((r, i) => {
      if (!r.idempotencyKey && request.jobs[i]) r.idempotencyKey = request.jobs[i].idempotencyKey;
      if (auto.has(i) && !r.unique) r.duplicate = false; // a unique_key duplicate is always reported
    });
    // One flag, two fields: a server older than accepted_at_edge sets only buffered.
    resp.buffered = resp.acceptedAtEdge = resp.buffered || resp.acceptedAtEdge;
    return resp;
  }
  async get(jobId: string, minTxid = 0n) {
    return (await this.raw.getJob({ jobId, minTxid }, this.call)).job!;
  }
  list(request: MessageInitShape<typeof ListJobsRequestSchema> = {}) {
    return this.raw.listJobs(request, this.call);
  }
  async stats(...queues: string[]) {
    return (await this.raw.getQueueStats({ queues }, this.call)).stats;
  }
  cancel(jobId: string) {
    return this.raw.cancelJob({ jobId }, this.call);
  }
  retry(jobId: string) {
    return this.raw.retryJob({ jobId }, this.call);
  }
  /**
   * Redrive every job the selection picks — FAILED by default, or CANCELLED; optionally
   * only those created in [createdAfter, createdBefore) — in RetryJobs calls of at most
   * `batch` jobs each (0: the server's 1000) until none is left. Resolves to how many.
   */
  async retryJobs(selection: MessageInitShape<typeof JobSelectionSchema>, batch = 0): Promise<bigint> {
    return this.bulk((limit) => this.raw.retryJobs({ selection, limit }, this.call), batch);
  }
  /** Cancel every job the selection picks — PENDING by default, or RUNNING — as retryJobs does. */
  async cancelJobs(selection: MessageInitShape<typeof JobSelectionSchema>, batch = 0): Promise<bigint> {
    return this.bulk((limit) => this.raw.cancelJobs({ selection, limit }, this.call), batch);
  }
  private async bulk(call: (limit: number) => Promise<{ count: bigint; more: boolean }>, batch: number): Promise<bigint> {
    let total = 0n;
    for (;;) {
      const resp = await call(batch);
      total += resp.count;
      if (!resp.more) return total;
    }
  }
  /** Lease at most `jobs` of `queue` per `perMs` (a token bucket on the primary shared by
   * every worker; leases wait, nothing is refused); jobs = 0 removes the limit. With
   * `options.keyHeader` the limit is per key instead: each distinct value of that job
   * header gets its own bucket (a queue has at most one queue-wide and one per-key limit;
   * both apply). */
  setRateLimit(queue: string, jobs: number, perMs = 1000, options?: { keyHeader?: string }) {
    const period = jobs > 0 ? { seconds: BigInt(Math.floor(perMs / 1000)), nanos: (perMs % 1000) * 1e6 } : undefined;
    const keyHeader = options?.keyHeader ?? "";
    return this.raw.setRateLimit({ queue, jobs: BigInt(jobs), period, keyHeader }, this.call);
  }
  /** Give `group` (JobSpec.group; "" is the default group) of `queue` a share of its leases
   * of `weight` (1..1000; default 1) relative to the queue's other groups while it has
   * ready jobs. */
  setGroupWeight(queue: string, group: string, weight: number) {
    return this.raw.setGroupWeight({ queue, group, weight }, this.call);
  }
  /** Every fair group of `queue`, by name, with its weight and its ready (pending) and
   * running jobs (all pages). */
  async listGroups(queue: string) {
    const groups: Group[] = [];
    let pageToken = "";
    do {
      const resp = await this.raw.listGroups({ queue, pageToken }, this.call);
      groups.push(...resp.groups);
      pageToken = resp.nextPageToken;
    } while (pageToken);
    return groups;
  }
  /** Create or replace a cron schedule; resolves to it with its next tick. */
  async upsertSchedule(schedule: MessageInitShape<typeof ScheduleSchema>) {
    return (await this.raw.upsertSchedule({ schedule }, this.call)).schedule!;
  }
  async listSchedules() {
    return (await this.raw.listSchedules({}, this.call)).schedules;
  }
  async deleteSchedule(name: string) {
    return (await this.raw.deleteSchedule({ name }, this.call)).deleted;
  }
  async pauseSchedule(name: string) {
    return (await this.raw.pauseSchedule({ name }, this.call)).schedule!;
  }
  async resumeSchedule(name: string) {
    return (await this.raw.resumeSchedule({ name }, this.call)).schedule!;
  }
  pause(queue: string) {
    return this.raw.pauseQueue({ queue }, this.call);
  }
  resume(queue: string) {
    return this.raw.resumeQueue({ queue }, this.call);
  }
  ack(items: MessageInitShape<typeof AckRequestSchema>["items"]) {
    return this.raw.ack({ items }, this.call);
  }
  nack(items: MessageInitShape<typeof NackRequestSchema>["items"]) {
    return this.raw.nack({ items }, this.call);
  }
  /** Extends the leases; `progress` reports some of their jobs' progress (each names one of the tokens). */
  heartbeat(leaseTokens: string[], extendByMs: number, progress: ProgressReport[] = []) {
    const extendBy = { seconds: BigInt(Math.floor(extendByMs / 1000)), nanos: (extendByMs % 1000) * 1e6 };
    return this.raw.heartbeat(create(HeartbeatRequestSchema, { leaseTokens, extendBy, progress }), this.call);
  }
  nodeInfo() {
    return this.raw.getNodeInfo({}, this.call);
  }
}
