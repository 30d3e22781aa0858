// Benchmark (not a test): SDF throughput of the ONNX path in Node against PyTorch eager running the
// same weights on the same blocks with the same number of threads (issue 5, goal ONNX >= 1.5x).
// The default U-Net config (unet3d_lucchi) is exported with seeded random weights (throughput does
// not depend on them) by models/bench/sdf_torch_throughput.py, which also runs the PyTorch side in
// its own process. Blocks are the engine's: read box = the manifest's patch_shape_zyx, write box =
// patch minus 2 x context_zyx. Mvox/s counts output voxels of write boxes; GFLOP/s counts the
// network's convolutions per read box (see count_flops in the Python script).
//
//   nice node --import tsx test/bench/sdf_throughput.bench.ts
//   nice node --import tsx test/bench/sdf_throughput.bench.ts --threads 1,2 --reps 3 --volume-reps 2 --patch 128,160,160
//   ... --no-levers   # skip the second table: onnxruntime session options tried on one block
//
// The second table runs onnxruntime-node sessions directly (no worker) with the options the
// server's worker uses (server/onnx/onnx_worker.ts) and with one option changed at a time: these
// are the levers tried to reach the 1.5x goal.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { InferenceSession, Tensor } from "onnxruntime-node";
import type { Vec3 } from "#src/volume/types.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { silentLogger } from "#server/log.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { exportUnet, gitCommit, machine, median, peakGflops, PYTHON, ROOT, TORCH_SCRIPT, writeImageVolume } from "./sdf_bench_helpers.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}
const THREADS = arg("threads", "1,2").split(",").map(Number);
const REPS = Number(arg("reps", "3"));
const VOLUME_REPS = Number(arg("volume-reps", "2"));
const PATCH = arg("patch", "128,160,160").split(",").map(Number) as Vec3;
const CONFIG = arg("config", "unet3d_lucchi");
/** The generated volume, in write blocks (z, y, x): small, since one block is billions of FLOPs. */
const BLOCKS: Vec3 = arg("blocks", "1,1,2").split(",").map(Number) as Vec3;
const LEVERS = !process.argv.includes("--no-levers");

/** The worker's session options (server/onnx/onnx_worker.ts), then one change at a time. */
const SERVER_OPTIONS: InferenceSession.SessionOptions = {
  executionProviders: ["cpu"],
  interOpNumThreads: 1,
  executionMode: "sequential",
  graphOptimizationLevel: "all",
};
const LEVER_VARIANTS: [string, InferenceSession.SessionOptions][] = [
  ["server options (optimisation all)", {}],
  ["graphOptimizationLevel basic", { graphOptimizationLevel: "basic" }],
  ["graphOptimizationLevel disabled", { graphOptimizationLevel: "disabled" }],
  ["enableMemPattern false", { enableMemPattern: false }],
  ["enableCpuMemArena false", { enableCpuMemArena: false }],
  ["static shape (freeDimensionOverrides z, y, x)", { freeDimensionOverrides: { z: PATCH[0], y: PATCH[1], x: PATCH[2] } }],
  ["intra-op spinning off", { extra: { session: { intra_op: { allow_spinning: "0" } } } }],
];

/** Median wall and CPU seconds of `reps` runs of one block (after a warm-up) for each option variant. */
async function levers(onnxPath: string, input: Float32Array, threads: number, reps: number): Promise<[string, number, number][]> {
  const out: [string, number, number][] = [];
  for (const [name, change] of LEVER_VARIANTS) {
    const session = await InferenceSession.create(onnxPath, { ...SERVER_OPTIONS, intraOpNumThreads: threads, ...change });
    try {
      const feeds = { image: new Tensor("float32", input, [1, 1, ...PATCH]) };
      await session.run(feeds);
      const times: { wall: number; cpu: number }[] = [];
      for (let r = 0; r < reps; r++) times.push(await timed(() => session.run(feeds)));
      out.push([name, median(times.map((t) => t.wall)), median(times.map((t) => t.cpu))]);
    } finally {
      await session.release();
    }
  }
  return out;
}

interface Row {
  path: string;
  threads: number;
  /** Median wall seconds per block. */
  blockS: number;
  /** Median CPU seconds (whole process, all threads) per block. */
  cpuS: number;
}

/** Wall and CPU seconds (process.cpuUsage covers every thread, the ONNX worker's included) of `fn`. */
async function timed(fn: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const t = performance.now();
  const c = process.cpuUsage();
  await fn();
  const d = process.cpuUsage(c);
  return { wall: (performance.now() - t) / 1000, cpu: (d.user + d.system) / 1e6 };
}

interface TorchResult {
  threads: number;
  torch: string;
  block_median_s: number;
  block_median_cpu_s: number;
  volume_median_s: number;
  volume_median_cpu_s: number;
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), "sdf-throughput-"));
  try {
    const unet = exportUnet(dir, PATCH, { config: CONFIG });
    const write = unet.write_shape_zyx;
    const shape = write.map((w, d) => w * BLOCKS[d]!) as Vec3;
    const blockCount = BLOCKS[0] * BLOCKS[1] * BLOCKS[2];
    // The volume as a precomputed volume for the engine and as one raw file for PyTorch.
    const raw = new Uint8Array(shape[0] * shape[1] * shape[2]);
    await writeImageVolume(join(dir, "image"), shape, write, (index, data) => {
      for (let z = 0; z < write[0]; z++)
        for (let y = 0; y < write[1]; y++) {
          const at = ((index[0] * write[0] + z) * shape[1] + index[1] * write[1] + y) * shape[2] + index[2] * write[2];
          raw.set(data.subarray((z * write[1] + y) * write[2], (z * write[1] + y + 1) * write[2]), at);
        }
    });
    writeFileSync(join(dir, "volume.u8"), raw);
    const blockInput = new Float32Array(readFileSync(join(dir, "block_input.f32")).buffer.slice(0));
    const volume = await openVolume(`precomputed://file://${join(dir, "image")}`, { roots: [dir] });
    const rows: Row[] = [];
    let torchVersion = "?";
    for (const threads of THREADS) {
      const registry = await ModelRegistry.load(join(dir, "models"), { logger: silentLogger(), workers: 1, intraOpThreads: threads });
      try {
        const feeds = { image: { dtype: "float32" as const, dims: [1, 1, ...PATCH], data: blockInput } };
        await registry.run(unet.name, feeds); // warm-up: session allocations, kernel selection
        const block: { wall: number; cpu: number }[] = [];
        for (let r = 0; r < REPS; r++) {
          // The input is transferred to the worker, so each run gets its own copy.
          const data = blockInput.slice();
          block.push(await timed(() => registry.run(unet.name, { image: { ...feeds.image, data } })));
        }
        rows.push({ path: "ONNX registry.run (1 block)", threads, blockS: median(block.map((b) => b.wall)), cpuS: median(block.map((b) => b.cpu)) });
        const vol: { wall: number; cpu: number }[] = [];
        for (let r = 0; r < VOLUME_REPS; r++) {
          // A fresh cache folder each time, so every block is computed (and read, and written).
          const engine = new SdfEngine({ registry, cacheDir: join(dir, `cache-${threads}-${r}`), log: silentLogger(), concurrency: 1 });
          vol.push(
            await timed(async () => {
              const res = await engine.compute({ volume, volumeKey: "bench", box: { offsetZyx: [0, 0, 0], shapeZyx: shape }, scale: 0, model: unet.name });
              if (res.blocksDone !== blockCount) throw new Error(`engine computed ${res.blocksDone} blocks, expected ${blockCount}`);
            }),
          );
        }
        rows.push({ path: "ONNX SdfEngine (volume)", threads, blockS: median(vol.map((v) => v.wall)) / blockCount, cpuS: median(vol.map((v) => v.cpu)) / blockCount });
      } finally {
        await registry.close();
      }
      const py = spawnSync(
        PYTHON,
        [TORCH_SCRIPT, "bench", "--dir", dir, "--threads", String(threads), "--volume", join(dir, "volume.u8"), "--shape", ...shape.map(String), "--reps", String(REPS), "--volume-reps", String(VOLUME_REPS)],
        { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
      );
      if (py.status !== 0) throw new Error(`PyTorch side failed (exit ${py.status})`);
      const t = JSON.parse(py.stdout.trim().split("\n").at(-1)!) as TorchResult;
      torchVersion = t.torch;
      rows.push({ path: "PyTorch eager (1 block)", threads, blockS: t.block_median_s, cpuS: t.block_median_cpu_s });
      rows.push({ path: "PyTorch predict_volume (volume)", threads, blockS: t.volume_median_s / blockCount, cpuS: t.volume_median_cpu_s / blockCount });
    }
    await volume.close();
    const leverRows = LEVERS ? await levers(join(dir, "models", unet.name, "model.onnx"), blockInput, 1, REPS) : [];

    const m = machine();
    const writeVox = write[0] * write[1] * write[2];
    const readVox = PATCH[0] * PATCH[1] * PATCH[2];
    const gflop = unet.flops_per_block.total / 1e9;
    console.log(`SDF throughput benchmark, commit ${gitCommit()}, ${new Date().toISOString()}`);
    console.log(`machine: ${m.cpu}, ${m.logicalCpus} logical CPUs at ${m.mhz.toFixed(0)} MHz, load average ${m.loadAverage.map((l) => l.toFixed(1)).join(" ")} (shared machine)`);
    console.log(`versions: node ${m.node}, onnxruntime-node ${m.onnxruntimeNode}, torch ${torchVersion}`);
    console.log(
      `peak (ESTIMATE): ${m.flopsPerCycle} FP32 FLOP/cycle/core [${m.peakBasis}] x ${(m.mhz / 1000).toFixed(2)} GHz = ${peakGflops(m, 1).toFixed(0)} GFLOP/s per core`,
    );
    console.log(
      `model: ${unet.config}, ${unet.params} parameters, seeded random weights; context ${unet.context_zyx.join("x")}, ` +
        `read box ${PATCH.join("x")} (${(readVox / 1e6).toFixed(2)} Mvox), write box ${write.join("x")} (${(writeVox / 1e6).toFixed(3)} Mvox, ${((100 * writeVox) / readVox).toFixed(1)}% of the read box), ` +
        `${gflop.toFixed(1)} GFLOP per block (convolutions)`,
    );
    console.log(`volume: ${shape.join("x")} uint8 = ${blockCount} blocks; medians of ${REPS} block runs (after a warm-up) and ${VOLUME_REPS} volume runs`);
    console.log("");
    console.log("| path | threads | s / block | CPU s / block | Mvox/s (write) | Mvox/s (read) | GFLOP/s | % of peak (threads cores) | GFLOP per CPU s (% of 1-core peak) | ONNX / PyTorch (wall) | ONNX / PyTorch (CPU s) |");
    console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const r of rows) {
      const torchTwin = r.path.startsWith("ONNX")
        ? rows.find((o) => o.threads === r.threads && o.path.startsWith("PyTorch") && o.path.endsWith(r.path.endsWith("(volume)") ? "(volume)" : "(1 block)"))
        : undefined;
      const gflops = gflop / r.blockS;
      console.log(
        `| ${r.path} | ${r.threads} | ${r.blockS.toFixed(2)} | ${r.cpuS.toFixed(2)} | ${(writeVox / 1e6 / r.blockS).toFixed(4)} | ${(readVox / 1e6 / r.blockS).toFixed(3)} | ${gflops.toFixed(1)} | ` +
          `${((100 * gflops) / peakGflops(m, r.threads)).toFixed(1)}% | ${(gflop / r.cpuS).toFixed(1)} (${((100 * gflop) / r.cpuS / peakGflops(m, 1)).toFixed(0)}%) | ${torchTwin === undefined ? "" : `${(torchTwin.blockS / r.blockS).toFixed(2)}x | ${(torchTwin.cpuS / r.cpuS).toFixed(2)}x`} |`,
      );
    }
    console.log("");
    console.log("ONNX / PyTorch > 1 means ONNX is faster (goal >= 1.5x). Volume rows include reading the input chunks and (ONNX) writing the SDF chunks.");
    console.log("Wall times include waiting for a core on a loaded machine; CPU s (whole process, all threads) is the load-robust figure at 1 thread (idle-spinning pool threads inflate it at 2).");
    if (leverRows.length > 0) {
      const torch1 = rows.find((r) => r.threads === 1 && r.path === "PyTorch eager (1 block)");
      console.log("\nonnxruntime session options tried (1 thread, one block, in this thread without a worker; one change from the server's options per row):\n");
      console.log("| session options | s / block | CPU s / block | GFLOP/s | vs server options (CPU s) | ONNX / PyTorch eager (CPU s) |");
      console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
      for (const [name, s, cpu] of leverRows) {
        console.log(
          `| ${name} | ${s.toFixed(2)} | ${cpu.toFixed(2)} | ${(gflop / s).toFixed(1)} | ${(leverRows[0]![2] / cpu).toFixed(2)}x | ${torch1 === undefined ? "" : `${(torch1.cpuS / cpu).toFixed(2)}x`} |`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
