/**
 * The package as a user installs it: `npm run build` writes dist/ (JavaScript, .d.ts, the
 * service config), and `import "@edgeq/client"` resolves through package.json `exports` to
 * it — plain node, no tsx. scripts/test-clients builds before testing.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the build has JavaScript, declarations and the service config", () => {
  for (const file of ["dist/index.js", "dist/index.d.ts", "dist/worker.d.ts", "dist/service-config.json"]) {
    assert.ok(existsSync(root + file), `${file} missing: run npm run build`);
  }
  const pkg = JSON.parse(readFileSync(root + "package.json", "utf8"));
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  assert.deepEqual(pkg.files, ["dist", "README.md"]);
});

test("import '@edgeq/client' works in plain node through the exports map", () => {
  const script = `
    const m = await import("@edgeq/client");
    console.log(JSON.stringify({ client: typeof m.EdgeqClient, worker: typeof m.Worker, attempts: m.RETRY_POLICY.maxAttempts }));
  `;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: root, encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), { client: "function", worker: "function", attempts: 5 });
});
