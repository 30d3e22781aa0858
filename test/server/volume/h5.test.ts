// The h5:// driver against datasets written by h5py (chunked + gzip, contiguous, several dtypes).

import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectError } from "#test/helpers/expect_error.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { crop, expectSameArray, makeStackFixtures } from "#test/helpers/volumes_stacks.ts";

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = makeStackFixtures());
});
afterAll(() => cleanup());

const SHAPE: Vec3 = [7, 33, 47];
const open = (file: string, fragment?: string, query = "", roots = [dir]) =>
  openVolume(`h5://file://${path.join(dir, file)}${query}${fragment === undefined ? "" : `#${fragment}`}`, { roots, cache: new ChunkCache({ maxBytes: 2 ** 24 }) });

describe("HDF5 datasets", () => {
  const cases: [string, string, string, Vec3, Vec3, string][] = [
    ["/raw/u8_gzip", "raw_u8_gzip", "uint8", [2, 16, 16], [40, 4, 5], "image"],
    ["/raw/u16_contig", "raw_u16_contig", "uint16", [7, 33, 47], [40, 4, 5], "image"],
    ["/labels/u32", "labels_u32", "uint32", [3, 8, 32], [1, 1, 1], "segmentation"],
    ["/labels/u64", "labels_u64", "uint64", [4, 16, 16], [1, 1, 1], "segmentation"],
    ["/f32", "f32", "float32", [7, 33, 47], [1, 1, 1], "image"],
    ["/i8", "i8", "int8", [7, 33, 47], [1, 1, 1], "image"],
    ["/u16_bigendian", "u16_bigendian", "uint16", [7, 11, 47], [1, 1, 1], "image"],
    ["/czyx", "czyx", "uint8", [4, 33, 47], [1, 1, 1], "image"],
  ];
  it.each(cases)("%s reads exactly", async (ds, npy, dtype, chunk, voxel, kind) => {
    const expected = readNpy(path.join(dir, "h5", `${npy}.npy`));
    const vol = await open("h5/volumes.h5", ds);
    expect(vol.metadata).toMatchObject({ format: "hdf5", dtype, kind });
    const level = vol.metadata.scales[0]!;
    expect(level.shapeZyx).toEqual(SHAPE);
    expect(level.chunkShapeZyx).toEqual(chunk);
    for (let d = 0; d < 3; d++) expect(level.voxelSizeNm[d]).toBeCloseTo(voxel[d]!, 3);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
    const box = { offsetZyx: [1, 7, 13] as Vec3, shapeZyx: [5, 19, 30] as Vec3 };
    expectSameArray(await vol.read(box, 0), crop(expected.data, SHAPE, box.offsetZyx, box.shapeZyx));
    await vol.close();
  });

  it("keeps uint64 label ids above 2^53 exact", async () => {
    const vol = await open("h5/volumes.h5", "labels/u64");
    const row = (await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [1, 1, 4] }, 0)) as BigUint64Array;
    expect([...row]).toEqual([2n ** 64n - 1n, 2n ** 53n + 1n, 0n, 1n]);
  });

  it("reads a 2-D dataset as one slice, and takes voxel_size_nm from the URL", async () => {
    const vol = await open("h5/volumes.h5", "/plane", "?voxel_size_nm=30,3,3");
    expect(vol.metadata.scales[0]!.shapeZyx).toEqual([1, 33, 47]);
    expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([30, 3, 3]);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [1, 33, 47] }, 0), readNpy(path.join(dir, "h5", "plane.npy")).data);
  });
});

describe("bad HDF5 input", () => {
  it("a missing dataset is NotFound naming it; a group or no fragment is InvalidArgument", async () => {
    await expectError(open("h5/volumes.h5", "/nope"), "NotFound", /volumes\.h5#\/nope$/);
    await expectError(open("h5/volumes.h5", "/raw/nope/deeper"), "NotFound", /#\/raw\/nope\/deeper$/);
    await expectError(open("h5/volumes.h5", "/raw"), "InvalidArgument", /#\/raw$/, /group.*u16_contig, u8_gzip/);
    await expectError(open("h5/volumes.h5"), "InvalidArgument", /^url$/, /dataset after "#"/);
    await expectError(open("h5/volumes.h5", "/raw%ZZ"), "InvalidArgument", /^url$/, /percent-encoding/);
  });

  it("datasets that are not 2-D/3-D numbers are refused naming them", async () => {
    await expectError(open("h5/volumes.h5", "/name"), "Unimplemented", /#\/name$/, /string/);
    await expectError(open("h5/volumes.h5", "/line"), "InvalidArgument", /#\/line$/, /1 dimensions/);
  });

  it("corrupt, truncated and non-HDF5 files are DataCorruption naming the file", async () => {
    for (const f of ["corrupt.h5", "truncated.h5", "not_h5.h5"]) {
      await expectError(open(`bad/${f}`, "/raw/u8_gzip"), "DataCorruption", new RegExp(`bad/${f.replace(".", "\\.")}$`), /not a readable HDF5 file/);
    }
  });

  it("a missing file is NotFound and a file outside the roots is PermissionDenied", async () => {
    await expectError(open("h5/absent.h5", "/x"), "NotFound", /absent\.h5$/);
    await expectError(open("h5/volumes.h5", "/f32", "", [path.join(dir, "png8")]), "PermissionDenied", /volumes\.h5/);
    await expectError(
      openVolume(`h5://file://${dir}/png8/../h5/volumes.h5#/f32`, { roots: [path.join(dir, "png8")] }),
      "PermissionDenied",
      /volumes\.h5/,
    );
  });
});
