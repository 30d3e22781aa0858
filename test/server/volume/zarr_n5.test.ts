// Reads the golden Zarr v2/v3, OME-NGFF and N5 fixtures written by zarr-python and tensorstore and
// compares metadata and every voxel (whole levels and unaligned crops) with the generator's arrays.

import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { cropZyx, expectSameArray, makeZarrN5Fixtures, schemeOf } from "#test/helpers/zarr_n5_fixtures.ts";
import type { ZarrN5Fixtures } from "#test/helpers/zarr_n5_fixtures.ts";

const CASES = [
  "zarr2_raw_u8",
  "zarr2_gzip_u16",
  "zarr2_blosc_f32",
  "zarr2_zstd_u64",
  "zarr2_be_u16",
  "zarr2_forder_u16",
  "zarr3_gzip_u16",
  "zarr3_zstd_f32",
  "zarr3_blosc_u64",
  "zarr3_sharded_u8",
  "zarr3_be_f32",
  "ome04",
  "ome05",
  "n5_raw_u8",
  "n5_gzip_u16",
  "n5_blosc_f32",
  "n5_zstd_u64",
  "n5_multiscale",
];

let fx: ZarrN5Fixtures;
beforeAll(() => {
  fx = makeZarrN5Fixtures();
});
afterAll(() => fx?.cleanup());

describe.each(CASES)("%s", (name) => {
  it("has the metadata the reference library wrote", async () => {
    const c = fx.cases.get(name)!;
    const vol = await openVolume(`${schemeOf(c)}://${path.join(fx.dir, c.url)}`, { roots: [fx.dir], cache: new ChunkCache({ maxBytes: 1 << 24 }) });
    expect(vol.metadata.format).toBe(c.format);
    expect(vol.metadata.dtype).toBe(c.dtype);
    expect(String(vol.metadata.fillValue)).toBe(String(c.dtype.startsWith("float") ? Number(c.fill) : c.fill));
    expect(vol.metadata.scales.length).toBe(c.levels.length);
    c.levels.forEach((lv, i) => {
      const s = vol.metadata.scales[i]!;
      expect(s.index).toBe(i);
      expect(s.shapeZyx).toEqual(lv.shape);
      expect(s.chunkShapeZyx).toEqual(lv.chunks);
      expect(s.offsetZyx).toEqual(lv.offset);
      s.voxelSizeNm.forEach((v, d) => expect(v).toBeCloseTo(lv.voxelSizeNm[d]!, 9));
    });
    await vol.close();
  });

  it("reads every level exactly, missing chunks as the fill value", async () => {
    const c = fx.cases.get(name)!;
    const vol = await openVolume(`${schemeOf(c)}://${path.join(fx.dir, c.url)}`, { roots: [fx.dir], cache: new ChunkCache({ maxBytes: 1 << 24 }) });
    if (c.missingKey !== null) {
      // The generator left chunk (0, 0, 0) unstored: the driver reports it absent (cached as such, no array).
      expect(existsSync(path.join(fx.dir, c.missingKey))).toBe(false);
      expect(await (vol as AssembledVolumeSource).source.readChunk(0, [0, 0, 0])).toBeUndefined();
    }
    for (const [i, lv] of c.levels.entries()) {
      const s = vol.metadata.scales[i]!;
      const got = await vol.read({ offsetZyx: s.offsetZyx, shapeZyx: s.shapeZyx }, i);
      expectSameArray(got, fx.expected(c, i));
      // An unaligned crop crossing chunk borders, including the level's far (partial-chunk) edge.
      const rel: Vec3 = [3, 5, 7];
      const shape = lv.shape.map((n, d) => n - rel[d]!) as Vec3;
      const crop = await vol.read({ offsetZyx: s.offsetZyx.map((o, d) => o + rel[d]!) as Vec3, shapeZyx: shape }, i);
      expectSameArray(crop, cropZyx(fx.expected(c, i), lv.shape, rel, shape));
    }
    await vol.close();
  });
});

it("refuses an OME-Zarr with three channels, naming the axes", async () => {
  await expect(openVolume(`zarr://${path.join(fx.dir, "ome05_3ch.zarr")}`, { roots: [fx.dir] })).rejects.toMatchObject({
    _tag: "InvalidArgument",
    field: expect.stringMatching(/zarr\.json: multiscales\[0\]\.axes$/),
    message: expect.stringMatching(/axis c has size 3/),
  });
});

it("opens one level of a multiscale group as a plain array", async () => {
  const c = fx.cases.get("ome04")!;
  const vol = await openVolume(`zarr://${path.join(fx.dir, "ome04.zarr/s1")}`, { roots: [fx.dir] });
  expect(vol.metadata.scales.length).toBe(1);
  const s = vol.metadata.scales[0]!;
  expect(s.offsetZyx).toEqual([0, 0, 0]);
  expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: s.shapeZyx }, 0), fx.expected(c, 1));
});

it("reads a plain v3 array by its z/y/x dimension names, or as the last three axes when names are unrelated", async () => {
  const c = fx.cases.get("zarr3_gzip_u16")!;
  for (const [i, names] of [["z", "y", "x"], ["t0", "t1", "t2"]].entries()) {
    const d = path.join(fx.dir, `named-${i}.zarr`);
    cpSync(path.join(fx.dir, c.url), d, { recursive: true });
    const meta = JSON.parse(readFileSync(path.join(d, "zarr.json"), "utf8")) as Record<string, unknown>;
    meta.dimension_names = names;
    writeFileSync(path.join(d, "zarr.json"), JSON.stringify(meta));
    const vol = await openVolume(`zarr://${d}`, { roots: [fx.dir], cache: new ChunkCache({ maxBytes: 1 << 24 }) });
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [19, 30, 37] }, 0), fx.expected(c, 0));
  }
  const d = path.join(fx.dir, "named-xyz.zarr");
  cpSync(path.join(fx.dir, c.url), d, { recursive: true });
  const meta = JSON.parse(readFileSync(path.join(d, "zarr.json"), "utf8")) as Record<string, unknown>;
  meta.dimension_names = ["x", "y", "z"];
  writeFileSync(path.join(d, "zarr.json"), JSON.stringify(meta));
  await expect(openVolume(`zarr://${d}`, { roots: [fx.dir] })).rejects.toMatchObject({ _tag: "InvalidArgument", message: expect.stringMatching(/z, y, x order/) });
});
