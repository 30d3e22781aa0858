// Writes a dense C-order array as a Neuroglancer precomputed volume (raw encoding), the quickest
// way for a test to turn a fixture array into a real volume that openVolume reads.
import { join } from "node:path";
import { allocate, type DataType, type TypedArray } from "#src/dtype.ts";
import { copyBox } from "#src/geometry.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";

export interface PrecomputedArrayOptions {
  /** Default "image". */
  type?: "image" | "segmentation";
  /** Default one chunk holding the whole array. */
  chunkZyx?: Vec3;
  /** The volume's voxel_offset (zyx); default 0. */
  offsetZyx?: Vec3;
}

/** Writes `data` (shape `shapeZyx`) under `dir/name`; returns its `precomputed://file://` URL. */
export async function writePrecomputedArray(
  dir: string,
  name: string,
  dtype: DataType,
  data: TypedArray,
  shapeZyx: Vec3,
  voxelSizeNm: Vec3 = [5, 5, 5],
  options: PrecomputedArrayOptions = {},
): Promise<string> {
  const path = join(dir, name);
  const store = await FileStore.open(path, [dir]);
  const [Z, Y, X] = shapeZyx;
  const chunk = options.chunkZyx ?? shapeZyx;
  const offset = options.offsetZyx ?? [0, 0, 0];
  const writer = await PrecomputedWriter.create(store, {
    type: options.type ?? "image",
    dataType: dtype,
    numChannels: 1,
    scales: [
      {
        key: "s0",
        sizeXyz: [X, Y, Z],
        resolutionXyz: [voxelSizeNm[2], voxelSizeNm[1], voxelSizeNm[0]],
        voxelOffsetXyz: [offset[2], offset[1], offset[0]],
        chunkSizeXyz: [chunk[2], chunk[1], chunk[0]],
        encoding: "raw",
      },
    ],
  });
  for (let cz = 0; cz * chunk[0] < Z; cz++)
    for (let cy = 0; cy * chunk[1] < Y; cy++)
      for (let cx = 0; cx * chunk[2] < X; cx++) {
        const at: Vec3 = [cz * chunk[0], cy * chunk[1], cx * chunk[2]];
        const shape = [0, 1, 2].map((d) => Math.min(chunk[d]!, shapeZyx[d]! - at[d]!)) as Vec3;
        const part = allocate(dtype, shape[0] * shape[1] * shape[2]);
        copyBox(data, shapeZyx, at, part, shape, [0, 0, 0], shape);
        await writer.writeChunk(0, [cz, cy, cx], part);
      }
  return `precomputed://file://${path}`;
}
