// Shared by the SDF benchmarks (sdf_throughput, sdf_scaling): a seeded random U-Net exported by
// models/bench/sdf_torch_throughput.py, a generated EM-like volume written chunk by chunk as a
// precomputed volume, and the machine: CPU model, versions and an estimated FP32 peak.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as os from "node:os";
import { dirname, join } from "node:path";
import { makeDemoVolume } from "#src/demo_volume.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";

export const ROOT = join(import.meta.dirname, "..", "..");
export const PYTHON = join(ROOT, "models", ".venv", "bin", "python");
export const TORCH_SCRIPT = join(ROOT, "models", "bench", "sdf_torch_throughput.py");

/** What `sdf_torch_throughput.py export` reports (bench.json). */
export interface ExportedUnet {
  name: string;
  config: string;
  params: number;
  context_zyx: Vec3;
  patch_shape_zyx: Vec3;
  write_shape_zyx: Vec3;
  flops_per_block: { conv: number; conv_transpose: number; total: number };
}

/** Exports a U-Net with seeded random weights into `dir` (models dir: `dir/models`). */
export function exportUnet(dir: string, patchZyx: Vec3, model: { config?: string; unetJson?: string }): ExportedUnet {
  const args = [TORCH_SCRIPT, "export", "--out", dir, "--patch", ...patchZyx.map(String)];
  if (model.config !== undefined) args.push("--config", model.config);
  if (model.unetJson !== undefined) args.push("--unet-json", model.unetJson);
  const out = execFileSync(PYTHON, args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  return JSON.parse(out.trim().split("\n").at(-1)!) as ExportedUnet;
}

/**
 * Writes a uint8 EM-like volume (demo mitochondria, a different seed per chunk) as a raw
 * precomputed volume at `dir`, one chunk at a time so that no process holds the whole volume.
 * `onChunk` sees each chunk (e.g. to also write a raw file for Python).
 */
export async function writeImageVolume(dir: string, shapeZyx: Vec3, chunkZyx: Vec3, onChunk?: (indexZyx: Vec3, data: Uint8Array) => void): Promise<void> {
  const store = await FileStore.open(dir, [dirname(dir)]);
  const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];
  const writer = await PrecomputedWriter.create(store, {
    type: "image",
    dataType: "uint8",
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: xyz(shapeZyx), resolutionXyz: [5, 5, 5], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: xyz(chunkZyx), encoding: "raw" }],
  });
  const n = shapeZyx.map((s, d) => Math.ceil(s / chunkZyx[d]!));
  let seed = 1;
  for (let z = 0; z < n[0]!; z++) {
    for (let y = 0; y < n[1]!; y++) {
      for (let x = 0; x < n[2]!; x++) {
        const shape = [z, y, x].map((i, d) => Math.min(chunkZyx[d]!, shapeZyx[d]! - i * chunkZyx[d]!)) as Vec3;
        const image = makeDemoVolume(shape, seed++, 4).image;
        await writer.writeChunk(0, [z, y, x], image);
        onChunk?.([z, y, x], image);
      }
    }
  }
}

function packageVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(join(ROOT, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "?";
  }
}

export function gitCommit(): string {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
  } catch {
    return "?";
  }
}

export interface Machine {
  cpu: string;
  logicalCpus: number;
  mhz: number;
  /** FP32 FLOPs per cycle per core assumed from the vector width and FMA units. */
  flopsPerCycle: number;
  peakBasis: string;
  node: string;
  onnxruntimeNode: string;
  loadAverage: number[];
}

/**
 * The CPU from /proc/cpuinfo and an ESTIMATE of its FP32 peak: cores x clock x FLOPs/cycle, where
 * FLOPs/cycle = 2 (FMA) x lanes x FMA units. AMD Zen 4 (family 25 with AVX-512) executes 512-bit
 * FMAs on two 256-bit units, so it counts as 2 x 8 x 2 = 32; Zen 5 and Intel server cores with
 * AVX-512 have two 512-bit units (64); AVX2 + FMA cores have two 256-bit units (32). The clock is the
 * one /proc/cpuinfo reports (boost clocks may be higher, so a share of this peak can overstate).
 */
export function machine(): Machine {
  let text = "";
  try {
    text = readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    // not Linux: fall back to os.cpus()
  }
  const field = (k: string) => new RegExp(`^${k}\\s*:\\s*(.*)$`, "m").exec(text)?.[1]?.trim();
  const flags = new Set((field("flags") ?? "").split(/\s+/));
  const vendor = field("vendor_id") ?? "";
  const family = Number(field("cpu family") ?? "0");
  const mhz = Number(field("cpu MHz") ?? os.cpus()[0]?.speed ?? 0);
  let flopsPerCycle: number;
  let basis: string;
  if (flags.has("avx512f") && vendor === "AuthenticAMD" && family === 25) {
    flopsPerCycle = 32;
    basis = "AMD Zen 4 (family 25, AVX-512 on 2x256-bit FMA units): 2 FMA units x 8 fp32 lanes x 2";
  } else if (flags.has("avx512f")) {
    flopsPerCycle = 64;
    basis = "AVX-512 with 2x512-bit FMA units: 2 x 16 fp32 lanes x 2";
  } else if (flags.has("avx2") && flags.has("fma")) {
    flopsPerCycle = 32;
    basis = "AVX2 + FMA, 2x256-bit FMA units: 2 x 8 fp32 lanes x 2";
  } else {
    flopsPerCycle = 8;
    basis = "SSE: 4 fp32 lanes x 2 (no FMA)";
  }
  const model = field("model name") ?? os.cpus()[0]?.model ?? "?";
  return {
    cpu: `${model} (${vendor} family ${family} model ${field("model") ?? "?"})`,
    logicalCpus: os.cpus().length,
    mhz,
    flopsPerCycle,
    peakBasis: basis,
    node: process.version,
    onnxruntimeNode: packageVersion("onnxruntime-node"),
    loadAverage: os.loadavg(),
  };
}

/** Estimated FP32 peak of `cores` cores in GFLOP/s. */
export function peakGflops(m: Machine, cores: number): number {
  return (cores * m.flopsPerCycle * m.mhz) / 1000;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
