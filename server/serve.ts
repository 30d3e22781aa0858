// Starts the whole server: ONNX model registry (worker pool), gRPC services and the HTTP side.
import { createServer, type Server as HttpServer } from "node:http";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import express from "express";
import type { Logger } from "#server/log.ts";
import { startGrpcServer, type RunningGrpcServer } from "#server/grpc/server.ts";
import { createBridge, type Bridge, type BridgeOptions } from "#server/bridge/bridge.ts";
import { registryBackend } from "#server/grpc/model_backend.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { startPropagation, type PropagationServeOptions } from "#server/engine/propagation/wiring.ts";
import { createMetrics } from "#server/metrics.ts";
import { checkExposure, loadTls, loadTokenFile } from "#server/security.ts";
import { bridgeAuth, readClientToken } from "#server/bridge/auth.ts";
import { defaultChunkCache } from "#server/volume/chunk_cache.ts";

export interface ServeOptions {
  host: string;
  port: number;
  /** 0 picks a free port; -1 disables the HTTP side. */
  httpPort: number;
  modelsDir: string;
  /** Folders that file:// volume URLs may read from. */
  roots: string[];
  /** Where computed results (SDF blocks) are cached; readable through file:// URLs too. */
  cacheDir: string;
  workers: number;
  intraOpThreads: number;
  executionProvider: "cpu" | "cuda";
  maxQueuePerModel: number;
  /** Requests one client may have waiting per model (default maxQueuePerModel). */
  maxQueuePerClient?: number;
  /** Waiting model runs and SDF blocks are served clients in turn (default true) or oldest first. */
  fairShare?: boolean;
  maxMessageBytes?: number;
  log: Logger;
  /** The HTTP bridge's start-up volumes, CORS origins, limits (roots and log are the server's). */
  bridge?: Omit<BridgeOptions, "roots" | "log">;
  /** A file of bearer tokens; required when `host` is not a loopback address. */
  tokenFile?: string;
  /** PEM files: serve gRPC over TLS. */
  tlsCert?: string;
  tlsKey?: string;
  /** Interactive propagation (SegmentationService); without it those RPCs answer UNIMPLEMENTED. */
  propagation?: PropagationServeOptions;
  /** Lets tests make an ONNX worker die mid-request (registry.armFaultForTest). Never set by the CLI. */
  allowTestFaults?: boolean;
}

export interface RunningServer {
  grpc: RunningGrpcServer;
  httpPort: number | undefined;
  registry: ModelRegistry;
  /** The HTTP bridge (viewer, volumes as precomputed); undefined when the HTTP side is off. */
  bridge: Bridge | undefined;
  close(): Promise<void>;
}

export async function serve(options: ServeOptions): Promise<RunningServer> {
  const { log } = options;
  const tokenHashes = options.tokenFile === undefined ? undefined : await loadTokenFile(options.tokenFile, log);
  checkExposure(options.host, tokenHashes);
  const tls = await loadTls(options.tlsCert, options.tlsKey);
  const cacheDir = resolve(options.cacheDir);
  await mkdir(cacheDir, { recursive: true });
  const roots = [...options.roots.map((r) => resolve(r)), cacheDir];
  const registryOptions = {
    workers: options.workers,
    intraOpThreads: options.intraOpThreads,
    executionProvider: options.executionProvider,
    maxQueuePerModel: options.maxQueuePerModel,
    ...(options.maxQueuePerClient === undefined ? {} : { maxQueuePerClient: options.maxQueuePerClient }),
    fairShare: options.fairShare ?? true,
    logger: log,
    allowTestFaults: options.allowTestFaults ?? false,
  };
  const registry = await ModelRegistry.load(resolve(options.modelsDir), registryOptions);
  const sdf = new SdfEngine({ registry, cacheDir: join(cacheDir, "sdf"), log, concurrency: options.workers, fairShare: registryOptions.fairShare });
  let propagation: Awaited<ReturnType<typeof startPropagation>> | undefined;
  const metrics = createMetrics({ models: registry, chunkCache: defaultChunkCache() });
  let grpc: RunningGrpcServer | undefined;
  let http: HttpServer | undefined;
  let bridge: Bridge | undefined;
  try {
    if (options.propagation) propagation = await startPropagation(options.propagation, { registryOptions, registry, sdf, roots, log });
    grpc = await startGrpcServer({
      host: options.host,
      port: options.port,
      models: registryBackend(registry),
      sdf,
      ...(propagation ? { propagation } : {}),
      outputRoots: roots,
      openVolume: (url, { signal: _signal }) => openVolume(url, { roots }),
      log,
      metrics,
      ...(tokenHashes === undefined ? {} : { tokenHashes }),
      ...(tls === undefined ? {} : { tls }),
      ...(options.maxMessageBytes === undefined ? {} : { maxMessageBytes: options.maxMessageBytes }),
    });
    let httpPort: number | undefined;
    if (options.httpPort >= 0) {
      const app = express();
      app.disable("x-powered-by");
      app.get("/healthz", (_req, res) => {
        res.json({ status: "SERVING", grpc: grpc!.address });
      });
      // Bearer header, or the viewer's cookie from a `?token=` login link (server/bridge/auth.ts).
      if (tokenHashes !== undefined) app.use(bridgeAuth(tokenHashes, log, ["/healthz"]));
      app.get("/metrics", async (_req, res) => {
        res.set("Content-Type", metrics.registry.contentType).send(await metrics.registry.metrics());
      });
      app.get("/api/models", (_req, res) => {
        res.json(registryBackend(registry).describe().map((m) => ({ ...m, manifestJson: undefined })));
      });
      // The SDF layer shows the model the propagator uses as memory, when there is one.
      const sdfModel = options.propagation?.defaultSdfModel;
      // Live sessions talk gRPC to this process unless the bridge is told to front another server.
      const ownTarget = options.bridge?.live?.grpcTarget === undefined;
      // Calling its own gRPC port, the bridge presents one of this server's tokens.
      const ownToken = ownTarget && options.tokenFile !== undefined ? { grpcToken: await readClientToken(options.tokenFile) } : {};
      const live = {
        acceptDir: join(cacheDir, "accepted"),
        segmentOutputDir: join(cacheDir, "segment-view"),
        ...ownToken,
        ...options.bridge?.live,
        grpcTarget: options.bridge?.live?.grpcTarget ?? grpc.address,
      };
      bridge = await createBridge({ ...(sdfModel === undefined ? {} : { sdf: { engine: sdf, registry, model: sdfModel } }), ...options.bridge, live, roots, log });
      app.use(bridge.router);
      http = createServer(app);
      httpPort = await new Promise<number>((res, rej) => {
        http!.once("error", rej);
        http!.listen(options.httpPort, options.host, () => {
          const a = http!.address();
          res(typeof a === "object" && a !== null ? a.port : options.httpPort);
        });
      });
      log.info({ host: options.host, port: httpPort }, "HTTP listening");
    }
    const running = grpc;
    return {
      grpc: running,
      httpPort,
      registry,
      bridge,
      close: async () => {
        await new Promise<void>((res) => (http ? http.close(() => res()) : res()));
        await bridge?.close();
        await running.close();
        await propagation?.shutdown();
        await registry.close();
      },
    };
  } catch (e) {
    await bridge?.close();
    await grpc?.close();
    await propagation?.shutdown();
    await registry.close();
    throw e;
  }
}
