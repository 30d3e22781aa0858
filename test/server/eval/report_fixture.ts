// Small real Zarr volumes for the report tests: a semantic ground truth with three boxes, a
// prediction that shifts one, finds one exactly, misses one and adds a false blob, an EM-like
// uint8 image, and a cropped prediction and image (for the shape-mismatch errors). The dense arrays
// come back too, so tests derive expected values independently of the code under test.

import { join } from "node:path";
import type { DataType, TypedArray } from "#src/dtype.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { FileStore } from "#server/volume/stores.ts";
import { ZarrWriter } from "#server/volume/zarr_writer.ts";

export const SHAPE: Vec3 = [8, 24, 32];
export const VOXEL_NM: Vec3 = [10, 5, 5];
const CHUNK: Vec3 = [4, 16, 16];

export const index = (z: number, y: number, x: number) => (z * SHAPE[1] + y) * SHAPE[2] + x;

type Box = [z0: number, z1: number, y0: number, y1: number, x0: number, x1: number];

function paint(a: Uint8Array, [z0, z1, y0, y1, x0, x1]: Box, v: number) {
  for (let z = z0; z < z1; z++) for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) a[index(z, y, x)] = v;
}

export interface ReportFixture {
  dir: string;
  gt: Uint8Array;
  pred: Uint8Array;
  image: Uint8Array;
  mask: Uint8Array;
  url: { gt: string; mask: string; pred: string; image: string; predCropped: string; imageCropped: string };
}

async function write(target: string, dir: string, dtype: DataType, shape: Vec3, data: TypedArray) {
  const w = await ZarrWriter.create(await FileStore.open(target, [dir]), {
    zarrFormat: 2,
    dtype,
    levels: [{ shapeZyx: shape, chunkShapeZyx: CHUNK, voxelSizeNm: VOXEL_NM }],
  });
  await w.writeLevel(0, data);
}

export async function writeReportFixture(dir: string): Promise<ReportFixture> {
  const n = SHAPE[0] * SHAPE[1] * SHAPE[2];
  const gt = new Uint8Array(n);
  const pred = new Uint8Array(n);
  // Object A (all slices), predicted shifted by 2 voxels in x: TP in the middle, FN left, FP right.
  paint(gt, [0, 8, 2, 10, 2, 10], 1);
  paint(pred, [0, 8, 2, 10, 4, 12], 1);
  // Object B, predicted exactly.
  paint(gt, [2, 6, 14, 20, 20, 28], 1);
  paint(pred, [2, 6, 14, 20, 20, 28], 1);
  // Object C, missed.
  paint(gt, [6, 8, 18, 22, 4, 8], 1);
  // A false blob.
  paint(pred, [0, 2, 14, 18, 4, 8], 1);
  const image = new Uint8Array(n);
  for (let z = 0; z < SHAPE[0]; z++)
    for (let y = 0; y < SHAPE[1]; y++) for (let x = 0; x < SHAPE[2]; x++) image[index(z, y, x)] = 40 + ((x * 5 + y * 3 + z * 7) % 160);

  // Scored everywhere but the first three columns (x < 3), which hold part of object A's misses.
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = i % SHAPE[2] < 3 ? 0 : 1;

  const path = (name: string) => join(dir, name);
  await write(path("gt.zarr"), dir, "uint8", SHAPE, gt);
  await write(path("pred.zarr"), dir, "uint8", SHAPE, pred);
  await write(path("image.zarr"), dir, "uint8", SHAPE, image);
  await write(path("mask.zarr"), dir, "uint8", SHAPE, mask);
  const cropped: Vec3 = [SHAPE[0], SHAPE[1], SHAPE[2] - 4];
  const predCropped = new Uint8Array(cropped[0] * cropped[1] * cropped[2]);
  await write(path("pred_cropped.zarr"), dir, "uint8", cropped, predCropped);
  await write(path("image_cropped.zarr"), dir, "uint8", cropped, predCropped);
  return {
    dir,
    gt,
    pred,
    image,
    mask,
    url: {
      mask: `zarr://${path("mask.zarr")}`,
      gt: `zarr://${path("gt.zarr")}`,
      pred: `zarr://${path("pred.zarr")}`,
      image: `zarr://${path("image.zarr")}`,
      predCropped: `zarr://${path("pred_cropped.zarr")}`,
      imageCropped: `zarr://${path("image_cropped.zarr")}`,
    },
  };
}

/** Per-slice tp/fp/fn straight from the dense arrays. */
export function denseSliceCounts(gt: Uint8Array, pred: Uint8Array, mask?: Uint8Array): { tp: number; fp: number; fn: number }[] {
  const out = [];
  for (let z = 0; z < SHAPE[0]; z++) {
    const c = { tp: 0, fp: 0, fn: 0 };
    for (let i = index(z, 0, 0); i < index(z + 1, 0, 0); i++) {
      if (mask !== undefined && !mask[i]) continue;
      if (gt[i] && pred[i]) c.tp++;
      else if (gt[i]) c.fn++;
      else if (pred[i]) c.fp++;
    }
    out.push(c);
  }
  return out;
}
