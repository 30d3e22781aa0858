// Writes a dense C-order array as a one-chunk Neuroglancer precomputed volume (raw encoding), the
// quickest way for a test to turn a fixture array into a real volume that openVolume reads.
import { join } from "node:path";
import type { DataType, TypedArray } from "#src/dtype.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";

/** Writes `data` (shape `shapeZyx`) under `dir/name`; returns its `precomputed://file://` URL. */
export async function writePrecomputedArray(
  dir: string,
  name: string,
  dtype: DataType,
  data: TypedArray,
  shapeZyx: Vec3,
  voxelSizeNm: Vec3 = [5, 5, 5],
): Promise<string> {
  const path = join(dir, name);
  const store = await FileStore.open(path, [dir]);
  const [Z, Y, X] = shapeZyx;
  const writer = await PrecomputedWriter.create(store, {
    type: "image",
    dataType: dtype,
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: [X, Y, Z], resolutionXyz: [voxelSizeNm[2], voxelSizeNm[1], voxelSizeNm[0]], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [X, Y, Z], encoding: "raw" }],
  });
  await writer.writeChunk(0, [0, 0, 0], data);
  return `precomputed://file://${path}`;
}
