// Shared by the precomputed and codec tests: runs the checked-in Python fixture generator
// (tensorstore + compressed-segmentation) and loads the raw arrays it writes.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { viewBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { prng } from "#src/demo_volume.ts";

export const PYTHON = path.resolve("models/.venv/bin/python");
export const GENERATOR = path.resolve("models/spatialsam/fixtures/volumes_precomputed.py");

/** Runs `volumes_precomputed.py <args>`; throws with Python's stderr on failure. */
export function runGenerator(...args: string[]): void {
  execFileSync(PYTHON, [GENERATOR, ...args], { stdio: ["ignore", "ignore", "pipe"], timeout: 120_000 });
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `spatial-sam-${prefix}-`));
}

export function readArray(file: string, dtype: DataType): TypedArray {
  return viewBytes(dtype, new Uint8Array(readFileSync(file)));
}

export function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, "utf8")) as T;
}

/** A deterministic PRNG (the demo volume's mulberry32) so TS-made test data is reproducible. */
export const rng = prng;

/** A uniformly random uint64 from two 32-bit draws. */
export function randomU64(next: () => number): bigint {
  return (BigInt(Math.floor(next() * 2 ** 32)) << 32n) | BigInt(Math.floor(next() * 2 ** 32));
}

/**
 * Blob-like uint64 labels of C-order `shapeZyx`: each voxel takes the id of its nearest of `seeds`
 * random points, ids drawn from `ids` (so runs, boundaries and few values per block, like EM labels).
 */
export function blobLabels(shapeZyx: [number, number, number], seeds: number, ids: bigint[], seed: number): BigUint64Array {
  const next = rng(seed);
  const pts = Array.from({ length: seeds }, () => [next() * shapeZyx[0], next() * shapeZyx[1], next() * shapeZyx[2]] as const);
  const out = new BigUint64Array(shapeZyx[0] * shapeZyx[1] * shapeZyx[2]);
  let i = 0;
  for (let z = 0; z < shapeZyx[0]; z++) {
    for (let y = 0; y < shapeZyx[1]; y++) {
      for (let x = 0; x < shapeZyx[2]; x++) {
        let best = 0;
        let bestD = Infinity;
        for (let s = 0; s < seeds; s++) {
          const p = pts[s]!;
          const d = (p[0] - z) ** 2 + (p[1] - y) ** 2 + (p[2] - x) ** 2;
          if (d < bestD) {
            bestD = d;
            best = s;
          }
        }
        out[i++] = ids[best % ids.length]!;
      }
    }
  }
  return out;
}
