// Runs the checked-in golden-fixture generator (models/spatialsam/fixtures/metrics_golden.py)
// into a temp folder and loads its cases: label volumes plus values from scikit-image, scipy and
// a Python COCO-style AP.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { viewBytes } from "#src/dtype.ts";
import type { Vec3 } from "#src/volume/types.ts";

export interface GoldenObject {
  gtId: number;
  gtVoxels: number;
  iou: number;
  matched: boolean;
  predId?: number;
  predComponents?: number;
  zFirst: number;
  zLast: number;
  flickerSlices: number;
}

export interface GoldenApScores {
  ap: number | null;
  ap50: number | null;
  ap75: number | null;
  gtObjects: number;
}

export interface GoldenCase {
  name: string;
  shape: Vec3;
  gt: TypedArray;
  pred: TypedArray;
  gtDtype: DataType;
  predDtype: DataType;
  mask: Uint8Array | undefined;
  connectivity: 6 | 26;
  gtInstances: "connected-components" | "labels";
  predInstances: "connected-components" | "labels";
  expected: {
    voxels: number;
    semantic: { tp: number; fp: number; fn: number; tn: number };
    gtCount: number;
    predCount: number;
    gtComponentSizes: number[] | null;
    vi: { split: number; merge: number };
    adaptedRand: { error: number; precision: number; recall: number };
    ap: Record<"all" | "small" | "medium" | "large", GoldenApScores>;
    matched: number;
    oneComponentShare: number | null;
    flickerObjects: number;
    flickerSlices: number;
    objects: GoldenObject[];
  };
}

export const PYTHON = "models/.venv/bin/python";
export const GENERATOR = "models/spatialsam/fixtures/metrics_golden.py";

/** Generates the fixtures into a new temp folder; returns the folder. */
export function generateGolden(): string {
  const dir = mkdtempSync(join(tmpdir(), "metrics-golden-"));
  execFileSync(PYTHON, [GENERATOR, dir], { stdio: "pipe" });
  return dir;
}

function readRaw(file: string, dtype: DataType): TypedArray {
  const buf = readFileSync(file);
  return viewBytes(dtype, new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength));
}

export function loadGolden(dir: string): GoldenCase[] {
  const names = JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as string[];
  return names.map((name) => {
    const d = join(dir, name);
    const c = JSON.parse(readFileSync(join(d, "case.json"), "utf8")) as Omit<GoldenCase, "name" | "gt" | "pred" | "mask"> & { mask: boolean };
    return {
      ...c,
      name,
      gt: readRaw(join(d, "gt.bin"), c.gtDtype),
      pred: readRaw(join(d, "pred.bin"), c.predDtype),
      mask: existsSync(join(d, "mask.bin")) ? (readRaw(join(d, "mask.bin"), "uint8") as Uint8Array) : undefined,
    };
  });
}

/** Copies box [offset, offset + shape) out of a dense C-order volume. */
export function cutBox(data: TypedArray, volumeShape: Vec3, offsetZyx: Vec3, shapeZyx: Vec3): TypedArray {
  const [, Y, X] = volumeShape;
  const [oz, oy, ox] = offsetZyx;
  const [bz, by, bx] = shapeZyx;
  const out = new (data.constructor as new (n: number) => TypedArray)(bz * by * bx);
  for (let z = 0; z < bz; z++)
    for (let y = 0; y < by; y++) {
      const src = ((oz + z) * Y + oy + y) * X + ox;
      (out as Uint8Array).set((data as Uint8Array).subarray(src, src + bx), (z * by + y) * bx);
    }
  return out;
}
