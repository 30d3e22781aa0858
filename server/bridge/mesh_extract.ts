// The surface of one segment inside one block of a label volume: a binary mask of the segment's
// voxels, marching cubes over it (npm `isosurface`, Paul Bourke's tables, level 0.5 between voxel
// centres), vertices welded and placed in nm. Blocks that share their boundary samples give
// surfaces that meet exactly, so per-chunk fragments form one closed mesh.

import isosurface from "isosurface";
import type { TypedArray } from "#src/dtype.ts";
import { copyBox, intersectBoxes } from "#src/geometry.ts";
import type { TriangleMesh } from "#src/mesh/legacy_mesh.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";

export const EMPTY_MESH: TriangleMesh = { positionsXyz: new Float32Array(0), indices: new Uint32Array(0) };

/**
 * 1 where `labels` (the voxels of `labelsBox`, C-order zyx) equal `segment`, 0 elsewhere, laid out
 * over `samplesBox`, whose samples outside `labelsBox` are 0 (outside the volume is background).
 * Undefined when no voxel is the segment.
 */
export function segmentMask(labels: TypedArray, labelsBox: Box3, samplesBox: Box3, segment: bigint): Uint8Array | undefined {
  const n = labels.length;
  const hits = new Uint8Array(n);
  let count = 0;
  if (labels instanceof BigUint64Array || labels instanceof BigInt64Array) {
    for (let i = 0; i < n; i++) {
      if (labels[i] === segment) {
        hits[i] = 1;
        count++;
      }
    }
  } else {
    // An id beyond the dtype's range matches nothing (-1 is no unsigned label).
    const want = segment <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(segment) : -1;
    for (let i = 0; i < n; i++) {
      if (labels[i] === want) {
        hits[i] = 1;
        count++;
      }
    }
  }
  const inside = intersectBoxes(labelsBox, samplesBox);
  if (count === 0 || inside === undefined) return undefined;
  const mask = new Uint8Array(samplesBox.shapeZyx[0] * samplesBox.shapeZyx[1] * samplesBox.shapeZyx[2]);
  const from = [0, 1, 2].map((d) => inside.offsetZyx[d]! - labelsBox.offsetZyx[d]!) as Vec3;
  const to = [0, 1, 2].map((d) => inside.offsetZyx[d]! - samplesBox.offsetZyx[d]!) as Vec3;
  copyBox(hits, labelsBox.shapeZyx, from, mask, samplesBox.shapeZyx, to, inside.shapeZyx);
  return mask;
}

/**
 * The part of `mask` that can produce triangles: the bounding box of its 1s grown by one sample
 * (cubes with no 1 among their corners are empty), within `box`. Marching cubes then walks the
 * segment's extent instead of the whole block; vertices are the same, since positions are global.
 */
function cropToSegment(mask: Uint8Array, box: Box3): { mask: Uint8Array; box: Box3 } | undefined {
  const [nz, ny, nx] = box.shapeZyx;
  const lo: Vec3 = [nz, ny, nx];
  const hi: Vec3 = [-1, -1, -1];
  for (let z = 0, i = 0; z < nz; z++)
    for (let y = 0; y < ny; y++)
      for (let x = 0; x < nx; x++, i++) {
        if (mask[i] === 0) continue;
        if (z < lo[0]) lo[0] = z;
        if (z > hi[0]) hi[0] = z;
        if (y < lo[1]) lo[1] = y;
        if (y > hi[1]) hi[1] = y;
        if (x < lo[2]) lo[2] = x;
        if (x > hi[2]) hi[2] = x;
      }
  if (hi[0] < 0) return undefined;
  const from = [0, 1, 2].map((d) => Math.max(0, lo[d]! - 1)) as Vec3;
  const shape = [0, 1, 2].map((d) => Math.min(box.shapeZyx[d]! - 1, hi[d]! + 1) - from[d]! + 1) as Vec3;
  const out = new Uint8Array(shape[0] * shape[1] * shape[2]);
  copyBox(mask, box.shapeZyx, from, out, shape, [0, 0, 0], shape);
  return { mask: out, box: { offsetZyx: [0, 1, 2].map((d) => box.offsetZyx[d]! + from[d]!) as Vec3, shapeZyx: shape } };
}

/**
 * Marching cubes of `mask` (the samples of `samplesBox`, voxel coordinates of a level whose voxel
 * size is `voxelSizeNm`, zyx) at level 0.5: one cube per 2x2x2 samples, so the cubes cover
 * [offset, offset + shape - 1) by their lower corners. Vertices are in nm with voxel v's centre at
 * (v + 0.5) * voxel size (Neuroglancer's precomputed voxel v spans [v, v + 1)); triangles wind
 * counter-clockwise seen from outside (outward normals by the right-hand rule).
 */
export function maskSurface(mask: Uint8Array, samplesBox: Box3, voxelSizeNm: Vec3): TriangleMesh {
  const crop = cropToSegment(mask, samplesBox);
  if (crop === undefined) return EMPTY_MESH;
  const [nz, ny, nx] = crop.box.shapeZyx;
  if (nz < 2 || ny < 2 || nx < 2) return EMPTY_MESH;
  const { positions, cells } = isosurface.marchingCubes([nx, ny, nz], (x, y, z) => crop.mask[(z * ny + y) * nx + x]! - 0.5);
  // Each cube emits its own vertices. Every vertex is the midpoint of a grid edge, so doubled
  // coordinates are integers: an exact key for welding the copies into one shared vertex.
  const [W, H] = [2 * nx, 2 * ny];
  const welded = new Map<number, number>();
  const remap = new Uint32Array(positions.length);
  const xyz: number[] = [];
  const originXyz = [crop.box.offsetZyx[2] + 0.5, crop.box.offsetZyx[1] + 0.5, crop.box.offsetZyx[0] + 0.5];
  const nmXyz = [voxelSizeNm[2], voxelSizeNm[1], voxelSizeNm[0]];
  positions.forEach((p, i) => {
    const key = (Math.round(2 * p[2]!) * H + Math.round(2 * p[1]!)) * W + Math.round(2 * p[0]!);
    let at = welded.get(key);
    if (at === undefined) {
      at = welded.size;
      welded.set(key, at);
      for (let d = 0; d < 3; d++) xyz.push((originXyz[d]! + p[d]!) * nmXyz[d]!);
    }
    remap[i] = at;
  });
  const indices = new Uint32Array(3 * cells.length);
  cells.forEach((c, t) => {
    // Bourke's tables wind triangles clockwise seen from the inside-is-positive side: swap two
    // corners so normals point out of the segment.
    indices[3 * t] = remap[c[0]!]!;
    indices[3 * t + 1] = remap[c[2]!]!;
    indices[3 * t + 2] = remap[c[1]!]!;
  });
  return { positionsXyz: Float32Array.from(xyz), indices };
}
