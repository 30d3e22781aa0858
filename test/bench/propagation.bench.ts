// Interactive propagation over gRPC against a real server, at the propagator's default model size
// (its training crop, from propagator.json) and at 256x256 side by side, for each engine setting
// (A/B in one run, each on a server of its own): the first click of a session (StartSession, the
// user's think time, then a click on a slice nobody has embedded yet), clicks on an embedded slice,
// and the propagation rate (slices/s, one object, over slices not embedded yet).
// Run: nice node --import tsx test/bench/propagation.bench.ts [--propagator dir] [--data lucchi|fixture]
//   [--sizes 128,256] [--slices 32] [--workers 1] [--think-ms 300] [--settings before,read-ahead,speculative] [--rounds 3]
//   [--formats png,precomputed]
// Rounds run the settings interleaved (A B C A B C ...), so load that drifts on a shared machine
// falls on all of them; click samples are pooled over rounds, slices/s is the median of the rounds.
// "lucchi" reads crops of ../shared/data/lucchi_pp/test; its label stack stands in for the SDF
// (timing only, not quality). "fixture" is the golden 12x64x64 volume and propagator (sizes ignored).
// --formats png,precomputed: the Lucchi++ PNG stack as shipped (every slice read decodes a whole
// 768x1024 PNG), and the same slices copied to a temporary precomputed volume in 32x64x64 raw chunks
// (how a deployment stores volumes), so the engine's cost shows apart from the PNG decoder's.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, platform, release, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  PointLabel,
  Direction,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type PropagateResponse,
  type StartSessionRequest,
  type StartSessionResponse,
} from "#proto/spatial_sam/v1/segmentation.ts";
import { silentLogger } from "#server/log.ts";
import { serve } from "#server/serve.ts";
import { defaultChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { call, collect, connect, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";
import { gitCommit } from "./sdf_bench_helpers.ts";

const root = resolve(import.meta.dirname, "..", "..");
const lucchi = resolve(root, "..", "shared", "data", "lucchi_pp", "test");
const { values: args } = parseArgs({
  options: {
    propagator: { type: "string" },
    data: { type: "string" },
    sizes: { type: "string" },
    slices: { type: "string", default: "32" },
    workers: { type: "string", default: "1" },
    "think-ms": { type: "string", default: "300" },
    settings: { type: "string", default: "before,read-ahead,speculative" },
    rounds: { type: "string", default: "3" },
    formats: { type: "string", default: "png,precomputed" },
  },
});
const data = args.data ?? (existsSync(lucchi) ? "lucchi" : "fixture");
const propagatorDir = resolve(args.propagator ?? (data === "lucchi" ? join(root, "models", "propagator_lucchi") : join(root, "test", "fixtures", "propagator", "model")));
const config = JSON.parse(readFileSync(join(propagatorDir, "propagator.json"), "utf8")) as { name: string; training?: { train_config?: { crop?: number } } };
// The default model size is the crop the propagator was trained on.
const defaultSize = config.training?.train_config?.crop ?? 128;
const sizes = (args.sizes ?? `${defaultSize},256`).split(",").map(Number);
const nz = Number(args.slices);
const workers = Number(args.workers);
const threads = Math.max(1, Math.floor(2 / workers));
const thinkMs = Number(args["think-ms"]);
const EMBEDDED_CLICKS = 20;

interface Setting {
  name: string;
  what: string;
  readAhead: boolean;
  prefetchRadius: number;
}
const SETTINGS: Setting[] = [
  { name: "before", what: "one read at a time; next slice ahead only with 2+ workers; no speculation", readAhead: false, prefetchRadius: 0 },
  { name: "read-ahead", what: "image, SDF and memory side by side; next slice read and encoded ahead with 1 worker too", readAhead: true, prefetchRadius: 0 },
  { name: "speculative", what: "read-ahead + start_z and each prompted slice +-2 embedded at background priority", readAhead: true, prefetchRadius: 2 },
];
const settings = args.settings.split(",").map((n) => {
  const s = SETTINGS.find((x) => x.name === n);
  if (s === undefined) throw new Error(`--settings: unknown ${n} (${SETTINGS.map((x) => x.name).join(", ")})`);
  return s;
});

const dir = mkdtempSync(join(tmpdir(), "propagation-bench-"));
const q = (a: number[], p: number) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const time = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};

interface Row {
  setting: string;
  format: string;
  size: number;
  first: number[];
  embedded: number[];
  slicesPerS: number[];
  slices: number;
}

async function runSetting(setting: Setting): Promise<Row[]> {
  const server = await serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: join(root, "test", "fixtures", "models"),
    roots: [dir, resolve(root, "..", "shared", "data")],
    cacheDir: join(dir, "cache"),
    workers,
    intraOpThreads: threads,
    executionProvider: "cpu",
    maxQueuePerModel: 16,
    log: silentLogger(),
    propagation: { dir: propagatorDir, readAhead: setting.readAhead, prefetchRadius: setting.prefetchRadius },
  });
  const clients = connect(server.grpc.address);
  const open = async (url: string) => (await grpcOpenVolume(clients, { url })).volume!;
  try {
    const rows: Row[] = [];
    for (const format of data === "lucchi" ? formats : ["precomputed"]) {
      const { image: imageUrl, sdf: sdfUrl, shape } = await volumesFor(format);
      const imageId = (await open(imageUrl)).volumeId;
      const sdfId = (await open(sdfUrl)).volumeId;
      for (const requested of data === "lucchi" ? sizes : [shape[1]]) {
        const size = Math.min(requested, shape[1], shape[2]);
        const depth = Math.min(nz, shape[0]);
        // Two crops side by side: clicks on one, propagation on the other (never embedded by the clicks).
        const boxAt = (x: number) => ({ offset: { z: 0, y: Math.floor((shape[1] - size) / 2), x }, shape: { z: depth, y: size, x: size } });
        const clickBox = boxAt(Math.max(0, Math.floor(shape[2] / 2) - size));
        const propBox = boxAt(Math.min(shape[2] - size, Math.floor(shape[2] / 2)));
        // Slices decoded by an earlier run (another setting, in this process) must not make reads look cheap.
        defaultChunkCache().invalidate();
        const start = (box: typeof clickBox, startZ?: number) =>
          call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
            volumeId: imageId,
            box,
            scale: 0,
            model: "",
            sdfModel: "",
            sdfVolumeId: sdfId,
            ...(startZ === undefined ? {} : { startZ }),
          });
        const click = (sessionId: string, box: typeof clickBox, z: number, i: number, clearOld: boolean) =>
          call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
            sessionId,
            objectId: 1n,
            z,
            points: [{ y: box.offset.y + box.shape.y / 2 + (i % 5), x: box.offset.x + box.shape.x / 2 + (i % 7), label: PointLabel.POINT_LABEL_POSITIVE }],
            clearOld,
          });
        // First clicks: a session per start slice, 6 slices apart so no speculation (+-2) overlaps.
        const first: number[] = [];
        for (let z = 0; z < depth; z += 6) {
          const { sessionId } = await start(clickBox, z);
          await sleep(thinkMs);
          first.push(await time(() => click(sessionId, clickBox, z, z, true)));
          await call(clients.segmentation, clients.segmentation.closeSession, { sessionId });
        }
        const { sessionId } = await start(clickBox);
        const embedded: number[] = [];
        for (let i = 0; i < EMBEDDED_CLICKS; i++) embedded.push(await time(() => click(sessionId, clickBox, 0, i, i % 4 === 0)));
        await call(clients.segmentation, clients.segmentation.closeSession, { sessionId });

        defaultChunkCache().invalidate();
        const prop = await start(propBox);
        await click(prop.sessionId, propBox, 0, 0, true);
        let slices = 0;
        const ms = await time(async () => {
          const stream = clients.segmentation.propagate({ sessionId: prop.sessionId, direction: Direction.DIRECTION_FORWARD, maxSlices: depth, objectIds: [] });
          slices = (await collect<PropagateResponse>(stream)).length;
        });
        await call(clients.segmentation, clients.segmentation.closeSession, { sessionId: prop.sessionId });
        // The start slice is the prompted one (no model run): it is yielded but not counted.
        rows.push({ setting: setting.name, format, size, first, embedded, slices: slices - 1, slicesPerS: [(slices - 1) / (ms / 1000)] });
      }
    }
    return rows;
  } finally {
    clients.close();
    await server.close();
  }
}

const rows: Row[] = [];
const rounds = Number(args.rounds);
const formats = args.formats.split(",");
const made = new Map<string, { image: string; sdf: string; shape: [number, number, number] }>();
/** The image and SDF volume URLs of a format (copies made once, before any timing, reused by every setting). */
async function volumesFor(format: string): Promise<{ image: string; sdf: string; shape: [number, number, number] }> {
  const have = made.get(format);
  if (have !== undefined) return have;
  let v: { image: string; sdf: string; shape: [number, number, number] };
  if (data !== "lucchi") {
    const g = join(root, "test", "fixtures", "propagator");
    const shape = readNpy(join(g, "image.npy")).shape as [number, number, number];
    v = {
      image: await writePrecomputedArray(dir, "image", "uint8", readNpy(join(g, "image.npy")).data, shape),
      sdf: await writePrecomputedArray(dir, "sdf", "float32", readNpy(join(g, "sdf.npy")).data, shape),
      shape,
    };
  } else {
    const png = { image: `png://file://${join(lucchi, "image")}`, sdf: `png://file://${join(lucchi, "label")}` };
    const image = await openVolume(png.image, { roots: [lucchi] });
    const [, y, x] = image.metadata.scales[0]!.shapeZyx;
    const shape: [number, number, number] = [Math.min(nz, image.metadata.scales[0]!.shapeZyx[0]), y, x];
    if (format === "png") v = { ...png, shape };
    else if (format === "precomputed") {
      const box = { offsetZyx: [0, 0, 0] as [number, number, number], shapeZyx: shape };
      const label = await openVolume(png.sdf, { roots: [lucchi] });
      const chunkZyx: [number, number, number] = [32, 64, 64];
      v = {
        image: await writePrecomputedArray(dir, "image", "uint8", (await image.read(box, 0)) as Uint8Array, shape, [5, 5, 5], { chunkZyx }),
        sdf: await writePrecomputedArray(dir, "sdf", "float32", Float32Array.from((await label.read(box, 0)) as Uint8Array), shape, [5, 5, 5], { chunkZyx }),
        shape,
      };
      await label.close();
    } else throw new Error(`--formats: unknown ${format} (png, precomputed)`);
    await image.close();
  }
  made.set(format, v);
  return v;
}

for (let round = 0; round < rounds; round++) {
  for (const s of settings) {
    for (const r of await runSetting(s)) {
      const row = rows.find((x) => x.setting === r.setting && x.size === r.size && x.format === r.format);
      if (row === undefined) rows.push(r);
      else {
        row.first.push(...r.first);
        row.embedded.push(...r.embedded);
        row.slicesPerS.push(...r.slicesPerS);
      }
    }
  }
}
rmSync(dir, { recursive: true, force: true });

const fmt = (v: number) => v.toFixed(1);
const cpu = cpus();
console.log(
  `propagation bench: ${config.name} (${propagatorDir}) on ${data}, ${nz} slices, ${workers} ONNX worker(s) x ${threads} thread(s), cpu; think time ${thinkMs} ms before a first click; ${rounds} round(s)`,
);
console.log(`machine: ${cpu[0]?.model ?? "?"} x ${cpu.length}, ${platform()} ${release()}, Node ${process.version}, load average ${loadavg().map((l) => l.toFixed(1)).join(" ")}, commit ${gitCommit()}`);
for (const s of settings) console.log(`- ${s.name}: ${s.what}`);
console.log("");
console.log("| data | setting | size | first click p50 / p95 (ms) | embedded click p50 / p95 (ms) | propagation (slices/s) |");
console.log("| --- | --- | --- | --- | --- | --- |");
rows.sort((a, b) => formats.indexOf(a.format) - formats.indexOf(b.format) || a.size - b.size || settings.findIndex((s) => s.name === a.setting) - settings.findIndex((s) => s.name === b.setting));
for (const r of rows) {
  console.log(
    `| ${r.format} | ${r.setting} | ${r.size}x${r.size}${r.size === defaultSize ? " (default)" : ""} | ${fmt(q(r.first, 0.5))} / ${fmt(q(r.first, 0.95))} (n ${r.first.length}) | ${fmt(q(r.embedded, 0.5))} / ${fmt(q(r.embedded, 0.95))} (n ${r.embedded.length}) | ${fmt(q(r.slicesPerS, 0.5))} (${r.slices} slices x ${r.slicesPerS.length}; ${r.slicesPerS.map(fmt).join(", ")}) |`,
  );
}
const base = rows.filter((r) => r.setting === settings[0]!.name);
if (settings.length > 1) {
  console.log("");
  console.log(`| data | ratio to ${settings[0]!.name} | size | first click p50 | propagation |`);
  console.log("| --- | --- | --- | --- | --- |");
  for (const r of rows.filter((x) => x.setting !== settings[0]!.name)) {
    const b = base.find((x) => x.size === r.size && x.format === r.format)!;
    console.log(`| ${r.format} | ${r.setting} | ${r.size}x${r.size} | ${(q(r.first, 0.5) / q(b.first, 0.5)).toFixed(2)}x | ${(q(r.slicesPerS, 0.5) / q(b.slicesPerS, 0.5)).toFixed(2)}x |`);
  }
}
