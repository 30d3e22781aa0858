// Options shared by the commands that start the server (serve, demo), each settable by a
// SPATIAL_SAM_* environment variable, and the start-up they lead to.
import { readFile } from "node:fs/promises";
import { InvalidArgumentError, Option, type Command } from "commander";
import { readClientToken } from "#server/bridge/auth.ts";
import { createLogger } from "#server/log.ts";
import type { ServeOptions } from "#server/serve.ts";

function intIn(min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer in [${min}, ${max}]`);
    return n;
  };
}

export const list = (value: string): string[] => value.split(",").map((s) => s.trim()).filter(Boolean);

export function serverOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--host <address>", "bind address for gRPC and HTTP").default("127.0.0.1").env("SPATIAL_SAM_HOST"))
    .addOption(new Option("--port <n>", "gRPC port (0 = any free port)").default(50051).argParser(intIn(0, 65535)).env("SPATIAL_SAM_PORT"))
    .addOption(
      new Option("--http-port <n>", "HTTP port (0 = any free port, -1 = off)").default(8080).argParser(intIn(-1, 65535)).env("SPATIAL_SAM_HTTP_PORT"),
    )
    .addOption(new Option("--models <dir>", "folder of <name>/model.json models").default("models").env("SPATIAL_SAM_MODELS"))
    .addOption(new Option("--roots <dirs>", "comma-separated folders file:// URLs may read").default(["."]).argParser(list).env("SPATIAL_SAM_ROOTS"))
    .addOption(new Option("--cache-dir <dir>", "where computed results (SDF blocks) are kept").default(".cache/results").env("SPATIAL_SAM_CACHE_DIR"))
    .addOption(new Option("--workers <n>", "ONNX worker threads").default(1).argParser(intIn(1, 256)).env("SPATIAL_SAM_WORKERS"))
    .addOption(new Option("--threads <n>", "intra-op threads per ONNX session").default(2).argParser(intIn(1, 256)).env("SPATIAL_SAM_THREADS"))
    .addOption(
      new Option("--execution-provider <ep>", "cpu, or cuda (falls back to cpu if it does not load)")
        .choices(["cpu", "cuda"])
        .default("cpu")
        .env("SPATIAL_SAM_EXECUTION_PROVIDER"),
    )
    .addOption(new Option("--max-queue <n>", "queued requests per model before RESOURCE_EXHAUSTED").default(32).argParser(intIn(1, 100000)).env("SPATIAL_SAM_MAX_QUEUE"))
    .addOption(
      new Option("--max-queue-per-client <n>", "queued requests per model and client before RESOURCE_EXHAUSTED (default: --max-queue)")
        .argParser(intIn(1, 100000))
        .env("SPATIAL_SAM_MAX_QUEUE_PER_CLIENT"),
    )
    .addOption(
      new Option("--queue <policy>", "fair: waiting model runs are served clients in turn; fifo: oldest first")
        .choices(["fair", "fifo"])
        .default("fair")
        .env("SPATIAL_SAM_QUEUE"),
    )
    .addOption(new Option("--token-file <path>", "bearer tokens, one per line (required when --host is not loopback)").env("SPATIAL_SAM_TOKEN_FILE"))
    .addOption(new Option("--tls-cert <pem>", "certificate chain: serve gRPC over TLS").env("SPATIAL_SAM_TLS_CERT"))
    .addOption(new Option("--tls-key <pem>", "private key for --tls-cert").env("SPATIAL_SAM_TLS_KEY"))
    .addOption(new Option("--propagator <dir>", "propagator folder (propagator.json): enables interactive segmentation").env("SPATIAL_SAM_PROPAGATOR"))
    .addOption(
      new Option("--more-propagators <dirs>", "comma-separated further propagator folders, chosen per session by name (StartSession's model)")
        .argParser(list)
        .env("SPATIAL_SAM_MORE_PROPAGATORS"),
    )
    .addOption(new Option("--sdf-model <name>", "3D U-Net whose SDF is the propagator's memory by default").env("SPATIAL_SAM_SDF_MODEL"))
    .addOption(new Option("--max-sessions <n>", "open segmentation sessions at most").default(64).argParser(intIn(1, 100000)).env("SPATIAL_SAM_MAX_SESSIONS"))
    .addOption(
      new Option("--session-idle-s <s>", "close a segmentation session idle this long").default(1800).argParser(intIn(1, 7 * 86400)).env("SPATIAL_SAM_SESSION_IDLE_S"),
    )
    .addOption(
      new Option("--grpc-target <host:port>", "inference server the viewer's live sessions use (default: this process's gRPC port)").env("SPATIAL_SAM_GRPC_TARGET"),
    )
    .addOption(new Option("--grpc-token-file <path>", "bearer token (first line) the bridge sends to --grpc-target").env("SPATIAL_SAM_GRPC_TOKEN_FILE"))
    .addOption(new Option("--grpc-tls-ca <pem>", "CA certificate: the bridge reaches --grpc-target over TLS").env("SPATIAL_SAM_GRPC_TLS_CA"))
    .addOption(
      new Option("--segment-output-dir <dir>", "folder on the --grpc-target server (under its roots) for segment-in-view results (default <cache-dir>/segment-view)").env(
        "SPATIAL_SAM_SEGMENT_OUTPUT_DIR",
      ),
    )
    .addOption(new Option("--log-level <level>", "trace, debug, info, warn, error").default("info").env("SPATIAL_SAM_LOG_LEVEL"));
}

export interface ServerCliOptions {
  host: string;
  port: number;
  httpPort: number;
  models: string;
  roots: string[];
  cacheDir: string;
  workers: number;
  threads: number;
  executionProvider: "cpu" | "cuda";
  maxQueue: number;
  maxQueuePerClient?: number;
  queue: "fair" | "fifo";
  logLevel: string;
  tokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  propagator?: string;
  morePropagators?: string[];
  sdfModel?: string;
  maxSessions: number;
  sessionIdleS: number;
  grpcTarget?: string;
  grpcTokenFile?: string;
  grpcTlsCa?: string;
  segmentOutputDir?: string;
}

export async function startFromCli(o: ServerCliOptions, extraRoots: string[] = [], bridge?: ServeOptions["bridge"]) {
  const log = createLogger({ level: o.logLevel });
  const { serve } = await import("#server/serve.ts");
  const liveCli = {
    ...(o.grpcTarget === undefined ? {} : { grpcTarget: o.grpcTarget }),
    ...(o.grpcTokenFile === undefined ? {} : { grpcToken: await readClientToken(o.grpcTokenFile) }),
    ...(o.grpcTlsCa === undefined ? {} : { grpcTlsCa: await readFile(o.grpcTlsCa) }),
    ...(o.segmentOutputDir === undefined ? {} : { segmentOutputDir: o.segmentOutputDir }),
  };
  const running = await serve({
    host: o.host,
    port: o.port,
    httpPort: o.httpPort,
    modelsDir: o.models,
    roots: [...o.roots, ...extraRoots],
    cacheDir: o.cacheDir,
    workers: o.workers,
    intraOpThreads: o.threads,
    executionProvider: o.executionProvider,
    maxQueuePerModel: o.maxQueue,
    ...(o.maxQueuePerClient === undefined ? {} : { maxQueuePerClient: o.maxQueuePerClient }),
    fairShare: o.queue === "fair",
    log,
    ...(o.tokenFile === undefined ? {} : { tokenFile: o.tokenFile }),
    ...(o.tlsCert === undefined ? {} : { tlsCert: o.tlsCert }),
    ...(o.tlsKey === undefined ? {} : { tlsKey: o.tlsKey }),
    ...(bridge === undefined && Object.keys(liveCli).length === 0 ? {} : { bridge: { ...bridge, ...(Object.keys(liveCli).length === 0 ? {} : { live: { ...bridge?.live, ...liveCli } }) } }),
    ...(o.propagator === undefined
      ? {}
      : {
          propagation: {
            dir: o.propagator,
            ...(o.morePropagators === undefined ? {} : { extraDirs: o.morePropagators }),
            maxSessions: o.maxSessions,
            idleTimeoutMs: o.sessionIdleS * 1000,
            ...(o.sdfModel === undefined ? {} : { defaultSdfModel: o.sdfModel }),
          },
        }),
  });
  const stop = async (signal: string) => {
    log.info({ signal }, "shutting down");
    await running.close();
    process.exit(0);
  };
  process.once("SIGINT", () => void stop("SIGINT"));
  process.once("SIGTERM", () => void stop("SIGTERM"));
  return running;
}

