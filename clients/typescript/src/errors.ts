/**
 * Errors and retried writes: the server's rich error details (a google.rpc.Status in the
 * grpc-status-details-bin trailer, which Connect exposes as ConnectError.details), read
 * here without generated google.rpc types: errorInfo() / errorReason() / retryDelayMs();
 * CommittedNotReplicatedError for a write that committed on the primary but was not
 * confirmed by replicas in time; autoIdempotencyKey(); and the interceptor that resends
 * such a write unchanged, with jittered backoff, within the call's deadline.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { randomFillSync } from "node:crypto";

/** google.rpc.ErrorInfo domain of the server's errors. */
export const ERROR_DOMAIN = "edgeq.v1";
/** ErrorInfo reason of a write that committed on the primary but was not confirmed by
 * replicas in time (status ABORTED, metadata "txid"). */
export const COMMITTED_NOT_REPLICATED = "COMMITTED_NOT_REPLICATED";
/** ErrorInfo reason of an Enqueue refused because the answering node's edge log is at its
 * cap (status ResourceExhausted, with a RetryInfo delay). Nothing was stored: send it again
 * after retryDelayMs(err); the client does not resend it by itself. */
export const EDGE_LOG_FULL = "EDGE_LOG_FULL";
/** Prefix of the idempotency keys the client generates for jobs sent without one. */
export const AUTO_KEY_PREFIX = "auto-";

/** A decoded google.rpc.ErrorInfo. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

function incoming(err: unknown, type: string): Uint8Array[] {
  if (!(err instanceof ConnectError)) return [];
  const out: Uint8Array[] = [];
  for (const d of err.details) {
    if ("type" in d && d.type === type) out.push(d.value);
  }
  return out;
}

function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.LengthDelimited) info.reason = r.string();
    else if (field === 2 && wire === WireType.LengthDelimited) info.domain = r.string();
    else if (field === 3 && wire === WireType.LengthDelimited) {
      const entry = new BinaryReader(r.bytes()); // map entry: 1 key, 2 value
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = entry.string();
        else entry.skip(w);
      }
      info.metadata[key] = value;
    } else r.skip(wire);
  }
  return info;
}

/** The google.rpc.ErrorInfo of a failed call, if the server sent one. */
export function errorInfo(err: unknown): ErrorInfo | undefined {
  if (err instanceof CommittedNotReplicatedError) return err.info;
  const [bytes] = incoming(err, "google.rpc.ErrorInfo");
  if (bytes === undefined) return undefined;
  try {
    return decodeErrorInfo(bytes);
  } catch {
    return undefined; // malformed details: as if there were none
  }
}

/** The ErrorInfo reason of a failed call ("COMMITTED_NOT_REPLICATED", "NO_PRIMARY",
 * "NOT_PRIMARY", "EDGE_LOG_FULL", ...), or "" when the server sent none. */
export function errorReason(err: unknown): string {
  return errorInfo(err)?.reason ?? "";
}

/** The request field a failed call names (ErrorInfo metadata "field", e.g. "jobs[2].queue"),
 * or "" when it names none. */
export function errorField(err: unknown): string {
  return errorInfo(err)?.metadata.field ?? "";
}

/** The google.rpc.RetryInfo delay of a failed call in ms, if the server sent one. */
export function retryDelayMs(err: unknown): number | undefined {
  const [bytes] = incoming(err, "google.rpc.RetryInfo");
  if (bytes === undefined) return undefined;
  try {
    const r = new BinaryReader(bytes);
    let ms: number | undefined;
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field !== 1 || wire !== WireType.LengthDelimited) {
        r.skip(wire);
        continue;
      }
      const d = new BinaryReader(r.bytes()); // google.protobuf.Duration: 1 seconds, 2 nanos
      let seconds = 0;
      let nanos = 0;
      while (d.pos < d.len) {
        const [f, w] = d.tag();
        if (f === 1 && w === WireType.Varint) seconds = Number(d.int64());
        else if (f === 2 && w === WireType.Varint) nanos = d.int32();
        else d.skip(w);
      }
      ms = seconds * 1000 + nanos / 1e6;
    }
    return ms;
  } catch {
    return undefined;
  }
}

/**
 * A write committed on the primary, but replicas did not confirm it before the call's
 * deadline, although the client resent it (same idempotency keys, same lease tokens) until
 * then. Sending the same request again is safe: it cannot duplicate. A ConnectError with
 * code Aborted (ConnectError.from() returns it as it is).
 */
export class CommittedNotReplicatedError extends ConnectError {
  readonly reason = COMMITTED_NOT_REPLICATED;
  /** The commit's txid (0n if the server did not say). */
  readonly txid: bigint;
  /** The Enqueue's idempotency keys, in request order (empty for other calls). */
  idempotencyKeys: string[] = [];

  constructor(
    err: ConnectError,
    readonly info: ErrorInfo,
  ) {
    super(err.rawMessage, err.code, err.metadata, undefined, err);
    this.details = err.details;
    const txid = info.metadata.txid ?? "";
    this.txid = /^\d+$/.test(txid) ? BigInt(txid) : 0n;
  }

  // ConnectError's own check would call every ConnectError one of these.
  static [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === "object" && v !== null && Object.prototype.isPrototypeOf.call(CommittedNotReplicatedError.prototype, v);
  }
}

/** err as a CommittedNotReplicatedError when it is one (ABORTED with that reason). */
export function asCommittedNotReplicated(err: unknown): CommittedNotReplicatedError | undefined {
  if (err instanceof CommittedNotReplicatedError) return err;
  if (!(err instanceof ConnectError) || err.code !== Code.Aborted) return undefined;
  const info = errorInfo(err);
  if (info?.reason !== COMMITTED_NOT_REPLICATED || info.domain !== ERROR_DOMAIN) return undefined;
  return new CommittedNotReplicatedError(err, info);
}

/** A UUIDv7 string (RFC 9562: 48-bit Unix milliseconds, version 7, 74 random bits). */
export function uuid7(): string {
  const b = new Uint8Array(16);
  randomFillSync(b, 6);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Buffer.from(b).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A fresh key as the client generates it for a job sent without one: "auto-<UUIDv7>". */
export function autoIdempotencyKey(): string {
  return AUTO_KEY_PREFIX + uuid7();
}

/** Methods that write: resent unchanged on COMMITTED_NOT_REPLICATED (the server dedupes
 * Enqueue by idempotency key and answers a repeated Ack/Nack/CancelJob/RetryJob alike). */
const WRITES = new Set(["Enqueue", "Ack", "Nack", "Heartbeat", "CancelJob", "RetryJob", "PauseQueue", "ResumeQueue"]);

/** Resends a write answered COMMITTED_NOT_REPLICATED: the very same request, after a jittered
 * backoff (50 ms doubling to 1 s, at least the server's RetryInfo delay), until the deadline
 * (timeoutMs from the first attempt); then throws the CommittedNotReplicatedError. Every
 * other call converts such an answer too. */
export function retryCommittedWrites(timeoutMs: number): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    const retry = WRITES.has(req.method.name);
    const deadline = Date.now() + timeoutMs;
    let backoff = 50;
    let last: CommittedNotReplicatedError | undefined;
    for (;;) {
      try {
        return await next(req);
      } catch (err) {
        const cnr = asCommittedNotReplicated(err);
        if (cnr === undefined) {
          // It did commit: say so rather than only "deadline exceeded".
          if (last !== undefined && ConnectError.from(err).code === Code.DeadlineExceeded) throw last;
          throw err;
        }
        last = cnr;
        const pause = Math.max(Math.random() * backoff, retryDelayMs(cnr) ?? 0);
        // Stop a quarter of the deadline early: connect-es reports any error thrown after its
        // own deadline timer fired as DeadlineExceeded, hiding "it did commit".
        const remaining = deadline - Date.now() - timeoutMs / 4;
        if (!retry || req.signal.aborted || remaining <= pause) throw cnr;
        await abortableSleep(pause, req.signal);
        if (req.signal.aborted) throw cnr;
        req.header.set("grpc-timeout", `${Math.max(1, Math.ceil(deadline - Date.now()))}m`);
        backoff = Math.min(backoff * 2, 1000);
      }
    }
  };
}

export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
