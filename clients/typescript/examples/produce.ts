/**
 * Enqueue N jobs "job-<i>" on queue "interop" (max_attempts 3). Jobs with i % 3 == 0 run at
 * once; the others are delayed by DELAY_MS. Prints the job ids as JSON. Used by
 * tests/test_interop.py: `npx tsx examples/produce.ts TARGET N DELAY_MS`.
 */
import { EdgeqClient } from "../src/index.js";

const [target, n, delayMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] ?? 0)];
const client = new EdgeqClient(target);
const jobs = Array.from({ length: n }, (_, i) => ({
  queue: "interop",
  payload: new TextEncoder().encode(`job-${i}`),
  maxAttempts: 3,
  headers: { producer: "typescript" },
  ...(i % 3 === 0 ? {} : { delay: { seconds: BigInt(Math.floor(delayMs / 1000)), nanos: (delayMs % 1000) * 1e6 } }),
}));
const resp = await client.enqueue(...jobs);
console.log(JSON.stringify(resp.results.map((r) => r.jobId)));
