// Our Zarr writer's output read back three ways: by zarr-python and by tensorstore (spawned
// Python) and by our own reader, for v2 and v3, gzip and raw, uint8/float32/uint64 (ids > 2^53).

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { FileStore } from "#server/volume/stores.ts";
import { ZarrWriter } from "#server/volume/zarr_writer.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { expectSameArray, GENERATOR, PYTHON } from "#test/helpers/zarr_n5_fixtures.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "zarr-writer-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function volume(dtype: DataType, shape: Vec3, seed: number): TypedArray {
  const n = shape[0] * shape[1] * shape[2];
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31), s);
  if (dtype === "uint64") return BigUint64Array.from({ length: n }, (_, i) => (i % 7 === 0 ? 0n : 2n ** 63n + BigInt(rnd()) * 4096n + BigInt(i % 3)));
  if (dtype === "float32") return Float32Array.from({ length: n }, () => rnd() / 2 ** 20 - 1000.125);
  return Uint8Array.from({ length: n }, () => rnd() % 256);
}

/** 2x box-downsampling by taking every other voxel (what the levels hold does not matter here). */
function decimate(a: TypedArray, shape: Vec3): { data: TypedArray; shape: Vec3 } {
  const out = shape.map((s) => Math.ceil(s / 2)) as Vec3;
  const data = new (a.constructor as new (n: number) => TypedArray)(out[0] * out[1] * out[2]) as Uint8Array;
  let o = 0;
  for (let z = 0; z < out[0]; z++)
    for (let y = 0; y < out[1]; y++) for (let x = 0; x < out[2]; x++) data[o++] = (a as Uint8Array)[(2 * z * shape[1] + 2 * y) * shape[2] + 2 * x]!;
  return { data: data as TypedArray, shape: out };
}

interface PyLevel {
  path: string;
  zarr_format: number;
  dtype: string;
  shape: number[];
  chunks: number[];
  fill_value: string;
  tensorstore_equal: boolean;
  zarr_python: string;
  tensorstore: string;
}

const CASES: { zarrFormat: 2 | 3; dtype: DataType; compression: "raw" | "gzip"; fill: number | bigint }[] = [
  { zarrFormat: 2, dtype: "uint8", compression: "gzip", fill: 0 },
  { zarrFormat: 2, dtype: "uint64", compression: "raw", fill: 0n },
  { zarrFormat: 3, dtype: "float32", compression: "gzip", fill: -1.5 },
  { zarrFormat: 3, dtype: "uint64", compression: "gzip", fill: 0n },
];

describe.each(CASES)("zarr v$zarrFormat $dtype $compression", ({ zarrFormat, dtype, compression, fill }) => {
  it("is read identically by zarr-python, tensorstore and our reader, with OME-NGFF metadata", async () => {
    const shape: Vec3 = [11, 21, 19];
    const s0 = volume(dtype, shape, 7 + zarrFormat);
    const s1 = decimate(s0, shape);
    const target = path.join(dir, `v${zarrFormat}_${dtype}_${compression}.zarr`);
    const store = await FileStore.open(target, [dir]);
    const w = await ZarrWriter.create(store, {
      zarrFormat,
      dtype,
      compression,
      fillValue: fill,
      levels: [
        { shapeZyx: shape, chunkShapeZyx: [4, 8, 8], voxelSizeNm: [8, 4, 4], offsetZyx: [2, 4, 6] },
        { shapeZyx: s1.shape, chunkShapeZyx: [4, 8, 8], voxelSizeNm: [16, 8, 8], offsetZyx: [1, 2, 3] },
      ],
    });
    await w.writeLevel(0, s0);
    await w.writeLevel(1, s1.data);
    expect(readdirSync(path.join(target, "s0"), { recursive: true }).some((f) => String(f).endsWith(".tmp"))).toBe(false);

    const out = execFileSync(PYTHON, [GENERATOR, "read", target, "s0", "s1"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    const report = JSON.parse(out) as { attrs: Record<string, unknown>; levels: PyLevel[] };
    const ms = ((zarrFormat === 2 ? report.attrs : (report.attrs.ome as Record<string, unknown>)).multiscales as Record<string, unknown>[])[0]!;
    expect(ms.axes).toEqual(["z", "y", "x"].map((name) => ({ name, type: "space", unit: "nanometer" })));
    expect((ms.datasets as { coordinateTransformations: unknown }[])[1]!.coordinateTransformations).toEqual([
      { type: "scale", scale: [16, 8, 8] },
      { type: "translation", translation: [16, 16, 24] },
    ]);
    for (const [i, want] of [s0, s1.data].entries()) {
      const lv = report.levels[i]!;
      expect(lv.zarr_format).toBe(zarrFormat);
      expect(lv.dtype).toBe(dtype);
      expect(lv.shape).toEqual(i === 0 ? shape : s1.shape);
      expect(lv.chunks).toEqual([4, 8, 8]);
      expect(lv.tensorstore_equal).toBe(true);
      expectSameArray(readNpy(lv.zarr_python).data, want);
      expectSameArray(readNpy(lv.tensorstore).data, want);
    }

    const vol = await openVolume(`zarr://${target}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 1 << 22 }) });
    expect(vol.metadata.fillValue).toBe(fill);
    expect(vol.metadata.scales.map((s) => s.offsetZyx)).toEqual([[2, 4, 6], [1, 2, 3]]);
    expect(vol.metadata.scales.map((s) => s.voxelSizeNm)).toEqual([[8, 4, 4], [16, 8, 8]]);
    expectSameArray(await vol.read({ offsetZyx: [2, 4, 6], shapeZyx: shape }, 0), s0);
    expectSameArray(await vol.read({ offsetZyx: [1, 2, 3], shapeZyx: s1.shape }, 1), s1.data);
  });
});

describe("ZarrWriter refuses bad input without writing anything", () => {
  it("a chunk of the wrong length, index or type", async () => {
    const target = path.join(dir, "refuse.zarr");
    const w = await ZarrWriter.create(await FileStore.open(target, [dir]), {
      zarrFormat: 3,
      dtype: "uint16",
      levels: [{ shapeZyx: [5, 5, 5], chunkShapeZyx: [4, 4, 4], voxelSizeNm: [1, 1, 1] }],
    });
    await expect(w.writeChunk(0, [0, 0, 0], new Uint16Array(10))).rejects.toMatchObject({ _tag: "InvalidArgument", field: "data" });
    await expect(w.writeChunk(0, [2, 0, 0], new Uint16Array(64))).rejects.toMatchObject({ _tag: "InvalidArgument", field: "chunkIndexZyx" });
    await expect(w.writeChunk(0, [0, 0, 0], new Uint8Array(64))).rejects.toMatchObject({ _tag: "InvalidArgument", field: "data" });
    await expect(w.writeChunk(1, [0, 0, 0], new Uint16Array(64))).rejects.toMatchObject({ _tag: "InvalidArgument", field: "scale" });
    expect(existsSync(path.join(target, "s0/c"))).toBe(false);
    // An edge chunk given clipped (1x1x1 here) is padded on disk and reads back.
    await w.writeChunk(0, [1, 1, 1], Uint16Array.of(42));
    const vol = await openVolume(`zarr://${target}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 1 << 20 }) });
    expect([...(await vol.read({ offsetZyx: [3, 3, 3], shapeZyx: [2, 2, 2] }, 0))]).toEqual([0, 0, 0, 0, 0, 0, 0, 42]);
  });

  it("layouts with absurd shapes, unknown compression or an unrepresentable fill value", async () => {
    const store = await FileStore.open(path.join(dir, "never.zarr"), [dir]);
    const level = { shapeZyx: [5, 5, 5] as Vec3, chunkShapeZyx: [4, 4, 4] as Vec3, voxelSizeNm: [1, 1, 1] as Vec3 };
    await expect(ZarrWriter.create(store, { zarrFormat: 2, dtype: "uint8", levels: [{ ...level, chunkShapeZyx: [2 ** 14, 2 ** 14, 2 ** 14] }] })).rejects.toMatchObject({
      field: "levels: scales[0].chunk_shape",
    });
    await expect(ZarrWriter.create(store, { zarrFormat: 2, dtype: "uint8", compression: "lzma" as "raw", levels: [level] })).rejects.toMatchObject({ field: "compression" });
    await expect(ZarrWriter.create(store, { zarrFormat: 2, dtype: "uint64", fillValue: 2n ** 60n, levels: [level] })).rejects.toMatchObject({ field: "fillValue" });
    await expect(ZarrWriter.create(store, { zarrFormat: 2, dtype: "uint8", levels: [] })).rejects.toMatchObject({ field: "levels: scales" });
    expect(existsSync(path.join(dir, "never.zarr"))).toBe(false);
  });
});
