// A shared server, real sockets, real ONNX: client A queues a burst of slow RunModel calls, then
// client B sends one. With fair scheduling B's call completes right after the run in progress,
// before A's queue drains; with the FIFO policy it completes last. Clients are told apart by their
// connection (auth off) or by their bearer token on one connection (auth on).
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Metadata, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ModelServiceClient, RunModelRequest, RunModelResponse } from "#proto/spatial_sam/v1/model.ts";
import type { RunningServer } from "#server/serve.ts";
import { toWireTensor } from "#server/grpc/convert.ts";
import { connect, type Clients } from "#test/helpers/grpc_clients.ts";
import { startTestServer } from "#test/helpers/test_server.ts";

const TOKENS = ["token-of-client-a-0123456789", "token-of-client-b-0123456789"] as const;
const BURST = 6;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "fair-grpc-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function start(fairShare: boolean, tokenFile?: string): Promise<RunningServer> {
  return startTestServer(dir, { maxQueuePerModel: 16, fairShare, ...(tokenFile === undefined ? {} : { tokenFile }) });
}

function runSlow(client: ModelServiceClient, token?: string): Promise<RunModelResponse> {
  const n = 40;
  const image = toWireTensor({ dtype: "float32", dims: [1, 1, n, n, n], data: new Float32Array(n ** 3).map((_, i) => Math.sin(i)) });
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  const req: RunModelRequest = { model: "slow_conv3d", inputs: { image } };
  return new Promise((resolve, reject) => client.runModel(req, md, {}, (err: ServiceError | null, res: RunModelResponse) => (err ? reject(err) : resolve(res))));
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

/**
 * A sends BURST calls; once all but the first wait in the server's queue, B sends one. Returns the
 * order in which the calls completed ("A" x BURST and one "B").
 */
async function burstThenOne(server: RunningServer, a: Clients, b: Clients, tokens?: typeof TOKENS): Promise<string> {
  const order: string[] = [];
  const calls = Array.from({ length: BURST }, () => runSlow(a.models, tokens?.[0]).then(() => order.push("A")));
  await until(() => server.registry.stats().queued.slow_conv3d === BURST - 1);
  calls.push(runSlow(b.models, tokens?.[1]).then(() => order.push("B")));
  await Promise.all(calls);
  return order.join("");
}

describe("fair scheduling across gRPC clients", () => {
  it.each([
    [true, "ABAAAAA"],
    [false, "AAAAAAB"],
  ])("fairShare %s: two connections complete in the order %s", async (fairShare, expected) => {
    const server = await start(fairShare);
    // Each client its own connection (grpc-js would otherwise share one between same-target clients).
    const a = connect(server.grpc.address, { "grpc.use_local_subchannel_pool": 1 });
    const b = connect(server.grpc.address, { "grpc.use_local_subchannel_pool": 1 });
    try {
      expect(await burstThenOne(server, a, b)).toBe(expected);
    } finally {
      a.close();
      b.close();
      await server.close();
    }
  });

  it("tells clients apart by bearer token when they share one connection", async () => {
    const tokenFile = join(dir, "tokens");
    writeFileSync(tokenFile, `${TOKENS.join("\n")}\n`);
    chmodSync(tokenFile, 0o600);
    const server = await start(true, tokenFile);
    const shared = connect(server.grpc.address);
    try {
      expect(await burstThenOne(server, shared, shared, TOKENS)).toBe("ABAAAAA");
    } finally {
      shared.close();
      await server.close();
    }
  });
});
