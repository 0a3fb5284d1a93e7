// TLS and mTLS against the real (Python) server, with certificates from tests/certs.py.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { EdgeqClient } from "../src/index.js";
import { transportTarget } from "../src/client.js";

const python = process.env.EDGEQ_PYTHON ?? resolve("../../.venv/bin/python");
const dir = mkdtempSync(join(tmpdir(), "edgeq-ts-tls-"));
let server: ChildProcess | undefined;
let target = "";

function pki(): void {
  const script = [
    "import sys; from pathlib import Path",
    `sys.path.insert(0, ${JSON.stringify(resolve("../../tests"))})`,
    "from support.certs import CA",
    `ca = CA(Path(${JSON.stringify(dir)}))`,
    "ca.issue('server'); ca.issue('client')",
    "print(ca.cert)",
  ].join("\n");
  const out = spawnSync(python, ["-c", script], { encoding: "utf8" });
  assert.equal(out.status, 0, out.stderr);
}

before(async () => {
  pki();
  const ca = readFileSync(join(dir, "edgeq-test-CA.pem"));
  assert.ok(ca.length > 0);
  server = spawn(python, ["-m", "edgeq_server", "serve", "--port", "0", "--db-path", join(dir, "t.db"),
    "--log-level", "WARNING", "--tls-cert", join(dir, "server.pem"), "--tls-key", join(dir, "server-key.pem"),
    "--tls-client-ca", join(dir, "edgeq-test-CA.pem")], { stdio: ["ignore", "pipe", "inherit"] });
  for await (const line of createInterface({ input: server.stdout! })) {
    if (line.startsWith("edgeq listening on ")) {
      target = line.slice("edgeq listening on ".length);
      break;
    }
  }
  assert.ok(target, "server did not start");
});

after(() => server?.kill());

test("mTLS: the CA and a client certificate reach the server through edgeqs://", async () => {
  const c = new EdgeqClient(`edgeqs://${target}`, {
    tls: {
      ca: readFileSync(join(dir, "edgeq-test-CA.pem")),
      cert: readFileSync(join(dir, "client.pem")),
      key: readFileSync(join(dir, "client-key.pem")),
    },
  });
  const resp = await c.enqueue({ queue: "ts-tls", payload: new TextEncoder().encode("over mTLS") });
  const job = await c.get(resp.results[0].jobId);
  assert.equal(new TextDecoder().decode(job.payload), "over mTLS");
});

test("without a client certificate, or in plaintext, the server is unreachable", async () => {
  for (const c of [
    new EdgeqClient(target, { tls: { ca: readFileSync(join(dir, "edgeq-test-CA.pem")) }, timeoutMs: 2000 }),
    new EdgeqClient(target, { timeoutMs: 2000 }),
  ]) {
    // The handshake fails (TLS 1.3 reports a missing client certificate after it, as a
    // cancelled stream) or the plaintext request gets no gRPC answer: never a result.
    await assert.rejects(c.stats(), (err: unknown) =>
      [Code.Unavailable, Code.Canceled, Code.Internal, Code.DeadlineExceeded].includes(ConnectError.from(err).code));
  }
});

test("target schemes: edgeqs:// is TLS, edgeq:// plaintext, and they do not mix", () => {
  assert.equal(transportTarget("h:1", undefined).baseUrl, "http://h:1");
  assert.equal(transportTarget("edgeqs://h:1", undefined).baseUrl, "https://h:1");
  assert.equal(transportTarget("h:1", true).baseUrl, "https://h:1");
  assert.deepEqual(transportTarget("h:1", { serverName: "n" }).nodeOptions, { servername: "n" });
  assert.throws(() => transportTarget("edgeq://h:1", true), /plaintext/);
  assert.throws(() => transportTarget("h:1", { cert: "x" }), /cert and key/);
});
