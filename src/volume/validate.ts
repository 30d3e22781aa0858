// Sanity limits every format driver's metadata must meet before any chunk is allocated, so a
// corrupt or hostile header (2^40-voxel chunks, negative sizes) fails with a named field, not OOM.

import { DATA_TYPES, isDataType } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import { product } from "#src/geometry.ts";
import type { Vec3, VolumeMetadata } from "#src/volume/types.ts";

/** A chunk is decoded whole in memory: 2^28 voxels (2 GiB of uint64) is already far beyond any real format. */
export const MAX_CHUNK_VOXELS = 2 ** 28;
/** Largest level extent we index (voxel counts must stay exact in a double). */
export const MAX_LEVEL_VOXELS = 2 ** 50;

function checkVec(v: unknown, field: string, min: number): asserts v is Vec3 {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= min)) {
    throw invalidArgument(field, `expected 3 integers >= ${min}, got ${JSON.stringify(v)}`);
  }
}

/**
 * Throws InvalidArgument naming `${file}: scales[i].<field>` when metadata is out of bounds.
 * `file` is the metadata file or URL the values came from.
 */
export function validateMetadata(meta: VolumeMetadata, file: string): void {
  if (!isDataType(meta.dtype)) throw invalidArgument(`${file}: dtype`, `unsupported data type ${JSON.stringify(meta.dtype)}`);
  const wantBigInt = DATA_TYPES[meta.dtype].isBigInt;
  if (typeof meta.fillValue !== (wantBigInt ? "bigint" : "number")) {
    throw invalidArgument(`${file}: fill_value`, `${String(meta.fillValue)} is not a valid ${meta.dtype} value`);
  }
  if (meta.scales.length === 0) throw invalidArgument(`${file}: scales`, "a volume needs at least one scale level");
  meta.scales.forEach((s, i) => {
    const f = `${file}: scales[${i}]`;
    checkVec(s.shapeZyx, `${f}.shape`, 0);
    checkVec(s.chunkShapeZyx, `${f}.chunk_shape`, 1);
    if (!Array.isArray(s.offsetZyx) || s.offsetZyx.length !== 3 || !s.offsetZyx.every((x) => Number.isSafeInteger(x))) {
      throw invalidArgument(`${f}.offset`, `expected 3 integers, got ${JSON.stringify(s.offsetZyx)}`);
    }
    if (!Array.isArray(s.voxelSizeNm) || s.voxelSizeNm.length !== 3 || !s.voxelSizeNm.every((x) => Number.isFinite(x) && x > 0)) {
      throw invalidArgument(`${f}.voxel_size`, `expected 3 positive numbers, got ${JSON.stringify(s.voxelSizeNm)}`);
    }
    if (product(s.chunkShapeZyx) > MAX_CHUNK_VOXELS) {
      throw invalidArgument(`${f}.chunk_shape`, `[${s.chunkShapeZyx.join(", ")}] is ${product(s.chunkShapeZyx)} voxels, over the limit of ${MAX_CHUNK_VOXELS}`);
    }
    if (product(s.shapeZyx) > MAX_LEVEL_VOXELS) {
      throw invalidArgument(`${f}.shape`, `[${s.shapeZyx.join(", ")}] is over the limit of ${MAX_LEVEL_VOXELS} voxels`);
    }
  });
}
