// A VolumeSource over a dense in-memory array, for evaluation tests that need no file format.

import type { DataType, TypedArray } from "#src/dtype.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";
import { cutBox } from "#test/src/metrics/golden.ts";

export function memoryVolume(
  data: TypedArray,
  shapeZyx: Vec3,
  dtype: DataType,
  options: { voxelSizeNm?: Vec3; chunkShapeZyx?: Vec3 } = {},
): VolumeSource & { reads: number } {
  return {
    reads: 0,
    metadata: {
      format: "memory",
      dtype,
      fillValue: 0,
      kind: "segmentation",
      scales: [
        {
          index: 0,
          key: "s0",
          shapeZyx,
          voxelSizeNm: options.voxelSizeNm ?? [5, 5, 5],
          chunkShapeZyx: options.chunkShapeZyx ?? [8, 16, 16],
          offsetZyx: [0, 0, 0],
        },
      ],
    },
    async read(box: Box3): Promise<TypedArray> {
      this.reads++;
      return cutBox(data, shapeZyx, box.offsetZyx, box.shapeZyx);
    },
    async close() {},
  };
}
