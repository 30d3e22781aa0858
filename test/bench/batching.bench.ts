// Does batching pay on this CPU? One session.run over a batch of N inputs against N runs of batch 1,
// for the graphs whose requests could be batched across clients (same model, same input shape):
// the propagator's image and memory encoders and the SDF 3D U-Net. The shipped graphs fix the batch
// axis to 1, so a copy with a dynamic batch axis is made (models/.venv's onnx: input and output dim 0
// renamed "B", intermediate shape annotations dropped); the arithmetic is the same graph's.
// Run: nice node --import tsx test/bench/batching.bench.ts [--n 2,4] [--threads 1,2] [--reps 5]
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { gitCommit, machine, median, PYTHON, ROOT } from "./sdf_bench_helpers.ts";

const { values } = parseArgs({
  options: { n: { type: "string", default: "2,4" }, threads: { type: "string", default: "1,2" }, reps: { type: "string", default: "5" } },
});
const batchSizes = values.n.split(",").map(Number);
const threadCounts = values.threads.split(",").map(Number);
const reps = Number(values.reps);

const REWRITE = `
import sys, onnx
src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
for v in list(m.graph.input) + list(m.graph.output):
    d = v.type.tensor_type.shape.dim[0]
    d.ClearField("dim_value")
    d.dim_param = "B"
del m.graph.value_info[:]
onnx.save(m, dst)
`;

interface Case {
  label: string;
  onnx: string;
  /** Per-item input shapes (batch axis 1). */
  inputs: Record<string, number[]>;
}

const dir = mkdtempSync(join(tmpdir(), "batching-bench-"));
const graph = (src: string, name: string) => {
  const dst = join(dir, `${name}.onnx`);
  execFileSync(PYTHON, ["-c", REWRITE, join(ROOT, src), dst], { stdio: ["ignore", "inherit", "inherit"] });
  return dst;
};
const imageEncoder = graph("models/propagator_lucchi/image_encoder/model.onnx", "image_encoder");
const memoryEncoder = graph("models/propagator_lucchi/memory_encoder/model.onnx", "memory_encoder");
const unet = graph("models/sdf_unet3d_lucchi/model.onnx", "sdf_unet3d");
const cases: Case[] = [
  { label: "image_encoder 128x128", onnx: imageEncoder, inputs: { image: [1, 1, 128, 128] } },
  { label: "image_encoder 256x256", onnx: imageEncoder, inputs: { image: [1, 1, 256, 256] } },
  { label: "memory_encoder 128x128", onnx: memoryEncoder, inputs: { feat: [1, 64, 8, 8], sdf_slice: [1, 1, 128, 128], mask: [1, 1, 128, 128] } },
  { label: "sdf_unet3d 48x64x64", onnx: unet, inputs: { image: [1, 1, 48, 64, 64] } },
];

let seed = 1;
const random = (n: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
const count = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

const m = machine();
console.log(`batching bench (commit ${gitCommit()}): ${m.cpu}, ${m.logicalCpus} logical CPUs, load average ${m.loadAverage.map((l) => l.toFixed(1)).join(" ")}, Node ${m.node}, onnxruntime-node ${m.onnxruntimeNode}`);
console.log(`median of ${reps} repetitions after one warm-up; speed-up = (N single runs) / (one batch of N): above 1 batching pays`);
console.log("| graph | threads | N | N x batch 1 (ms) | batch N (ms) | speed-up | max abs diff |");
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const threads of threadCounts) {
  for (const c of cases) {
    // The worker's session options (server/onnx/onnx_worker.ts).
    const session = await InferenceSession.create(c.onnx, {
      executionProviders: ["cpu"],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: "sequential",
      graphOptimizationLevel: "all",
    });
    for (const n of batchSizes) {
      const items = Array.from({ length: n }, () => Object.fromEntries(Object.entries(c.inputs).map(([k, dims]) => [k, random(count(dims))])));
      const singleFeeds = items.map((it) => Object.fromEntries(Object.entries(it).map(([k, data]) => [k, new Tensor("float32", data, c.inputs[k]!)])));
      const batchFeeds = Object.fromEntries(
        Object.entries(c.inputs).map(([k, dims]) => {
          const all = new Float32Array(n * count(dims));
          items.forEach((it, i) => all.set(it[k]!, i * count(dims)));
          return [k, new Tensor("float32", all, [n, ...dims.slice(1)])];
        }),
      );
      const runSingles = async () => {
        const outs = [];
        for (const f of singleFeeds) outs.push(await session.run(f));
        return outs;
      };
      const singlesOut = await runSingles();
      const batchOut = await session.run(batchFeeds);
      let diff = 0;
      for (const name of session.outputNames) {
        const b = batchOut[name]!.data as Float32Array;
        const per = b.length / n;
        singlesOut.forEach((o, i) => {
          const s = o[name]!.data as Float32Array;
          for (let j = 0; j < per; j++) diff = Math.max(diff, Math.abs(s[j]! - b[i * per + j]!));
        });
      }
      const single: number[] = [];
      const batch: number[] = [];
      for (let r = 0; r < reps; r++) {
        let t = performance.now();
        await runSingles();
        single.push(performance.now() - t);
        t = performance.now();
        await session.run(batchFeeds);
        batch.push(performance.now() - t);
      }
      const s = median(single);
      const b = median(batch);
      console.log(`| ${c.label} | ${threads} | ${n} | ${s.toFixed(1)} | ${b.toFixed(1)} | ${(s / b).toFixed(2)} | ${diff.toExponential(1)} |`);
    }
    await session.release();
  }
}
rmSync(dir, { recursive: true, force: true });
