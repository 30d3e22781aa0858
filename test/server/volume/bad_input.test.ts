// Bad input, one case each: truncated and corrupt chunks, wrong dtypes and byte orders, absurd
// shapes, negative/inverted boxes, unknown codecs, invalid JSON, paths escaping the roots. Each must
// fail with a typed SpatialSamError naming the file or field, never crash or return garbage.

import { cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import type { Box3, VolumeSource } from "#src/volume/types.ts";
import { makeZarrN5Fixtures } from "#test/helpers/zarr_n5_fixtures.ts";
import type { ZarrN5Fixtures } from "#test/helpers/zarr_n5_fixtures.ts";

let fx: ZarrN5Fixtures;
let work: string;
let n = 0;
beforeAll(() => {
  fx = makeZarrN5Fixtures();
  work = path.join(fx.dir, "work");
  mkdirSync(work);
});
afterAll(() => fx?.cleanup());

/** A private copy of fixture `name` (a store folder); returns its path. */
function copy(name: string): string {
  const to = path.join(work, `${n++}-${name}`);
  cpSync(path.join(fx.dir, name), to, { recursive: true });
  return to;
}
const open = (url: string): Promise<VolumeSource> => openVolume(url, { roots: [work], cache: new ChunkCache({ maxBytes: 1 << 20 }) });
const editJson = (file: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  edit(j);
  writeFileSync(file, JSON.stringify(j));
};
const truncate = (file: string, keep: number) => writeFileSync(file, readFileSync(file).subarray(0, keep));
const whole = (v: VolumeSource): Box3 => ({ offsetZyx: v.metadata.scales[0]!.offsetZyx, shapeZyx: v.metadata.scales[0]!.shapeZyx });
const readAll = async (url: string) => {
  const v = await open(url);
  return v.read(whole(v), 0);
};

describe("truncated and corrupt chunks -> DataCorruption naming the chunk", () => {
  it("truncated gzip chunk (zarr v2)", async () => {
    const d = copy("zarr2_gzip_u16.zarr");
    truncate(path.join(d, "1.1.1"), 30);
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/chunk \[1, 1, 1\]$/) });
  });
  it("truncated raw chunk (zarr v2, no compressor)", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    truncate(path.join(d, "0.1.2"), 100);
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/chunk \[0, 1, 2\]$/) });
  });
  it("truncated blosc chunk (the wasm decoder alone would return garbage)", async () => {
    const d = copy("zarr2_blosc_f32.zarr");
    truncate(path.join(d, "1.0.1"), 40);
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/chunk \[1, 0, 1\]$/) });
  });
  it("garbage bytes in a zstd chunk (zarr v3)", async () => {
    const d = copy("zarr3_zstd_f32.zarr");
    writeFileSync(path.join(d, "c/1/1/1"), Uint8Array.from({ length: 64 }, (_, i) => (i * 37) % 256));
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/chunk \[1, 1, 1\]$/) });
  });
  it("truncated shard (zarr v3 sharding)", async () => {
    const d = copy("zarr3_sharded_u8.zarr");
    truncate(path.join(d, "c/0/0/0"), 10);
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption" });
  });
  it("N5 block with a truncated header", async () => {
    const d = copy("n5_raw_u8.n5");
    truncate(path.join(d, "1/1/1"), 6);
    await expect(readAll(`n5://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/n5_raw_u8\.n5\/1\/1\/1$/) });
  });
  it("N5 raw block with missing data", async () => {
    const d = copy("n5_raw_u8.n5");
    truncate(path.join(d, "0/0/1"), 200);
    await expect(readAll(`n5://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/0\/0\/1$/), message: expect.stringMatching(/expected/) });
  });
  it("N5 gzip block with corrupt data", async () => {
    const d = copy("n5_gzip_u16.n5");
    const f = path.join(d, "0/0/1");
    const b = readFileSync(f);
    b.fill(0x55, 20);
    writeFileSync(f, b);
    await expect(readAll(`n5://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", field: expect.stringMatching(/0\/0\/1$/) });
  });
  it("N5 block header claiming dimensions beyond the block size", async () => {
    const d = copy("n5_raw_u8.n5");
    const f = path.join(d, "0/0/1");
    const b = readFileSync(f);
    b.writeUInt32BE(4096, 4);
    writeFileSync(f, b);
    await expect(readAll(`n5://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption", message: expect.stringMatching(/exceed blockSize/) });
  });
  it("N5 blosc block truncated", async () => {
    const d = copy("n5_blosc_f32.n5");
    truncate(path.join(d, "1/1/1"), 40);
    await expect(readAll(`n5://${d}`)).rejects.toMatchObject({ _tag: "DataCorruption" });
  });
});

describe("metadata with wrong dtype or byte order -> InvalidArgument naming file and field", () => {
  it("zarr v2 dtype that is not a numpy type", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    editJson(path.join(d, ".zarray"), (j) => (j.dtype = "<u3"));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/.zarray: dtype` });
  });
  it("zarr v2 byte order `|` on a 2-byte type", async () => {
    const d = copy("zarr2_gzip_u16.zarr");
    editJson(path.join(d, ".zarray"), (j) => (j.dtype = "|u2"));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/.zarray: dtype`, message: expect.stringMatching(/byte order/) });
  });
  it("zarr v3 data type we do not support", async () => {
    const d = copy("zarr3_gzip_u16.zarr");
    editJson(path.join(d, "zarr.json"), (j) => (j.data_type = "complex64"));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/zarr.json: data_type` });
  });
  it("zarr v3 bytes codec with an impossible endianness", async () => {
    const d = copy("zarr3_gzip_u16.zarr");
    editJson(path.join(d, "zarr.json"), (j) => ((j.codecs as { configuration: Record<string, unknown> }[])[0]!.configuration.endian = "middle"));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/zarr.json: codecs[0].configuration.endian` });
  });
  it("N5 dataType we do not support", async () => {
    const d = copy("n5_raw_u8.n5");
    editJson(path.join(d, "attributes.json"), (j) => (j.dataType = "uint128"));
    await expect(open(`n5://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/attributes.json: dataType` });
  });
});

describe("absurd shapes -> InvalidArgument before anything is allocated", () => {
  it("zarr chunk shape of 2^40 voxels", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    editJson(path.join(d, ".zarray"), (j) => ((j.chunks = [1024, 1024, 1048576]), (j.shape = [1024, 1024, 1048576])));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: expect.stringMatching(/scales\[0\]\.chunk_shape$/) });
  });
  it("zarr array shape of 2^60 voxels", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    editJson(path.join(d, ".zarray"), (j) => (j.shape = [2 ** 20, 2 ** 20, 2 ** 20]));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: expect.stringMatching(/scales\[0\]\.shape$/) });
  });
  it("N5 negative dimension", async () => {
    const d = copy("n5_raw_u8.n5");
    editJson(path.join(d, "attributes.json"), (j) => (j.dimensions = [37, -30, 19]));
    await expect(open(`n5://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/attributes.json: dimensions` });
  });
  it("N5 block size of 2^40 voxels", async () => {
    const d = copy("n5_raw_u8.n5");
    editJson(path.join(d, "attributes.json"), (j) => (j.blockSize = [1048576, 1024, 1024]));
    await expect(open(`n5://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: expect.stringMatching(/scales\[0\]\.chunk_shape$/) });
  });
  it("a read box of 2^40 voxels", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    editJson(path.join(d, ".zarray"), (j) => (j.shape = [2 ** 14, 2 ** 13, 2 ** 13]));
    const v = await open(`zarr://${d}`);
    await expect(v.read({ offsetZyx: [0, 0, 0], shapeZyx: [2 ** 14, 2 ** 13, 2 ** 13] }, 0)).rejects.toMatchObject({ _tag: "InvalidArgument", field: "box.shape" });
  });
});

describe("negative or inverted boxes -> InvalidArgument naming box.offset / box.shape", () => {
  it.each([
    ["negative offset", { offsetZyx: [-1, 0, 0], shapeZyx: [1, 1, 1] }, "box.offset"],
    ["inverted (negative) shape", { offsetZyx: [5, 5, 5], shapeZyx: [1, -4, 1] }, "box.shape"],
    ["box beyond the volume", { offsetZyx: [18, 0, 0], shapeZyx: [2, 1, 1] }, "box.shape"],
  ] as [string, Box3, string][])("%s", async (_, box, field) => {
    const v = await open(`zarr://${copy("zarr2_raw_u8.zarr")}`);
    await expect(v.read(box, 0)).rejects.toMatchObject({ _tag: "InvalidArgument", field });
  });
});

describe("unknown codecs -> InvalidArgument naming the codec field", () => {
  it("zarr v2 compressor", async () => {
    const d = copy("zarr2_gzip_u16.zarr");
    editJson(path.join(d, ".zarray"), (j) => (j.compressor = { id: "lzma", preset: 1 }));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/.zarray: compressor`, message: expect.stringMatching(/lzma/) });
  });
  it("zarr v3 codec", async () => {
    const d = copy("zarr3_gzip_u16.zarr");
    editJson(path.join(d, "zarr.json"), (j) => (j.codecs as unknown[]).push({ name: "rot13", configuration: {} }));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/zarr.json: codecs[2].name` });
  });
  it("N5 compression", async () => {
    const d = copy("n5_gzip_u16.n5");
    editJson(path.join(d, "attributes.json"), (j) => (j.compression = { type: "xz", preset: 6 }));
    await expect(open(`n5://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/attributes.json: compression` });
  });
});

describe("invalid JSON -> InvalidArgument naming the file", () => {
  it.each([
    ["zarr v2 .zarray", "zarr2_raw_u8.zarr", ".zarray", "zarr"],
    ["zarr v3 zarr.json", "zarr3_gzip_u16.zarr", "zarr.json", "zarr"],
    ["OME .zattrs", "ome04.zarr", ".zattrs", "zarr"],
    ["N5 attributes.json", "n5_raw_u8.n5", "attributes.json", "n5"],
  ])("%s", async (_, name, file, scheme) => {
    const d = copy(name);
    writeFileSync(path.join(d, file), '{"shape": [1, 2,');
    await expect(open(`${scheme}://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/${file}`, message: expect.stringMatching(/invalid JSON/) });
  });
  it("a JSON document that is not an object", async () => {
    const d = copy("n5_raw_u8.n5");
    writeFileSync(path.join(d, "attributes.json"), "[1, 2, 3]");
    await expect(open(`n5://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/attributes.json` });
  });
});

describe("paths escaping the roots -> PermissionDenied", () => {
  it("a volume outside the roots", async () => {
    await expect(open(`zarr://${path.join(fx.dir, "zarr2_raw_u8.zarr")}`)).rejects.toMatchObject({ _tag: "PermissionDenied" });
  });
  it("`..` out of the root", async () => {
    await expect(open(`zarr://${work}/../zarr2_raw_u8.zarr`)).rejects.toMatchObject({ _tag: "PermissionDenied" });
  });
  it("a symlink inside the root pointing outside", async () => {
    const link = path.join(work, `${n++}-link.zarr`);
    symlinkSync(path.join(fx.dir, "zarr2_raw_u8.zarr"), link);
    await expect(open(`zarr://${link}`)).rejects.toMatchObject({ _tag: "PermissionDenied" });
  });
  it("a chunk that is a symlink out of the root", async () => {
    const d = copy("zarr2_raw_u8.zarr");
    rmSync(path.join(d, "1.1.1"));
    symlinkSync(path.join(fx.dir, "zarr2_raw_u8.zarr/1.1.1"), path.join(d, "1.1.1"));
    await expect(readAll(`zarr://${d}`)).rejects.toMatchObject({ _tag: "PermissionDenied", field: "1.1.1" });
  });
  it("an OME dataset path with `..`", async () => {
    const d = copy("ome04.zarr");
    editJson(path.join(d, ".zattrs"), (j) => ((j.multiscales as { datasets: { path: string }[] }[])[0]!.datasets[0]!.path = "../s0"));
    await expect(open(`zarr://${d}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: `file://${d}/.zgroup: multiscales[0].datasets[0].path` });
  });
});

describe("bad URLs", () => {
  it("unknown scheme names url", async () => {
    await expect(open(`nrrd://${work}`)).rejects.toMatchObject({ _tag: "InvalidArgument", field: "url", message: expect.stringMatching(/unknown volume format nrrd/) });
  });
  it("no scheme names url", async () => {
    await expect(open(work)).rejects.toMatchObject({ _tag: "InvalidArgument", field: "url" });
  });
  it("nothing there is NotFound", async () => {
    await expect(open(`zarr://${work}/nothing.zarr`)).rejects.toMatchObject({ _tag: "NotFound" });
    await expect(open(`n5://${work}/nothing.n5`)).rejects.toMatchObject({ _tag: "NotFound" });
  });
});
