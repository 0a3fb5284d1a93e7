/**
 * gRPC's retry policy for unary calls, read from service-config.json (a checked-in copy of
 * clients/service-config.json, the one file all three SDKs load; scripts/gen copies it
 * and a test checks the copies are identical). connect-node has no service-config support,
 * so client.ts applies this policy in an interceptor the way gRPC would: up to maxAttempts,
 * a random pause in [0, backoff] with backoff starting at initialBackoff and multiplied by
 * backoffMultiplier up to maxBackoff, on the listed status codes only, and the server's
 * pushback (grpc-retry-pushback-ms, or a google.rpc.RetryInfo) instead of the random pause
 * when it sends one.
 */
import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  retryableStatusCodes: Set<Code>;
}

interface MethodConfig {
  name?: { service?: string; method?: string }[];
  retryPolicy?: {
    maxAttempts?: number;
    initialBackoff?: string;
    maxBackoff?: string;
    backoffMultiplier?: number;
    retryableStatusCodes?: (string | number)[];
  };
}

/** "0.1s" (a google.protobuf.Duration in JSON) in ms. */
function durationMs(text: string | undefined, what: string): number {
  const m = /^(\d+(?:\.\d+)?)s$/.exec(text ?? "");
  if (!m) throw new Error(`service config: ${what} ${JSON.stringify(text)} is not a duration like "0.1s"`);
  return Number(m[1]) * 1000;
}

/** "UNAVAILABLE" (or 14) as connect's Code. */
function statusCode(name: string | number): Code {
  if (typeof name === "number") return name as Code;
  const camel = name.toLowerCase().replace(/(^|_)([a-z])/g, (_, __, c: string) => c.toUpperCase());
  const code = (Code as unknown as Record<string, Code>)[camel];
  if (code === undefined) throw new Error(`service config: unknown status code ${name}`);
  return code;
}

/** The retry policy of `service`/`method` in a parsed service config (the most specific
 * name match, as gRPC picks it), or undefined when none applies. */
export function retryPolicyOf(config: { methodConfig?: MethodConfig[] }, service: string, method = ""): RetryPolicy | undefined {
  let best: MethodConfig | undefined;
  let bestRank = -1;
  for (const mc of config.methodConfig ?? []) {
    for (const n of mc.name ?? []) {
      const rank = !n.service ? 0 : n.service === service && !n.method ? 1 : n.service === service && n.method === method ? 2 : -1;
      if (rank > bestRank) [best, bestRank] = [mc, rank];
    }
  }
  const p = best?.retryPolicy;
  if (!p) return undefined;
  return {
    // gRPC caps maxAttempts at 5 whatever the config says.
    maxAttempts: Math.min(Math.max(p.maxAttempts ?? 1, 1), 5),
    initialBackoffMs: durationMs(p.initialBackoff, "initialBackoff"),
    maxBackoffMs: durationMs(p.maxBackoff, "maxBackoff"),
    backoffMultiplier: p.backoffMultiplier ?? 1,
    retryableStatusCodes: new Set((p.retryableStatusCodes ?? []).map(statusCode)),
  };
}

/** The parsed service-config.json shipped in this package. */
export const SERVICE_CONFIG: { methodConfig?: MethodConfig[] } = JSON.parse(
  readFileSync(new URL("./service-config.json", import.meta.url), "utf8"),
);

/** The policy of edgeq.v1.QueueService's unary calls. */
export const RETRY_POLICY: RetryPolicy = retryPolicyOf(SERVICE_CONFIG, "edgeq.v1.QueueService") ?? {
  maxAttempts: 1, initialBackoffMs: 0, maxBackoffMs: 0, backoffMultiplier: 1, retryableStatusCodes: new Set(),
};
