// The png:// driver against Pillow-written slices and the real Lucchi++ stacks in ../shared/data
// (compared with PIL run from the test).

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectError } from "#test/helpers/expect_error.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { startObjectServer } from "#test/helpers/object_server.ts";
import { crop, expectSameArray, makeStackFixtures, PYTHON, REPO_ROOT } from "#test/helpers/volumes_stacks.ts";

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = makeStackFixtures());
});
afterAll(() => cleanup());

const SHAPE: Vec3 = [7, 33, 47];
const cache = () => new ChunkCache({ maxBytes: 2 ** 26 });
const open = (rel: string, query = "", roots = [dir]) => openVolume(`png://file://${path.join(dir, rel)}${query}`, { roots, cache: cache() });

describe("PNG slice folders", () => {
  it.each([
    ["png8", "uint8"],
    ["png16", "uint16"],
  ])("%s reads exactly as %s", async (name, dtype) => {
    const expected = readNpy(path.join(dir, `${name}.npy`));
    const vol = await open(name);
    expect(vol.metadata).toMatchObject({ format: "png-stack", dtype, kind: "image" });
    expect(vol.metadata.scales[0]).toMatchObject({ shapeZyx: SHAPE, chunkShapeZyx: [1, 33, 47], voxelSizeNm: [1, 1, 1] });
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
    const box = { offsetZyx: [1, 3, 4] as Vec3, shapeZyx: [5, 29, 40] as Vec3 };
    expectSameArray(await vol.read(box, 0), crop(expected.data, SHAPE, box.offsetZyx, box.shapeZyx));
  });

  it.each([
    ["png8_interlaced", "uint8"],
    ["png16_interlaced", "uint16"],
  ])("%s (Adam7) reads exactly as %s", async (name, dtype) => {
    const vol = await open(name);
    expect(vol.metadata.dtype).toBe(dtype);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [3, 33, 47] }, 0), readNpy(path.join(dir, `${name}.npy`)).data);
  });

  it("takes the voxel size from the dataset's meta.json, or from the URL", async () => {
    const expected = readNpy(path.join(dir, "pngds.npy"));
    const vol = await open("pngds/train/image");
    expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([30, 6, 6]);
    expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), expected.data);
    expect((await open("pngds/train/image", "?voxel_size_nm=1,2,3")).metadata.scales[0]!.voxelSizeNm).toEqual([1, 2, 3]);
    // meta.json outside the allowed roots is not read: the default applies.
    const confined = await open("pngds/train/image", "", [path.join(dir, "pngds/train")]);
    expect(confined.metadata.scales[0]!.voxelSizeNm).toEqual([1, 1, 1]);
  });
});

describe("remote PNG folders", () => {
  it("reads a shared-layout folder from S3, meta.json included", async () => {
    const server = await startObjectServer(dir, { bucket: "emdata" });
    try {
      const vol = await openVolume("png://s3://emdata/pngds/train/image", { roots: [], s3Endpoint: server.s3Endpoint, cache: cache() });
      expect(vol.metadata.scales[0]!.voxelSizeNm).toEqual([30, 6, 6]);
      expectSameArray(await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: SHAPE }, 0), readNpy(path.join(dir, "pngds.npy")).data);
    } finally {
      await server.close();
    }
  });
});

describe("bad PNG input", () => {
  it("inconsistent slice sizes and bit depths are DataCorruption naming the file", async () => {
    const sizes = await open("bad/png_sizes");
    await expectError(sizes.read({ offsetZyx: [0, 0, 0], shapeZyx: [2, 8, 8] }, 0), "DataCorruption", /png_sizes\/0001\.png$/, /8 x 9/);
    const depths = await open("bad/png_depths");
    await expectError(depths.read({ offsetZyx: [1, 0, 0], shapeZyx: [1, 8, 8] }, 0), "DataCorruption", /png_depths\/0001\.png$/, /16-bit/);
  });

  it("an empty folder is NotFound, an RGB slice is Unimplemented, a corrupt slice is DataCorruption", async () => {
    await expectError(open("bad/empty"), "NotFound", /bad\/empty$/, /no PNG slices/);
    await expectError(open("bad/png_rgb"), "Unimplemented", /0000\.png$/, /RGB/);
    const corrupt = await open("bad/png_corrupt");
    await expectError(corrupt.read({ offsetZyx: [1, 0, 0], shapeZyx: [1, 8, 8] }, 0), "DataCorruption", /png_corrupt\/0001\.png$/);
  });

  it("a folder outside the roots is PermissionDenied", async () => {
    await expectError(open("png8", "", [path.join(dir, "png16")]), "PermissionDenied", /png8/);
  });
});

const LUCCHI = path.resolve(REPO_ROOT, "../shared/data/lucchi_pp");

describe.skipIf(!existsSync(LUCCHI))("real Lucchi++ stacks in ../shared/data", () => {
  it("reads a box of train/image and train/label exactly as PIL decodes them", async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), "lucchi-pil-"));
    try {
      const box = { offsetZyx: [40, 200, 300] as Vec3, shapeZyx: [6, 150, 210] as Vec3 };
      const script = `
import sys, glob, numpy as np
from PIL import Image
src, out, z, y, x, dz, dy, dx = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
files = sorted(glob.glob(src + "/*.png"))[z:z + dz]
np.save(out, np.stack([np.array(Image.open(f))[y:y + dy, x:x + dx] for f in files]))
`;
      for (const [folder, kind] of [
        ["image", "image"],
        ["label", "segmentation"],
      ] as const) {
        const out = path.join(tmp, `${folder}.npy`);
        execFileSync(PYTHON, ["-c", script, path.join(LUCCHI, "train", folder), out, ...box.offsetZyx.map(String), ...box.shapeZyx.map(String)]);
        const vol = await openVolume(`png://file://${path.join(LUCCHI, "train", folder)}`, { roots: [LUCCHI], cache: cache() });
        expect(vol.metadata).toMatchObject({ dtype: "uint8", kind });
        expect(vol.metadata.scales[0]).toMatchObject({ shapeZyx: [165, 768, 1024], voxelSizeNm: [5, 5, 5] });
        expectSameArray(await vol.read(box, 0), readNpy(out).data);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
