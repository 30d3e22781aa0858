// Benchmark (not a test): blockwise SDF (SdfEngine over a precomputed volume on disk, result cached
// on disk) as the volume grows 1x, 8x, 64x in voxels; each size is generated and then measured in
// processes of its own, so peak RSS (process.resourceUsage().maxRSS) is per size. Expected: time
// about linear in voxels, RSS about flat (the engine holds a block at a time, not the volume).
// A tiny U-Net with seeded random weights keeps 64x to seconds or minutes on this CPU.
//
//   nice node --import tsx test/bench/sdf_scaling.bench.ts
//   nice node --import tsx test/bench/sdf_scaling.bench.ts --threads 1 --base 32,128,128 --block 32,64,64
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { Vec3 } from "#src/volume/types.ts";
import { exportUnet, gitCommit, machine, writeImageVolume, type ExportedUnet } from "./sdf_bench_helpers.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}
const THREADS = Number(arg("threads", "1"));
/** The 1x volume (4 write blocks); 8x and 64x double and quadruple every axis. */
const BASE = arg("base", "32,128,128").split(",").map(Number) as Vec3;
/** The engine's write block and the generated volume's chunk. */
const WRITE = arg("block", "32,64,64").split(",").map(Number) as Vec3;
/** Two levels, 4 and 8 channels: receptive field 18, context 10 per side. */
const TINY_UNET = JSON.stringify({ channels: [4, 8], pool: [[2, 2, 2]] });
const TINY_CONTEXT = 10;
const SIZES: [string, number][] = [
  ["1x", 1],
  ["8x", 2],
  ["64x", 4],
];

interface Measured {
  shape: Vec3;
  blocks: number;
  loadS: number;
  computeS: number;
  rssBeforeMiB: number;
  rssImportedMiB: number;
  rssAfterLoadMiB: number;
  peakRssMiB: number;
  maxArrayBuffersMiB: number;
}

/** In a child process: SDF of the whole volume at `dir/image`, with a fresh cache. */
async function measure(dir: string, shape: Vec3): Promise<Measured> {
  const rssBefore = process.memoryUsage().rss;
  const { silentLogger } = await import("#server/log.ts");
  const { ModelRegistry } = await import("#server/onnx/model_registry.ts");
  const { SdfEngine } = await import("#server/engine/sdf_engine.ts");
  const { openVolume } = await import("#server/volume/open_volume.ts");
  const rssImported = process.memoryUsage().rss;
  const t0 = performance.now();
  const registry = await ModelRegistry.load(join(dir, "models"), { logger: silentLogger(), workers: 1, intraOpThreads: THREADS });
  const volume = await openVolume(`precomputed://file://${join(dir, "image")}`, { roots: [dir] });
  const engine = new SdfEngine({ registry, cacheDir: join(dir, "cache"), log: silentLogger(), concurrency: 1 });
  // Warm-up outside the timing: the first run allocates the session's buffers and picks kernels.
  const read = WRITE.map((w) => w + 2 * TINY_CONTEXT);
  await registry.run("sdf_bench", { image: { dtype: "float32", dims: [1, 1, ...read], data: new Float32Array(read[0]! * read[1]! * read[2]!) } });
  const t1 = performance.now();
  const rssAfterLoad = process.memoryUsage().rss;
  let maxBuffers = 0;
  const res = await engine.compute({
    volume,
    volumeKey: "bench",
    box: { offsetZyx: [0, 0, 0], shapeZyx: shape },
    scale: 0,
    model: "sdf_bench",
    onProgress: () => (maxBuffers = Math.max(maxBuffers, process.memoryUsage().arrayBuffers)),
  });
  const t2 = performance.now();
  await volume.close();
  await registry.close();
  return {
    shape,
    blocks: res.blocksDone,
    loadS: (t1 - t0) / 1000,
    computeS: (t2 - t1) / 1000,
    rssBeforeMiB: rssBefore / 2 ** 20,
    rssImportedMiB: rssImported / 2 ** 20,
    rssAfterLoadMiB: rssAfterLoad / 2 ** 20,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    maxArrayBuffersMiB: maxBuffers / 2 ** 20,
  };
}

function child(args: string[]): string {
  return execFileSync(process.execPath, ["--import", "tsx", import.meta.filename, ...args], { cwd: import.meta.dirname, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
}

async function main() {
  const mode = process.argv[2];
  if (mode === "--generate" || mode === "--measure") {
    const dir = process.argv[3]!;
    const shape = process.argv[4]!.split(",").map(Number) as Vec3;
    if (mode === "--generate") await writeImageVolume(join(dir, "image"), shape, WRITE);
    else console.log(JSON.stringify(await measure(dir, shape)));
    return;
  }
  const root = mkdtempSync(join(tmpdir(), "sdf-scaling-"));
  try {
    const patch = WRITE.map((b) => b + 2 * TINY_CONTEXT) as Vec3;
    let unet: ExportedUnet | undefined;
    const rows: (Measured & { name: string })[] = [];
    for (const [name, factor] of SIZES) {
      const dir = join(root, name);
      // Each size gets its own copy of the same seeded model (the engine's cache is per folder anyway).
      unet = exportUnet(dir, patch, { unetJson: TINY_UNET });
      if (unet.context_zyx.some((c) => c !== TINY_CONTEXT)) throw new Error(`tiny U-Net context is ${unet.context_zyx.join("x")}, expected ${TINY_CONTEXT}`);
      const shape = BASE.map((b) => b * factor) as Vec3;
      child(["--generate", dir, shape.join(",")]);
      const out = child(["--measure", dir, shape.join(",")]);
      rows.push({ name, ...(JSON.parse(out.trim().split("\n").at(-1)!) as Measured) });
      rmSync(dir, { recursive: true, force: true });
    }
    const m = machine();
    const base = rows[0]!;
    const vox = (s: Vec3) => s[0] * s[1] * s[2];
    console.log(`SDF scaling benchmark, commit ${gitCommit()}, ${new Date().toISOString()}`);
    console.log(`machine: ${m.cpu}, ${m.logicalCpus} logical CPUs, load average ${m.loadAverage.map((l) => l.toFixed(1)).join(" ")} (shared machine); node ${m.node}, onnxruntime-node ${m.onnxruntimeNode}`);
    console.log(
      `model: tiny U-Net ${TINY_UNET} (${unet!.params} parameters, seeded random weights), context ${unet!.context_zyx.join("x")}, ` +
        `write block ${unet!.write_shape_zyx.join("x")}, read box ${patch.join("x")}; 1 ONNX worker x ${THREADS} intra-op thread(s), engine concurrency 1`,
    );
    console.log("each size: volume generated in one process, SDF computed in another (fresh cache on disk); time = engine.compute only, after one warm-up run of the model\n");
    console.log("| size | shape (z, y, x) | voxels | blocks | compute s | time ratio | voxel ratio | s / Mvox | load + warm-up s | RSS start / imports done / model + volume open / peak MiB | peak RSS ratio | max array buffers MiB |");
    console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const r of rows) {
      console.log(
        `| ${r.name} | ${r.shape.join(" x ")} | ${(vox(r.shape) / 1e6).toFixed(2)} M | ${r.blocks} | ${r.computeS.toFixed(2)} | ${(r.computeS / base.computeS).toFixed(1)} | ` +
          `${vox(r.shape) / vox(base.shape)} | ${((r.computeS * 1e6) / vox(r.shape)).toFixed(2)} | ${r.loadS.toFixed(2)} | ${r.rssBeforeMiB.toFixed(0)} / ${r.rssImportedMiB.toFixed(0)} / ${r.rssAfterLoadMiB.toFixed(0)} / ${r.peakRssMiB.toFixed(0)} | ` +
          `${(r.peakRssMiB / base.peakRssMiB).toFixed(2)} | ${r.maxArrayBuffersMiB.toFixed(1)} |`,
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
