// Metadata sanity limits shared by every format driver.

import { describe, expect, it } from "vitest";
import type { VolumeMetadata } from "#src/volume/types.ts";
import { validateMetadata } from "#src/volume/validate.ts";

const good = (): VolumeMetadata => ({
  format: "test",
  dtype: "uint16",
  fillValue: 0,
  kind: "image",
  scales: [{ index: 0, key: "s0", shapeZyx: [10, 20, 30], chunkShapeZyx: [4, 8, 8], voxelSizeNm: [8, 4, 4], offsetZyx: [-5, 0, 3] }],
});

describe("validateMetadata", () => {
  it("accepts a sane volume, including negative offsets", () => {
    expect(() => validateMetadata(good(), "f.json")).not.toThrow();
  });
  it.each<[string, (m: VolumeMetadata) => void, string]>([
    ["an unknown dtype", (m) => (m.dtype = "complex64" as never), "f.json: dtype"],
    ["a number fill value for uint64", (m) => ((m.dtype = "uint64"), (m.fillValue = 0)), "f.json: fill_value"],
    ["a bigint fill value for uint16", (m) => (m.fillValue = 1n), "f.json: fill_value"],
    ["no scales", (m) => (m.scales = []), "f.json: scales"],
    ["a zero chunk dimension", (m) => (m.scales[0]!.chunkShapeZyx = [0, 8, 8]), "f.json: scales[0].chunk_shape"],
    ["a 2^40-voxel chunk", (m) => (m.scales[0]!.chunkShapeZyx = [1024, 1024, 1048576]), "f.json: scales[0].chunk_shape"],
    ["a negative shape", (m) => (m.scales[0]!.shapeZyx = [10, -1, 30]), "f.json: scales[0].shape"],
    ["a 2^60-voxel level", (m) => (m.scales[0]!.shapeZyx = [2 ** 20, 2 ** 20, 2 ** 20]), "f.json: scales[0].shape"],
    ["a fractional offset", (m) => (m.scales[0]!.offsetZyx = [0.5, 0, 0]), "f.json: scales[0].offset"],
    ["a zero voxel size", (m) => (m.scales[0]!.voxelSizeNm = [0, 4, 4]), "f.json: scales[0].voxel_size"],
  ])("refuses %s naming %s", (_, edit, field) => {
    const m = good();
    edit(m);
    expect(() => validateMetadata(m, "f.json")).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field }));
  });
});
