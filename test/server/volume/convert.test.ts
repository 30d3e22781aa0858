// `convert` rewrites a volume as OME-Zarr or precomputed: what our readers and the reference
// Python libraries read back equals the source, every scale, labels as compressed_segmentation.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeDemoVolume } from "#src/demo_volume.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { convertVolume } from "#server/volume/convert.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { PYTHON, REPO_ROOT } from "#test/helpers/zarr_n5_fixtures.ts";

const SHAPE: Vec3 = [20, 50, 70];
let dir: string;
let labels: BigUint64Array;
let image: Uint8Array;

async function writeSource(name: string, type: "image" | "segmentation"): Promise<string> {
  const store = await FileStore.open(join(dir, name), [dir]);
  const w = await PrecomputedWriter.create(store, {
    type,
    dataType: type === "image" ? "uint8" : "uint64",
    numChannels: 1,
    scales: [
      {
        key: "s0",
        sizeXyz: [SHAPE[2], SHAPE[1], SHAPE[0]],
        resolutionXyz: [4, 4, 8],
        voxelOffsetXyz: [3, 2, 1],
        chunkSizeXyz: [SHAPE[2], SHAPE[1], SHAPE[0]],
        encoding: type === "image" ? "raw" : "compressed_segmentation",
        ...(type === "segmentation" ? { blockSizeXyz: [8, 8, 8] as Vec3 } : {}),
      },
    ],
  });
  await w.writeChunk(0, [0, 0, 0], type === "image" ? image : labels);
  return `precomputed://file://${join(dir, name)}`;
}

let imageSource: VolumeSource;
let labelSource: VolumeSource;
const whole = { offsetZyx: [1, 2, 3] as Vec3, shapeZyx: SHAPE };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "convert-"));
  const demo = makeDemoVolume(SHAPE, 7, 5);
  labels = demo.labels;
  image = demo.image;
  imageSource = await openVolume(await writeSource("image", "image"), { roots: [dir] });
  labelSource = await openVolume(await writeSource("labels", "segmentation"), { roots: [dir] });
});

afterAll(async () => {
  await imageSource?.close();
  await labelSource?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("convertVolume", () => {
  it("labels to OME-Zarr v3 in small chunks: our reader and zarr-python read the same ids, offset and voxel size", async () => {
    const seen: number[] = [];
    const out = await convertVolume(labelSource, `zarr://file://${join(dir, "labels.zarr")}`, {
      roots: [dir],
      chunkShapeZyx: [8, 16, 16],
      onProgress: (d) => seen.push(d),
    });
    expect(out.chunks).toBe(3 * 4 * 5);
    expect(seen.at(-1)).toBe(60);
    const back = await openVolume(out.url, { roots: [dir] });
    try {
      expect(back.metadata.scales[0]!.offsetZyx).toEqual([1, 2, 3]);
      expect(back.metadata.scales[0]!.voxelSizeNm).toEqual([8, 4, 4]);
      expect(Buffer.from((await back.read(whole, 0)).buffer).equals(Buffer.from(labels.buffer))).toBe(true);
    } finally {
      await back.close();
    }
    const py = execFileSync(PYTHON, ["-c", `import zarr, numpy as np, hashlib; a = zarr.open_group(${JSON.stringify(join(dir, "labels.zarr"))}, mode="r")["s0"][...]; print(a.dtype, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())`], { encoding: "utf8" });
    const sha = (await import("node:crypto")).createHash("sha256").update(Buffer.from(labels.buffer)).digest("hex");
    expect(py.trim()).toBe(`uint64 (${SHAPE.join(", ")}) ${sha}`);
  });

  it("image to precomputed: tensorstore reads the same voxels", async () => {
    const out = await convertVolume(imageSource, `precomputed://file://${join(dir, "image_pc")}`, { roots: [dir], chunkShapeZyx: [16, 32, 32] });
    const info = JSON.parse(readFileSync(join(dir, "image_pc", "info"), "utf8")) as { scales: { encoding: string; voxel_offset: number[] }[] };
    expect(info.scales[0]!.encoding).toBe("raw");
    expect(info.scales[0]!.voxel_offset).toEqual([3, 2, 1]);
    const back = await openVolume(out.url, { roots: [dir] });
    try {
      expect(Buffer.from((await back.read(whole, 0)).buffer).equals(Buffer.from(image))).toBe(true);
    } finally {
      await back.close();
    }
    const py = execFileSync(
      PYTHON,
      ["-c", `import tensorstore as ts, numpy as np, hashlib; t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://${join(dir, "image_pc")}"}).result(); a = np.asarray(t[ts.d["channel"][0]].read().result()).transpose(2, 1, 0); print(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())`],
      { encoding: "utf8" },
    );
    const sha = (await import("node:crypto")).createHash("sha256").update(image).digest("hex");
    expect(py.trim()).toBe(sha);
  });

  it("labels to precomputed are compressed_segmentation", async () => {
    await convertVolume(labelSource, `precomputed://file://${join(dir, "labels_pc")}`, { roots: [dir] });
    const info = JSON.parse(readFileSync(join(dir, "labels_pc", "info"), "utf8")) as { type: string; scales: { encoding: string }[] };
    expect(info.type).toBe("segmentation");
    expect(info.scales[0]!.encoding).toBe("compressed_segmentation");
  });

  it("refuses outputs it cannot write, naming the argument", async () => {
    await expect(convertVolume(imageSource, `n5://file://${join(dir, "x.n5")}`, { roots: [dir] })).rejects.toMatchObject({ field: "out" });
    await expect(convertVolume(imageSource, "zarr://https://example.org/x.zarr", { roots: [dir] })).rejects.toMatchObject({ field: "out" });
    await expect(convertVolume(imageSource, "zarr://file:///etc/spatial-sam-test.zarr", { roots: [dir] })).rejects.toMatchObject({ _tag: "PermissionDenied" });
    expect(existsSync("/etc/spatial-sam-test.zarr")).toBe(false);
  });

  it("runs from the command line with a progress bar and prints the output URL", () => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, "server", "bin", "spatial-sam.js"), "convert", `precomputed://file://${join(dir, "image")}`, `zarr://file://${join(dir, "cli.zarr")}`, "--roots", dir, "--zarr-format", "2"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`zarr://file://${join(dir, "cli.zarr")}`);
  });
});
