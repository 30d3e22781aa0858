// A real inference server for tests: loopback, free gRPC port, no HTTP side, the fixture models,
// one CPU worker, a silent log; `dir` is both the file:// root and the home of the cache.
import { join } from "node:path";
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
