// Real servers for tests: the inference server on loopback (free gRPC port, no HTTP side, the fixture
// models, one CPU worker, a silent log; `dir` is both the file:// root and the home of the cache), and
// a bridge's router on a free loopback HTTP port.
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import express, { type Router } from "express";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer, type ServeOptions } from "#server/serve.ts";

const fixtureModels = join(import.meta.dirname, "..", "fixtures", "models");

/** The tests' common server options for `dir`, with `overrides` on top. */
export function testServerOptions(dir: string, overrides: Partial<ServeOptions> = {}): ServeOptions {
  return {
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: fixtureModels,
    roots: [dir],
    cacheDir: join(dir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 4,
    log: silentLogger(),
    ...overrides,
  };
}

export function startTestServer(dir: string, overrides: Partial<ServeOptions> = {}): Promise<RunningServer> {
  return serve(testServerOptions(dir, overrides));
}

/** Serves `router` on a free loopback port; `base` is its URL with no trailing slash. */
export async function listenRouter(router: Router): Promise<{ http: Server; base: string }> {
  const app = express();
  app.use(router);
  const http = createServer(app);
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const a = http.address();
  return { http, base: `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}` };
}

/** Closes a server from `listenRouter` (undefined when set-up failed first), dropping kept-alive connections. */
export async function closeHttp(http: Server | undefined): Promise<void> {
  if (http === undefined) return;
  http.closeAllConnections();
  await new Promise<void>((resolve) => http.close(() => resolve()));
}
