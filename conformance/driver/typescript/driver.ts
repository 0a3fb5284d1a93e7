/**
 * The TypeScript SDK's conformance driver: runs one Worker whose handler does what each job's
 * payload says, and reports on stdout (see conformance/README.md). Run with cwd
 * clients/typescript: node --import tsx conformance/driver/typescript/driver.ts ARGS
 */
import { parseArgs } from "node:util";
import { EdgeqClient, FailError, RetryError, Worker, type Job, type ReportProgress, type WorkerOptions } from "../../../clients/typescript/src/index.ts";

function emit(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

const log = {
  warn: (...args: unknown[]) => console.error("WARN", ...args),
  error: (...args: unknown[]) => console.error("ERROR", ...args),
};

/** Waits `ms`, or until `signal` aborts; true when it aborted. */
function waitOrAbort(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(true);
    const onAbort = () => { clearTimeout(t); resolve(true); };
    const t = setTimeout(() => { signal.removeEventListener("abort", onAbort); resolve(false); }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

async function handle(job: Job, signal: AbortSignal, reportProgress: ReportProgress): Promise<string | undefined> {
  const spec = JSON.parse(new TextDecoder().decode(job.payload)) as Record<string, unknown>;
  emit("start", { job: job.id, attempt: job.attempts });
  try {
    const message = (fallback: string) => (typeof spec.message === "string" ? spec.message : fallback);
    switch (spec.do) {
      case "succeed":
        return typeof spec.result === "string" ? spec.result : undefined;
      case "error":
        throw new Error(message("error"));
      case "fail":
        throw new FailError(message("fail"));
      case "retry":
        throw new RetryError(Number(spec.after_ms ?? 0), message("retry"));
      case "panic":
        throw message("panic"); // a string, not an Error: TypeScript's panic
      case "sleep":
        await new Promise((r) => setTimeout(r, Number(spec.ms)));
        return undefined;
      case "progress":
        reportProgress(Number(spec.value), message(""));
        await new Promise((r) => setTimeout(r, Number(spec.ms)));
        return undefined;
      case "wait_cancel":
        if (await waitOrAbort(Number(spec.ms), signal)) emit("cancelled", { job: job.id });
        return undefined;
      default:
        throw new Error(`unknown behaviour ${JSON.stringify(spec.do)}`);
    }
  } finally {
    emit("end", { job: job.id });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      queue: { type: "string" },
      concurrency: { type: "string" },
      "max-in-flight": { type: "string" },
      "lease-ms": { type: "string" },
      "handler-timeout-ms": { type: "string" },
      "drain-ms": { type: "string" },
    },
  });
  if (!values.target || !values.queue) throw new Error("--target and --queue are required");
  const int = (v: string | undefined) => (v === undefined ? undefined : Number.parseInt(v, 10));
  const options: WorkerOptions = { logger: log };
  if (values.concurrency !== undefined) options.concurrency = int(values.concurrency);
  if (values["max-in-flight"] !== undefined) options.maxInFlight = int(values["max-in-flight"]);
  if (values["lease-ms"] !== undefined) options.leaseDurationMs = int(values["lease-ms"]);
  if (values["handler-timeout-ms"] !== undefined) options.handlerTimeoutMs = int(values["handler-timeout-ms"]);
  const drainMs = int(values["drain-ms"]) ?? 30_000;

  const client = new EdgeqClient(values.target);
  const worker = new Worker(client, [values.queue], handle, options).start();
  let stopping = false;
  process.on("SIGTERM", () => {
    if (stopping) return;
    stopping = true;
    worker.stop(drainMs).then(
      () => {
        emit("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        console.error("ERROR stopping:", err);
        process.exit(1);
      },
    );
  });
  worker.done.catch((err: unknown) => {
    console.error("ERROR the worker stopped:", err);
    process.exit(2);
  });
  emit("ready");
}

main().catch((err: unknown) => {
  console.error("ERROR", err);
  process.exit(1);
});
