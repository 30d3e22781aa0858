// Micro-benchmark of the compressed_segmentation codec: encode/decode throughput (MB/s of raw
// labels) on a 256^3 label volume in 64^3 chunks with 8^3 blocks, uint64 and uint32, side by side
// with the compressed-segmentation Python package (C++) on the same labels.
// Run: nice node --import tsx test/bench/compressed_segmentation.bench.ts [side]

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { decodeCompressedSegmentation, encodeCompressedSegmentation } from "#src/codecs/compressed_segmentation.ts";
import type { LabelArray } from "#src/codecs/compressed_segmentation.ts";
import { asBytes } from "#src/dtype.ts";
import { copyBox } from "#src/geometry.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { randomU64, rng } from "#test/server/volume/precomputed_helpers.ts";

const SIDE = Number(process.argv[2] ?? 256);
const CHUNK = 64;
const BLOCK = 8;
const REPEATS = 3;

/**
 * Dense EM-like labels: a jittered-grid Voronoi tessellation (cells about 24 voxels across, like
 * neurites and mitochondria at 8 nm) with random uint64 ids, ids above 2^53 included.
 */
function labels(side: number): BigUint64Array {
  const cell = 24;
  const n = Math.ceil(side / cell);
  const next = rng(42);
  const seeds: { z: number; y: number; x: number; id: bigint }[] = [];
  for (let i = 0; i < n * n * n; i++) {
    const cz = Math.floor(i / (n * n));
    const cy = Math.floor(i / n) % n;
    const cx = i % n;
    seeds.push({ z: (cz + next()) * cell, y: (cy + next()) * cell, x: (cx + next()) * cell, id: next() < 0.3 ? 0n : randomU64(next) });
  }
  const out = new BigUint64Array(side * side * side);
  let i = 0;
  for (let z = 0; z < side; z++) {
    const cz = Math.floor(z / cell);
    for (let y = 0; y < side; y++) {
      const cy = Math.floor(y / cell);
      for (let x = 0; x < side; x++) {
        const cx = Math.floor(x / cell);
        let best = 0n;
        let bestD = Infinity;
        for (let dz = -1; dz <= 1; dz++) {
          for (let dy = -1; dy <= 1; dy++) {
            for (let dx = -1; dx <= 1; dx++) {
              const a = cz + dz;
              const b = cy + dy;
              const c = cx + dx;
              if (a < 0 || b < 0 || c < 0 || a >= n || b >= n || c >= n) continue;
              const s = seeds[(a * n + b) * n + c]!;
              const d = (s.z - z) ** 2 + (s.y - y) ** 2 + (s.x - x) ** 2;
              if (d < bestD) {
                bestD = d;
                best = s.id;
              }
            }
          }
        }
        out[i++] = best;
      }
    }
  }
  return out;
}

function chunksOf(data: LabelArray, side: number): LabelArray[] {
  const out: LabelArray[] = [];
  const shape: Vec3 = [CHUNK, CHUNK, CHUNK];
  for (let z = 0; z < side; z += CHUNK) {
    for (let y = 0; y < side; y += CHUNK) {
      for (let x = 0; x < side; x += CHUNK) {
        const c = new (data.constructor as { new (n: number): LabelArray })(CHUNK ** 3);
        copyBox(data, [side, side, side], [z, y, x], c, shape, [0, 0, 0], shape);
        out.push(c);
      }
    }
  }
  return out;
}

interface Row {
  impl: string;
  dtype: string;
  encodeMBs: number;
  decodeMBs: number;
  ratio: number;
}

function benchOurs(data: LabelArray, dtype: "uint32" | "uint64"): Row {
  const chunks = chunksOf(data, SIDE);
  const shape: Vec3 = [CHUNK, CHUNK, CHUNK];
  const block: Vec3 = [BLOCK, BLOCK, BLOCK];
  let enc = Infinity;
  let dec = Infinity;
  let encoded: Uint8Array[] = [];
  for (let r = 0; r < REPEATS; r++) {
    let t = performance.now();
    encoded = chunks.map((c) => encodeCompressedSegmentation(c, shape, block));
    enc = Math.min(enc, performance.now() - t);
    t = performance.now();
    for (const e of encoded) decodeCompressedSegmentation(e, dtype, shape, block, "bench");
    dec = Math.min(dec, performance.now() - t);
  }
  // One correctness check so a fast-but-wrong codec cannot report numbers.
  const back = decodeCompressedSegmentation(encoded[0]!, dtype, shape, block, "bench");
  if (!Buffer.from(asBytes(back)).equals(Buffer.from(asBytes(chunks[0]!)))) throw new Error("round trip mismatch");
  const mb = data.byteLength / 1e6;
  const size = encoded.reduce((a, e) => a + e.byteLength, 0);
  return { impl: "ours (TS)", dtype, encodeMBs: mb / (enc / 1000), decodeMBs: mb / (dec / 1000), ratio: data.byteLength / size };
}

function benchPackage(data: LabelArray, dtype: "uint32" | "uint64", dir: string): Row {
  const file = path.join(dir, `${dtype}.bin`);
  writeFileSync(file, asBytes(data));
  const out = execFileSync(path.resolve("models/.venv/bin/python"), [
    path.resolve("models/spatialsam/fixtures/volumes_precomputed.py"),
    "cseg-bench",
    file,
    dtype,
    String(SIDE),
    String(CHUNK),
    String(BLOCK),
  ]).toString();
  const r = JSON.parse(out) as { encodeS: number; decodeS: number; bytes: number };
  const mb = data.byteLength / 1e6;
  return { impl: "compressed-segmentation (C++)", dtype, encodeMBs: mb / r.encodeS, decodeMBs: mb / r.decodeS, ratio: data.byteLength / r.bytes };
}

const dir = mkdtempSync(path.join(tmpdir(), "cseg-bench-"));
try {
  const u64 = labels(SIDE);
  const u32 = Uint32Array.from(u64, (v) => Number(v & 0xffffffffn));
  const rows: Row[] = [];
  for (const [data, dtype] of [[u64, "uint64"], [u32, "uint32"]] as const) {
    rows.push(benchOurs(data, dtype));
    rows.push(benchPackage(data, dtype, dir));
  }
  console.log(`compressed_segmentation, ${SIDE}^3 labels in ${CHUNK}^3 chunks, ${BLOCK}^3 blocks, best of ${REPEATS}; MB/s of raw labels`);
  console.log(`| impl | dtype | encode MB/s | decode MB/s | compression ratio |`);
  console.log(`| --- | --- | ---: | ---: | ---: |`);
  for (const r of rows) {
    console.log(`| ${r.impl} | ${r.dtype} | ${r.encodeMBs.toFixed(0)} | ${r.decodeMBs.toFixed(0)} | ${r.ratio.toFixed(1)} |`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
