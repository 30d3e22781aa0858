// Benchmark (not a test): evaluate() on a synthetic 165 x 768 x 1024 volume pair (Lucchi++'s
// size) and on 8x that, each in its own process so peak RSS is per size, printed side by side with
// the machine. The volumes are synthesised box by box on read (mitochondria-like ellipsoids, one
// per lattice cell; the prediction perturbs, drops, adds and flickers objects), so the process
// never holds a whole volume: what grows with the volume is the evaluator's own state.
//
//   nice node --import tsx test/bench/eval.bench.ts             # 1x, 8x (2x per axis), 8x (8x in z)
//   nice node --import tsx test/bench/eval.bench.ts --only 1x   # one size, in this process

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import type { TypedArray } from "#src/dtype.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";
import { evaluate } from "#server/eval/evaluate.ts";

const SIZES: Record<string, Vec3> = {
  "1x": [165, 768, 1024],
  "8x (2x per axis)": [330, 1536, 2048],
  "8x (8x in z)": [1320, 768, 1024],
};
/** Real I/O: Lucchi++ test labels as gt and its train labels standing in for a prediction (no model output exists yet). */
const LUCCHI = path.resolve(import.meta.dirname, "../../../shared/data/lucchi_pp");
const CELL: Vec3 = [48, 64, 64];
const CHUNK: Vec3 = [64, 64, 64];

/** A deterministic hash of integers to [0, 1). */
function rand(a: number, b: number, c: number, salt: number): number {
  let h = Math.imul(a, 73856093) ^ Math.imul(b, 19349663) ^ Math.imul(c, 83492791) ^ Math.imul(salt, 2654435761);
  h = Math.imul(h ^ (h >>> 16), 2246822507);
  h = Math.imul(h ^ (h >>> 13), 3266489909);
  return ((h ^ (h >>> 16)) >>> 0) / 4294967296;
}

interface Blob {
  c: Vec3;
  r: Vec3;
}

/** The object of lattice cell (i, j, k), in the ground truth or (perturbed) in the prediction. */
function blob(i: number, j: number, k: number, pred: boolean): Blob | undefined {
  const r: Vec3 = [8 + 14 * rand(i, j, k, 1), 8 + 20 * rand(i, j, k, 2), 8 + 20 * rand(i, j, k, 3)];
  const c: Vec3 = [i * CELL[0] + CELL[0] / 2, j * CELL[1] + CELL[1] / 2, k * CELL[2] + CELL[2] / 2];
  if (!pred) return rand(i, j, k, 4) < 0.05 ? undefined : { c, r };
  const u = rand(i, j, k, 5);
  if (u < 0.08) return undefined; // missed (cells without a gt object still get one: false positives)
  const s = 0.85 + 0.25 * rand(i, j, k, 6);
  return {
    c: [c[0] + 3 * (rand(i, j, k, 7) - 0.5), c[1] + 4 * (rand(i, j, k, 8) - 0.5), c[2] + 4 * (rand(i, j, k, 9) - 0.5)],
    r: [r[0] * s, r[1] * s, r[2] * s],
  };
}

/** A VolumeSource that synthesises any box on request: gt uint8 0/255, prediction uint32 instance ids. */
function syntheticVolume(shape: Vec3, pred: boolean, clock: { ms: number }): VolumeSource {
  return {
    metadata: {
      format: "synthetic",
      dtype: pred ? "uint32" : "uint8",
      fillValue: 0,
      kind: "segmentation",
      scales: [{ index: 0, key: "s0", shapeZyx: shape, voxelSizeNm: [5, 5, 5], chunkShapeZyx: CHUNK, offsetZyx: [0, 0, 0] }],
    },
    async read(box: Box3): Promise<TypedArray> {
      const t0 = performance.now();
      const [bz, by, bx] = box.shapeZyx;
      const [oz, oy, ox] = box.offsetZyx;
      const out = pred ? new Uint32Array(bz * by * bx) : new Uint8Array(bz * by * bx);
      const nk = Math.ceil(shape[2] / CELL[2]);
      for (let z = 0; z < bz; z++) {
        const gz = oz + z;
        const i = Math.floor(gz / CELL[0]);
        for (let y = 0; y < by; y++) {
          const gy = oy + y;
          const j = Math.floor(gy / CELL[1]);
          const row = (z * by + y) * bx;
          for (let k = Math.floor(ox / CELL[2]); k * CELL[2] < ox + bx; k++) {
            const b = blob(i, j, k, pred);
            if (b === undefined) continue;
            // Flicker: 3% of predicted objects lose two slices in their middle.
            if (pred && rand(i, j, k, 10) < 0.03 && Math.abs(gz - b.c[0]) < 1.5) continue;
            const dz = (gz - b.c[0]) / b.r[0];
            const dy = (gy - b.c[1]) / b.r[1];
            const q = 1 - dz * dz - dy * dy;
            if (q <= 0) continue;
            const half = b.r[2] * Math.sqrt(q);
            const x0 = Math.max(ox, Math.ceil(b.c[2] - half), k * CELL[2]);
            const x1 = Math.min(ox + bx, Math.floor(b.c[2] + half) + 1, (k + 1) * CELL[2]);
            if (x1 > x0) out.fill(pred ? 1 + (i * Math.ceil(shape[1] / CELL[1]) + j) * nk + k : 255, row + x0 - ox, row + x1 - ox);
          }
        }
      }
      clock.ms += performance.now() - t0;
      return out;
    },
    async close() {},
  };
}

async function measure(name: string) {
  const clock = { ms: 0 };
  let maxHeap = 0;
  let maxBuffers = 0;
  const sample = () => {
    const m = process.memoryUsage();
    maxHeap = Math.max(maxHeap, m.heapUsed);
    maxBuffers = Math.max(maxBuffers, m.arrayBuffers);
  };
  let pred: VolumeSource;
  let gt: VolumeSource;
  let rssBefore: number;
  let t0: number;
  if (name === "Lucchi++ PNG") {
    // Imported only here: the format drivers (h5wasm among them) add to the baseline RSS.
    const { ChunkCache } = await import("#server/volume/chunk_cache.ts");
    const { openVolume } = await import("#server/volume/open_volume.ts");
    rssBefore = process.memoryUsage().rss;
    t0 = performance.now();
    // A 64 MiB private cache, as the eval command uses.
    const cache = new ChunkCache({ maxBytes: 64 * 2 ** 20 });
    pred = await openVolume(`png://${LUCCHI}/train/label`, { roots: [LUCCHI], cache });
    gt = await openVolume(`png://${LUCCHI}/test/label`, { roots: [LUCCHI], cache });
  } else {
    rssBefore = process.memoryUsage().rss;
    t0 = performance.now();
    pred = syntheticVolume(SIZES[name]!, true, clock);
    gt = syntheticVolume(SIZES[name]!, false, clock);
  }
  const r = await evaluate(pred, gt, { onProgress: sample });
  const totalMs = performance.now() - t0;
  const shape = r.shapeZyx;
  return {
    name,
    shape,
    rssBeforeMiB: rssBefore / 2 ** 20,
    maxHeapMiB: maxHeap / 2 ** 20,
    maxArrayBuffersMiB: maxBuffers / 2 ** 20,
    voxels: shape[0] * shape[1] * shape[2],
    totalS: totalMs / 1000,
    synthS: clock.ms / 1000,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    gtObjects: r.instances.gt.count,
    predObjects: r.instances.pred.count,
    ap: r.instance.ap.all.ap,
    flickerObjects: r.consistency.flickerObjects,
    block: r.blockShapeZyx,
  };
}

async function main() {
  const i = process.argv.indexOf("--only");
  if (i >= 0) {
    console.log(JSON.stringify(await measure(process.argv[i + 1]!)));
    return;
  }
  const names = [...Object.keys(SIZES), ...(existsSync(LUCCHI) ? ["Lucchi++ PNG"] : [])];
  const rows = names.map((name) => {
    const out = execFileSync(process.execPath, ["--import", "tsx", import.meta.filename, "--only", name], { encoding: "utf8", maxBuffer: 1 << 20 });
    return JSON.parse(out.trim().split("\n").at(-1)!) as Awaited<ReturnType<typeof measure>>;
  });
  const cpu = os.cpus();
  let commit = "?";
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: path.dirname(import.meta.filename), encoding: "utf8" }).trim();
  } catch {
    // not a git checkout
  }
  console.log(`eval benchmark, commit ${commit}, ${new Date().toISOString()}`);
  console.log(`machine: ${cpu[0]?.model ?? "?"} x ${cpu.length} logical CPUs, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ${os.type()} ${os.release()}, node ${process.version}`);
  console.log(`default blocks (${rows.map((r) => `${r.name}: ${r.block.join("x")}`).join(", ")}), 6-connectivity`);
  console.log("synthetic: gt uint8 semantic -> components, pred uint32 instances, synthesised on read (synthesis s stands in for I/O)");
  console.log("Lucchi++ PNG: real files through openVolume; gt = test/label, pred = train/label as a stand-in, both semantic -> components\n");
  console.log("| volumes | shape (z, y, x) | voxels | total s | synthesis s | scoring s | Mvoxel/s | RSS before / peak MiB | max heap / array buffers MiB | gt / pred objects | AP@[.5:.95] |");
  console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of rows) {
    console.log(
      `| ${r.name} | ${r.shape.join(" x ")} | ${(r.voxels / 1e6).toFixed(0)} M | ${r.totalS.toFixed(1)} | ${r.synthS.toFixed(1)} | ${(r.totalS - r.synthS).toFixed(1)} | ` +
        `${(r.voxels / 1e6 / r.totalS).toFixed(1)} | ${r.rssBeforeMiB.toFixed(0)} / ${r.peakRssMiB.toFixed(0)} | ${r.maxHeapMiB.toFixed(0)} / ${r.maxArrayBuffersMiB.toFixed(0)} | ${r.gtObjects} / ${r.predObjects} | ${r.ap?.toFixed(3) ?? "n/a"} |`,
    );
  }
}

await main();
