// Start-up policy of the whole server: exposure needs tokens; /metrics is Prometheus text and
// sits behind the same tokens as the rest of the HTTP side.
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { serve, type RunningServer, type ServeOptions } from "#server/serve.ts";
import { testServerOptions } from "#test/helpers/test_server.ts";

const TOKEN = "metrics-token-0123456789abcdef";
let dir: string;
let running: RunningServer;

function options(extra: Partial<ServeOptions>): ServeOptions {
  return testServerOptions(dir, { httpPort: 0, ...extra });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "serve-"));
  writeFileSync(join(dir, "tokens"), `${TOKEN}\n`);
  chmodSync(join(dir, "tokens"), 0o600);
  running = await serve(options({ tokenFile: join(dir, "tokens") }));
});

afterAll(async () => {
  await running?.close();
  rmSync(dir, { recursive: true, force: true });
});

it("refuses to bind beyond loopback without a token file", async () => {
  await expect(serve(options({ host: "0.0.0.0" }))).rejects.toMatchObject({ _tag: "FailedPrecondition", field: "host" });
});

it("serves Prometheus metrics behind the bearer token; /healthz stays open", async () => {
  const base = `http://127.0.0.1:${running.httpPort}`;
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
  expect((await fetch(`${base}/metrics`)).status).toBe(401);
  const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  const text = await res.text();
  expect(text).toContain("spatial_sam_onnx_workers");
  expect(text).toContain("spatial_sam_model_waiting_clients 0");
  expect(text).toContain("spatial_sam_chunk_cache");
  expect(text).toContain("spatial_sam_process_");
});
