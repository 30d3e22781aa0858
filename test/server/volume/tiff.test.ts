// The tiff:// driver against files written by tifffile and Pillow (expected arrays from numpy).

import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectError } from "#test/helpers/expect_error.ts";
import type { Store, Vec3 } from "#src/volume/types.ts";
import { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { FileStore } from "#server/volume/stores.ts";
import { openTiffFile } from "#server/volume/tiff.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { startObjectServer } from "#test/helpers/object_server.ts";
import { crop, expectSameArray, makeStackFixtures } from "#test/helpers/volumes_stacks.ts";

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = makeStackFixtures());
});
afterAll(() => cleanup());

const SHAPE: Vec3 = [7, 33, 47];
const open = (rel: string, query = "") => openVolume(`tiff://file://${path.join(dir, rel)}${query}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 2 ** 24 }) });

describe("multi-page TIFF", () => {
  const cases: [string, string, Vec3][] = [];
  for (const t of ["u8", "u16", "f32"]) {
    cases.push([`${t}_raw`, t, [40, 4, 5]], [`${t}_deflate`, t, [40, 4, 5]], [`${t}_lzw`, t, [1, 1, 1]]);
  }
  cases.push(["u16_tiled_deflate", "u16", [40, 4, 5]], ["i16_raw", "i16", [1, 1, 1]], ["u32_raw", "u32", [1, 1, 1]], ["u8_ome.ome", "u8", [30, 6, 7]]);
  // No calibration in these files: the 1 nm default.
  cases.push(["u16_deflate_pred", "u16", [1, 1, 1]], ["f32_bigendian", "f32", [1, 1, 1]]);
  const dtypes: Record<string, string> = { u8: "uint8", u16: "uint16", f32: "float32", i16: "int16", u32: "uint32" };

  it.each(cases)("%s reads exactly, with its calibration", async (name, t, voxel) => {
    const expected = readNpy(path.join(dir, "tiff", `${name.replace(".ome", "")}.npy`));
    const vol = await open(`tiff/${name}.tif`);
    const level = vol.metadata.scales[0]!;
    expect(vol.metadata.format).toBe("tiff");
    expect(vol.metadata.dtype).toBe(dtypes[t]);
    expect(level.shapeZyx).toEqual(SHAPE);
    expect(level.chunkShapeZyx).toEqual([1, 33, 47]);
    for (let d = 0; d < 3; d++) expect(level.voxelSizeNm[d]).toBeCloseTo(voxel[d]!, 4);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
    const box = { offsetZyx: [2, 5, 9] as Vec3, shapeZyx: [3, 20, 31] as Vec3 };
    expectSameArray(await vol.read(box, 0), crop(expected.data, SHAPE, box.offsetZyx, box.shapeZyx));
    await vol.close();
  });

  it("takes voxel_size_nm=z,y,x from the URL over the file's calibration", async () => {
    const vol = await open("tiff/u8_raw.tif", "?voxel_size_nm=5,6,7.5");
    expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([5, 6, 7.5]);
    await expectError(open("tiff/u8_raw.tif", "?voxel_size_nm=5,0,1"), "InvalidArgument", /voxel_size_nm/);
  });

  it("splits large slices into bands of whole strips", async () => {
    const expected = readNpy(path.join(dir, "tiff", "u8_rows.npy"));
    const store = await FileStore.open(path.join(dir, "tiff", "u8_rows.tif"), [dir]);
    // 47 bytes per row, 4 rows per strip: a 400-byte budget makes bands of 8 rows.
    const src = await openTiffFile(store, "", "u8_rows.tif", { maxChunkBytes: 400 });
    expect(src.metadata.scales[0]!.chunkShapeZyx).toEqual([1, 8, 47]);
    const vol = new AssembledVolumeSource(src, { cache: new ChunkCache({ maxBytes: 2 ** 20 }) });
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
    const box = { offsetZyx: [3, 17, 5] as Vec3, shapeZyx: [2, 6, 40] as Vec3 };
    expectSameArray(await vol.read(box, 0), crop(expected.data, SHAPE, box.offsetZyx, box.shapeZyx));
  });

  it("reads pages whose strip heights and compressions differ, in bands of page 0's strips", async () => {
    const expected = readNpy(path.join(dir, "tiff", "u8_mixed_strips.npy"));
    const store = await FileStore.open(path.join(dir, "tiff", "u8_mixed_strips.tif"), [dir]);
    // Page 0 has 1 row per strip: a 5-row budget makes bands of 5 rows.
    const src = await openTiffFile(store, "", "u8_mixed_strips.tif", { maxChunkBytes: 5 * 47 });
    expect(src.metadata.scales[0]!.chunkShapeZyx).toEqual([1, 5, 47]);
    const vol = new AssembledVolumeSource(src, { cache: new ChunkCache({ maxBytes: 2 ** 20 }) });
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
  });

  it("reads one slice of a large file without reading the file", async () => {
    const shape: Vec3 = [6, 256, 512];
    const expected = readNpy(path.join(dir, "tiff", "u16_big.npy"));
    const store = await FileStore.open(path.join(dir, "tiff", "u16_big.tif"), [dir]);
    let bytesRead = 0;
    const counting: Store = {
      url: store.url,
      get: async (key, options) => {
        const b = await store.get(key, options);
        bytesRead += b?.length ?? 0;
        return b;
      },
    };
    const vol = new AssembledVolumeSource(await openTiffFile(counting, "", "u16_big.tif"), { cache: new ChunkCache({ maxBytes: 2 ** 24 }) });
    const box = { offsetZyx: [4, 0, 0] as Vec3, shapeZyx: [1, 256, 512] as Vec3 };
    expectSameArray(await vol.read(box, 0), crop(expected.data, shape, box.offsetZyx, box.shapeZyx));
    // The slice (256 KiB) plus directory blocks, against a 1.5 MiB file.
    expect(bytesRead).toBeLessThan(256 * 1024 + 3 * 64 * 1024);
  });

  it("cancels a read whose signal has fired", async () => {
    const vol = await open("tiff/u16_raw.tif");
    await expectError(vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0, { signal: AbortSignal.abort() }), "Cancelled", /.*/);
  });
});

describe("remote TIFFs", () => {
  it("reads one slice over HTTP with range requests only", async () => {
    const server = await startObjectServer(dir);
    try {
      const shape: Vec3 = [6, 256, 512];
      const expected = readNpy(path.join(dir, "tiff", "u16_big.npy"));
      const vol = await openVolume(`tiff://${server.httpBase}/tiff/u16_big.tif`, { roots: [], cache: new ChunkCache({ maxBytes: 2 ** 24 }) });
      expect(vol.metadata.scales[0]!.shapeZyx).toEqual(shape);
      const box = { offsetZyx: [2, 100, 0] as Vec3, shapeZyx: [1, 50, 512] as Vec3 };
      expectSameArray(await vol.read(box, 0), crop(expected.data, shape, box.offsetZyx, box.shapeZyx));
      expect(server.requests.length).toBeGreaterThan(0);
      expect(server.requests.every((r) => r.range !== undefined)).toBe(true);
    } finally {
      await server.close();
    }
  });

  it("reads a folder of slices from S3 (listed with ListObjectsV2)", async () => {
    const server = await startObjectServer(dir, { bucket: "emdata" });
    try {
      const vol = await openVolume(`tiff://s3://emdata/tiff_slices`, { roots: [], s3Endpoint: server.s3Endpoint, cache: new ChunkCache({ maxBytes: 2 ** 24 }) });
      expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), readNpy(path.join(dir, "tiff_slices.npy")).data);
    } finally {
      await server.close();
    }
  });
});

describe("folder of TIFF slices", () => {
  it("reads the slices in name order, skipping files that are not TIFFs", async () => {
    const expected = readNpy(path.join(dir, "tiff_slices.npy"));
    const vol = await open("tiff_slices");
    expect(vol.metadata.scales[0]!.shapeZyx).toEqual(SHAPE);
    expect(vol.metadata.dtype).toBe("uint16");
    // x and y from ImageJ calibration (8 nm); no spacing in a single page, so z is taken equal to x.
    expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([8, 8, 8]);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
  });

  it("rejects a slice whose size differs from the first, naming the file", async () => {
    const vol = await open("bad/tiff_sizes");
    await expectError(vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [2, 8, 8] }, 0), "DataCorruption", /b\.tif$/, /8 x 8/);
  });

  it("rejects an empty folder", async () => {
    await expectError(open("bad/empty"), "NotFound", /bad\/empty$/, /no TIFF slices/);
  });
});

describe("bad TIFF input", () => {
  it("a truncated file is DataCorruption naming it", async () => {
    const e = await expectError(
      open("bad/truncated.tif").then((v) => v.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0)),
      "DataCorruption",
      /truncated\.tif/,
    );
    expect(e.message).toMatch(/cannot decode/);
  });

  it("a header cut short and a file that is not a TIFF are DataCorruption", async () => {
    await expectError(open("bad/header_only.tif"), "DataCorruption", /header_only\.tif$/);
    await expectError(open("bad/not_a_tiff.tif"), "DataCorruption", /not_a_tiff\.tif$/, /byte order|magic/i);
  });

  it("an unsupported sample format is Unimplemented naming the file and the format", async () => {
    await expectError(open("bad/complex.tif"), "Unimplemented", /complex\.tif \(page 0\)$/, /SampleFormat 6 \(complex float\)/);
    await expectError(open("bad/rgb.tif"), "Unimplemented", /rgb\.tif \(page 0\)$/, /SamplesPerPixel is 3/);
    await expectError(open("bad/u64.tif"), "Unimplemented", /u64\.tif \(page 0\)$/, /SampleFormat 1 \(unsigned\) with 64 bits/);
  });

  it("a missing file is NotFound and a path outside the roots is PermissionDenied", async () => {
    await expectError(open("tiff/nope.tif"), "NotFound", /nope\.tif$/);
    await expectError(
      openVolume(`tiff://file://${path.join(dir, "tiff", "u8_raw.tif")}`, { roots: [path.join(dir, "png8")] }),
      "PermissionDenied",
      /u8_raw\.tif/,
    );
  });
});
