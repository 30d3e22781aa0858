// A server a team shares, under load: a real server with the shipped models (propagator_lucchi,
// sdf_unet3d_lucchi) on the Lucchi++ test stack (../shared/data, read through the server's own
// volume readers). 8 gRPC clients, each on its own connection, StartSession on a crop around a
// different mitochondrion, click it (AddPrompts) and Propagate over N slices, all at once, while a
// 9th client clicks its own mitochondrion again and again and measures the click latency; the same
// clicks are measured first with no load. Run once with fair scheduling and once with FIFO, each on
// a fresh server (fresh embedding cache). The SDF memory is computed before (ComputeSdf, once, kept
// in .cache/load_bench across runs), so the measured phase is the interactive part.
//
// Run: nice node --import tsx test/bench/load.bench.ts [--clients 8] [--slices 32] [--crop 128]
//        [--z 64] [--workers 2] [--threads 1] [--policies fair,fifo] [--probe-clicks 15] [--rounds 1] [--large]
// --rounds R: the policies R times, alternating (the machine's other load drifts; compare neighbours).
// --large: 256 x 256 crops (about 4x the work per slice; minutes more SDF warm-up the first time).
// Slices z..z+31 lie in one 32-slice SDF block row, so up to 32 slices cost no extra warm-up.
import { existsSync, mkdirSync } from "node:fs";
import { cpus, loadavg, platform, release } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { ServiceError } from "@grpc/grpc-js";
import type { ComputeSdfResponse } from "#proto/spatial_sam/v1/sdf.ts";
import {
  Direction,
  PointLabel,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type PropagateResponse,
  type StartSessionRequest,
  type StartSessionResponse,
} from "#proto/spatial_sam/v1/segmentation.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { call, collect, connect, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";

const { values } = parseArgs({
  options: {
    clients: { type: "string", default: "8" },
    slices: { type: "string" },
    crop: { type: "string" },
    z: { type: "string", default: "64" },
    workers: { type: "string", default: "2" },
    threads: { type: "string", default: "1" },
    policies: { type: "string", default: "fair,fifo" },
    "probe-clicks": { type: "string", default: "15" },
    rounds: { type: "string", default: "1" },
    large: { type: "boolean", default: false },
  },
});
const nClients = Number(values.clients);
const slices = Number(values.slices ?? 32);
const crop = Number(values.crop ?? (values.large ? 256 : 128));
const z0 = Number(values.z);
const workers = Number(values.workers);
const threads = Number(values.threads);
const policies = values.policies.split(",") as ("fair" | "fifo")[];
const probeClicks = Number(values["probe-clicks"]);
const rounds = Number(values.rounds);

const root = resolve(import.meta.dirname, "..", "..");
const data = resolve(root, "..", "shared", "data");
const stack = join(data, "lucchi_pp", "test");
if (!existsSync(join(stack, "image"))) {
  console.log(`load bench: skipped, no Lucchi++ test stack at ${stack}`);
  process.exit(0);
}
const cacheDir = join(root, ".cache", "load_bench");
mkdirSync(cacheDir, { recursive: true });
// SDF blocks are 64 voxels on y and x (the engine's default write block): crops aligned to them
// share blocks and keep the one-time SDF warm-up small.
const SDF_BLOCK_YX = 64;

interface Target {
  /** Click in volume coordinates. */
  y: number;
  x: number;
  area: number;
  box: { offset: { z: number; y: number; x: number }; shape: { z: number; y: number; x: number } };
}

/**
 * The largest mitochondria on slice z0 (4-connected components of the label slice), each with its
 * deepest pixel (farthest from the background, 4-neighbour steps) as the click and a crop around it.
 */
async function findTargets(count: number): Promise<Target[]> {
  const labels = await openVolume(`png://file://${join(stack, "label")}`, { roots: [data] });
  try {
    const [, ny, nx] = labels.metadata.scales[0]!.shapeZyx;
    const slice = (await labels.read({ offsetZyx: [z0, 0, 0], shapeZyx: [1, ny, nx] }, 0)) as Uint8Array;
    const depth = new Int32Array(ny * nx).fill(-1);
    const queue: number[] = [];
    // Background and the slice's border are depth 0, so a click is never on the edge of the volume.
    for (let i = 0; i < slice.length; i++) {
      const y = Math.floor(i / nx);
      const x = i % nx;
      if (slice[i] === 0 || y === 0 || x === 0 || y === ny - 1 || x === nx - 1) {
        depth[i] = 0;
        queue.push(i);
      }
    }
    for (let h = 0; h < queue.length; h++) {
      const i = queue[h]!;
      const y = Math.floor(i / nx);
      const x = i % nx;
      for (const [yy, xx] of [[y - 1, x], [y + 1, x], [y, x - 1], [y, x + 1]] as const) {
        if (yy < 0 || xx < 0 || yy >= ny || xx >= nx) continue;
        const j = yy * nx + xx;
        if (depth[j] === -1) {
          depth[j] = depth[i]! + 1;
          queue.push(j);
        }
      }
    }
    const seen = new Uint8Array(slice.length);
    const found: Target[] = [];
    for (let s = 0; s < slice.length; s++) {
      if (slice[s] === 0 || seen[s]) continue;
      let area = 0;
      let best = s;
      const pending = [s];
      seen[s] = 1;
      while (pending.length > 0) {
        const i = pending.pop()!;
        area++;
        if (depth[i]! > depth[best]!) best = i;
        const y = Math.floor(i / nx);
        const x = i % nx;
        for (const [yy, xx] of [[y - 1, x], [y + 1, x], [y, x - 1], [y, x + 1]] as const) {
          if (yy < 0 || xx < 0 || yy >= ny || xx >= nx) continue;
          const j = yy * nx + xx;
          if (slice[j] !== 0 && !seen[j]) {
            seen[j] = 1;
            pending.push(j);
          }
        }
      }
      const y = Math.floor(best / nx);
      const x = best % nx;
      const at = (c: number, n: number) => Math.min(n - crop, Math.max(0, Math.round((c - crop / 2) / SDF_BLOCK_YX) * SDF_BLOCK_YX));
      found.push({ y, x, area, box: { offset: { z: z0, y: at(y, ny), x: at(x, nx) }, shape: { z: slices, y: crop, x: crop } } });
    }
    found.sort((a, b) => b.area - a.area);
    if (found.length < count) throw new Error(`slice ${z0} has ${found.length} mitochondria; ${count} needed`);
    return found.slice(0, count);
  } finally {
    await labels.close();
  }
}

const quantile = (a: number[], p: number) => (a.length === 0 ? Number.NaN : [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))]!);
const ms = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};
const ownConnection = () => connect(server!.grpc.address, { "grpc.use_local_subchannel_pool": 1 });

let server: RunningServer | undefined;

async function startServer(fair: boolean): Promise<RunningServer> {
  return serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: join(root, "models"),
    roots: [data],
    cacheDir,
    workers,
    intraOpThreads: threads,
    executionProvider: "cpu",
    maxQueuePerModel: 64,
    fairShare: fair,
    log: silentLogger(),
    propagation: { dir: join(root, "models", "propagator_lucchi"), maxSessions: nClients + 4, idleTimeoutMs: 600_000, defaultSdfModel: "sdf_unet3d_lucchi" },
  });
}

async function openImage(c: Clients): Promise<string> {
  const r = await grpcOpenVolume(c, { url: `png://file://${join(stack, "image")}` });
  return r.volume!.volumeId;
}

async function startSession(c: Clients, volumeId: string, t: Target): Promise<string> {
  const r = await call<StartSessionRequest, StartSessionResponse>(c.segmentation, c.segmentation.startSession, {
    volumeId,
    box: t.box,
    scale: 0,
    model: "",
    sdfModel: "",
    sdfVolumeId: "",
  });
  return r.sessionId;
}

// Repeated clicks move by a pixel or two around the target (a user refining), all inside it.
const JITTER = [0, 1, -1, 2, -2];
const click = (c: Clients, sessionId: string, t: Target, clearOld: boolean, i = 0) =>
  call<AddPromptsRequest, AddPromptsResponse>(c.segmentation, c.segmentation.addPrompts, {
    sessionId,
    objectId: 1n,
    z: z0,
    points: [{ y: t.y + JITTER[i % 3]!, x: t.x + JITTER[(i + 1) % 5]!, label: PointLabel.POINT_LABEL_POSITIVE }],
    clearOld,
  });

/** ComputeSdf over every crop once (the blocks stay cached on disk for later runs). */
async function warmSdf(targets: Target[]): Promise<{ seconds: number; computed: number; cached: number }> {
  const c = ownConnection();
  try {
    const volumeId = await openImage(c);
    let computed = 0;
    let cached = 0;
    const seconds =
      (await ms(async () => {
        for (const t of targets) {
          const out = await collect<ComputeSdfResponse>(c.sdf.computeSdf({ volumeId, box: t.box, scale: 0, model: "sdf_unet3d_lucchi" }));
          const last = out.at(-1)!;
          computed += Number(last.blocksTotal - last.blocksCached);
          cached += Number(last.blocksCached);
        }
      })) / 1000;
    return { seconds, computed, cached };
  } finally {
    c.close();
  }
}

interface RunResult {
  errors: string[];
  idle: number[];
  loaded: number[];
  completionS: number[];
  slicesComputed: number;
  wallS: number;
}

async function runPolicy(targets: Target[]): Promise<RunResult> {
  const errors: string[] = [];
  const note = (who: string) => (e: unknown) => {
    errors.push(`${who}: ${(e as ServiceError).details ?? String(e)}`);
  };
  const probeTarget = targets[nClients]!;
  const probe = ownConnection();
  const loadClients = targets.slice(0, nClients).map(() => ownConnection());
  try {
    const probeVolume = await openImage(probe);
    const probeSession = await startSession(probe, probeVolume, probeTarget);
    // The first click embeds the probe's slice; later clicks decode only (the interactive case).
    await click(probe, probeSession, probeTarget, true);
    const idle: number[] = [];
    for (let i = 0; i < probeClicks; i++) idle.push(await ms(() => click(probe, probeSession, probeTarget, i % 4 === 0, i)));

    const loaded: number[] = [];
    let done = false;
    const started = performance.now();
    const completionS: number[] = [];
    let slicesComputed = 0;
    const work = loadClients.map(async (c, k) => {
      const t = targets[k]!;
      const volumeId = await openImage(c);
      const sessionId = await startSession(c, volumeId, t);
      await click(c, sessionId, t, true);
      const stream = await collect<PropagateResponse>(c.segmentation.propagate({ sessionId, startZ: z0, direction: Direction.DIRECTION_FORWARD, maxSlices: slices, objectIds: [] }));
      if (stream.length !== slices) throw new Error(`${stream.length} slices streamed, ${slices} asked`);
      // The start slice is the prompted one (no model run).
      slicesComputed += stream.length - 1;
      completionS.push((performance.now() - started) / 1000);
    });
    const all = Promise.allSettled(work).then((rs) => {
      done = true;
      rs.forEach((r, k) => {
        if (r.status === "rejected") note(`client ${k}`)(r.reason);
      });
    });
    for (let i = 0; !done; i++) {
      try {
        loaded.push(await ms(() => click(probe, probeSession, probeTarget, i % 4 === 0, i)));
      } catch (e) {
        note("probe")(e);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    await all;
    const wallS = (performance.now() - started) / 1000;
    return { errors, idle, loaded, completionS, slicesComputed, wallS };
  } finally {
    probe.close();
    for (const c of loadClients) c.close();
  }
}

const targets = await findTargets(nClients + 1);
const results: { label: string; result: RunResult }[] = [];
let warm: Awaited<ReturnType<typeof warmSdf>> | undefined;
for (let round = 1; round <= rounds; round++) {
  for (const policy of policies) {
    server = await startServer(policy === "fair");
    try {
      warm ??= await warmSdf(targets);
      results.push({ label: rounds === 1 ? policy : `${policy} #${round}`, result: await runPolicy(targets) });
    } finally {
      await server.close();
    }
  }
}

const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : "-");
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : "-");
const cpu = cpus();
console.log(
  `load bench: ${nClients} clients x ${slices} slices on ${crop}x${crop} crops of Lucchi++ test (z ${z0}), + 1 probe client; ` +
    `${workers} ONNX worker(s) x ${threads} thread(s), cpu; ${cpu[0]?.model ?? "?"} x ${cpu.length}, ${platform()} ${release()}, Node ${process.version}, load average ${loadavg().map((l) => l.toFixed(1)).join(" ")}`,
);
console.log(`SDF warm-up (once, not measured below): ${warm!.computed} blocks computed, ${warm!.cached} cached, ${f1(warm!.seconds)} s`);
console.log(`| measure | ${results.map((r) => r.label).join(" | ")} |`);
console.log(`| --- | ${results.map(() => "---").join(" | ")} |`);
const row = (name: string, f: (r: RunResult) => string) => console.log(`| ${name} | ${results.map((r) => f(r.result)).join(" | ")} |`);
row("errors", (r) => String(r.errors.length));
row("click p50 / p95, no load (ms)", (r) => `${f1(quantile(r.idle, 0.5))} / ${f1(quantile(r.idle, 0.95))} (n ${r.idle.length})`);
row("click p50 / p95, under load (ms)", (r) => `${f1(quantile(r.loaded, 0.5))} / ${f1(quantile(r.loaded, 0.95))} (n ${r.loaded.length})`);
row("click p50 under load / no load", (r) => f2(quantile(r.loaded, 0.5) / quantile(r.idle, 0.5)));
row("client completion min / median / max (s)", (r) => `${f1(Math.min(...r.completionS))} / ${f1(quantile(r.completionS, 0.5))} / ${f1(Math.max(...r.completionS))}`);
row("fairness: max / min completion", (r) => f2(Math.max(...r.completionS) / Math.min(...r.completionS)));
row("slices/s, all clients", (r) => f1(r.slicesComputed / r.wallS));
row("load phase wall (s)", (r) => f1(r.wallS));
for (const { label, result } of results) for (const e of result.errors.slice(0, 5)) console.log(`${label} error: ${e}`);
process.exitCode = results.some((r) => r.result.errors.length > 0) ? 1 : 0;
