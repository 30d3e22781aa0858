// Anything that is not a domain error is a bug: the client sees INTERNAL with a generic message
// (no internals leak), the stack goes to the structured log, and the server keeps serving.
import { status } from "@grpc/grpc-js";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { checkHealth } from "#server/grpc/health_client.ts";
import { startGrpcServer, type RunningGrpcServer } from "#server/grpc/server.ts";
import { connect, grpcError, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";

const lines: Record<string, unknown>[] = [];
const sink = new Writable({
  write(chunk: Buffer, _enc, cb) {
    for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
    cb();
  },
});

let server: RunningGrpcServer;
let clients: Clients;

beforeAll(async () => {
  server = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    log: pino({ level: "info" }, sink),
    models: { describe: () => [], run: async () => ({}) },
    // A fault no user input can cause: the opener itself has a bug.
    openVolume: async () => {
      throw new TypeError("secret internal detail: cannot read properties of undefined");
    },
  });
  clients = connect(server.address);
});

afterAll(async () => {
  clients.close();
  await server.close();
});

it("an unexpected exception is INTERNAL with a generic message and a logged stack", async () => {
  const e = await grpcError(grpcOpenVolume(clients, { url: "zarr://x" }));
  expect(e.code).toBe(status.INTERNAL);
  expect(e.details).not.toContain("secret");
  const logged = lines.find((l) => l.msg === "unexpected error in handler") as { err?: { stack?: string }; method?: string } | undefined;
  expect(logged?.method).toBe("OpenVolume");
  expect(logged?.err?.stack).toContain("secret internal detail");
  expect(await checkHealth(server.address)).toBe("SERVING");
});
