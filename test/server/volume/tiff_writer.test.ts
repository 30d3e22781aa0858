// The TIFF writer: tifffile (spawned Python) must read back exactly what we wrote, with the ImageJ
// calibration; our own tiff:// reader must too; failures leave nothing behind.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { allocate } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { SpatialSamError } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { toRational, writeTiff, writeTiffStack, writeVolumeTiff } from "#server/volume/tiff_writer.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { expectSameArray, PYTHON } from "#test/helpers/volumes_stacks.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "tiff-writer-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SHAPE: Vec3 = [5, 37, 41];

/** Deterministic values that use the dtype's range (sign, byte order and high bits all show). */
function volume(dtype: DataType, n: number): TypedArray {
  const a = allocate(dtype, n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    if (dtype === "float32") (a as Float32Array)[i] = (s / 2 ** 32 - 0.5) * 1e4;
    else (a as Uint32Array)[i] = s; // typed-array assignment wraps to the element type
  }
  return a;
}

/** tifffile's view of a file: the pixels (as .npy) and the metadata Fiji would use. */
function tifffileRead(file: string): { shape: number[]; dtype: string; imagej: boolean; spacing?: number; unit?: string; xres: number[]; yres: number[]; resunit: number; compression: number; pages: number } {
  const out = `${file}.npy`;
  const script = `
import json, sys, numpy as np, tifffile
with tifffile.TiffFile(sys.argv[1]) as t:
    a = t.asarray()
    p = t.pages[0]
    ij = t.imagej_metadata or {}
    np.save(sys.argv[2], a)
    tags = p.tags
    res = lambda k: list(tags[k].value) if k in tags else []
    print(json.dumps({"shape": list(a.shape), "dtype": str(a.dtype), "imagej": t.is_imagej, "spacing": ij.get("spacing"),
        "unit": ij.get("unit"), "xres": res("XResolution"), "yres": res("YResolution"),
        "resunit": int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 0,
        "compression": int(p.compression), "pages": len(t.pages)}))
`;
  return JSON.parse(execFileSync(PYTHON, ["-c", script, file, out], { encoding: "utf8" }));
}

describe("writeTiff", () => {
  it.each([
    ["uint8", "none"],
    ["uint16", "none"],
    ["float32", "none"],
    ["uint8", "deflate"],
    ["uint16", "deflate"],
    ["float32", "deflate"],
  ] as const)("%s %s: tifffile reads the same voxels and the ImageJ spacing", async (dtype, compression) => {
    const data = volume(dtype, SHAPE[0] * SHAPE[1] * SHAPE[2]);
    const file = path.join(dir, `${dtype}_${compression}.tif`);
    await writeTiff(file, data, dtype, SHAPE, { voxelSizeNm: [40, 4, 7.5], compression });
    const meta = tifffileRead(file);
    expect(meta).toMatchObject({ shape: SHAPE, dtype, imagej: true, spacing: 40, unit: "nm", resunit: 1, compression: compression === "deflate" ? 8 : 1, pages: 5 });
    expect(meta.xres[1]! / meta.xres[0]!).toBeCloseTo(7.5, 9);
    expect(meta.yres[1]! / meta.yres[0]!).toBeCloseTo(4, 9);
    expectSameArray(readNpy(`${file}.npy`).data, data);

    const vol = await openVolume(`tiff://file://${file}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 2 ** 24 }) });
    expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([40, 4, 7.5]);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), data);
  });

  it("writes uint32 labels with the xy calibration in pixels per centimetre", async () => {
    const data = volume("uint32", SHAPE[0] * SHAPE[1] * SHAPE[2]);
    const file = path.join(dir, "labels.tif");
    await writeTiff(file, data, "uint32", SHAPE, { voxelSizeNm: [8, 8, 8] });
    const meta = tifffileRead(file);
    expect(meta).toMatchObject({ shape: SHAPE, dtype: "uint32", imagej: false, resunit: 3 });
    expect(1e7 / (meta.xres[0]! / meta.xres[1]!)).toBeCloseTo(8, 9);
    expectSameArray(readNpy(`${file}.npy`).data, data);
    const vol = await openVolume(`tiff://file://${file}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 2 ** 24 }) });
    expect(vol.metadata.scales[0]!.voxelSizeNm.map((v) => Number(v.toFixed(6)))).toEqual([8, 8, 8]);
  });

  it("streams slices from a callback and splits large slices into strips", async () => {
    const shape: Vec3 = [3, 600, 1000]; // 1.2 MB per uint16 slice: two strips each
    const plane = shape[1] * shape[2];
    const data = volume("uint16", shape[0] * plane);
    const file = path.join(dir, "streamed.tif");
    await writeTiffStack(file, "uint16", shape, async (z) => data.subarray(z * plane, (z + 1) * plane));
    const meta = tifffileRead(file);
    expect(meta).toMatchObject({ shape, dtype: "uint16", imagej: false, pages: 3 });
    expectSameArray(readNpy(`${file}.npy`).data, data);
  });

  it("exports a volume slice by slice with its voxel size (a PNG folder made a TIFF)", async () => {
    const pngDir = path.join(dir, "pngds", "train", "image");
    const make = `
import sys, json, numpy as np
from pathlib import Path
from PIL import Image
d = Path(sys.argv[1]); d.mkdir(parents=True)
a = np.random.default_rng(5).integers(0, 256, size=(4, 21, 19), dtype=np.uint8)
for z in range(4): Image.fromarray(a[z]).save(d / f"{z:04d}.png")
(d.parent.parent / "meta.json").write_text(json.dumps({"voxel_size_nm_zyx": [30, 6, 6]}))
np.save(sys.argv[2], a)
`;
    execFileSync(PYTHON, ["-c", make, pngDir, path.join(dir, "pngds.npy")]);
    const vol = await openVolume(`png://file://${pngDir}`, { roots: [dir], cache: new ChunkCache({ maxBytes: 2 ** 20 }) });
    const file = path.join(dir, "from_png.tif");
    await writeVolumeTiff(vol, 0, file, { compression: "deflate" });
    expect(tifffileRead(file)).toMatchObject({ shape: [4, 21, 19], dtype: "uint8", imagej: true, spacing: 30, unit: "nm" });
    expectSameArray(readNpy(`${file}.npy`).data, readNpy(path.join(dir, "pngds.npy")).data);
  });

  it("replaces an existing file atomically and leaves nothing behind when a slice fails", async () => {
    const file = path.join(dir, "atomic.tif");
    writeFileSync(file, "old contents");
    await expect(
      writeTiffStack(file, "uint8", [3, 4, 4], (z) => {
        if (z === 2) throw new Error("source failed");
        return new Uint8Array(16);
      }),
    ).rejects.toThrow("source failed");
    expect(readFileSync(file, "utf8")).toBe("old contents");
    expect(readdirSync(dir).filter((n) => n.endsWith(".tmp"))).toEqual([]);
    await writeTiff(file, new Uint8Array(48).fill(7), "uint8", [3, 4, 4]);
    expect(tifffileRead(file)).toMatchObject({ shape: [3, 4, 4], dtype: "uint8" });
  });

  it("refuses uint64, wrong lengths and bad voxel sizes with typed errors, writing nothing", async () => {
    const file = path.join(dir, "refused.tif");
    const bad = async (p: Promise<unknown>, field: string) => {
      const e = await p.then(() => expect.fail("expected a rejection"), (err: unknown) => err);
      expect(e).toBeInstanceOf(SpatialSamError);
      expect((e as SpatialSamError)._tag).toBe("InvalidArgument");
      expect((e as SpatialSamError).field).toBe(field);
    };
    await bad(writeTiff(file, new BigUint64Array(8), "uint64", [2, 2, 2]), "dtype");
    await bad(writeTiff(file, new Uint8Array(7), "uint8", [2, 2, 2]), "data");
    await bad(writeTiff(file, new Uint16Array(8), "uint8", [2, 2, 2]), "slice[0]");
    await bad(writeTiff(file, new Uint8Array(8), "uint8", [2, 2, 2], { voxelSizeNm: [1, 0, 1] }), "voxelSizeNm");
    await bad(writeTiffStack(file, "uint8", [2 ** 12, 2 ** 10, 2 ** 10], () => new Uint8Array(0)), "shape");
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(dir).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  it("stores voxel sizes as exact rationals", () => {
    expect(toRational(0.2)).toEqual([1, 5]);
    expect(toRational(1 / 7.5)).toEqual([2, 15]);
    const [n, d] = toRational(1e7 / 3.3);
    expect(n / d).toBeCloseTo(1e7 / 3.3, 6);
  });
});
