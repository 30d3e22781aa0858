// Blockwise SDF against a whole-volume run of the same model: with a context that covers the
// model's receptive field, stitching blocks must give exactly the whole-volume result; blocks are
// cached, shared between concurrent requests, cancellable, and served to clients in turn.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeDemoVolume } from "#src/demo_volume.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { silentLogger } from "#server/log.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const SHAPE: Vec3 = [20, 45, 70]; // not a multiple of the block shape on any axis
const BLOCK: Vec3 = [8, 16, 32];

let dir: string;
let registry: ModelRegistry;
let volume: VolumeSource;
let image: Uint8Array;
let whole: Float32Array;

async function freshEngine(cacheName: string) {
  return new SdfEngine({ registry, cacheDir: join(dir, cacheName), log: silentLogger(), concurrency: 1, defaultBlockShapeZyx: BLOCK });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sdf-engine-"));
  image = makeDemoVolume(SHAPE, 3, 6).image;
  volume = await openVolume(await writePrecomputedArray(dir, "image", "uint8", image, SHAPE), { roots: [dir] });
  registry = await ModelRegistry.load(join(root, "test", "fixtures", "models"), { logger: silentLogger(), workers: 1, intraOpThreads: 1, maxQueuePerModel: 64 });
  // Reference: the model on the whole volume at once (its own zero padding at the borders).
  const input = Float32Array.from(image, (v) => v / 255);
  const out = await registry.run("tiny_conv3d", { image: { dtype: "float32", dims: [1, 1, ...SHAPE], data: input } });
  whole = (out.out!.data as Float32Array).slice(0, SHAPE[0] * SHAPE[1] * SHAPE[2]);
});

afterAll(async () => {
  await volume?.close();
  await registry?.close();
  rmSync(dir, { recursive: true, force: true });
});

const fullBox = { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: SHAPE };

describe("SdfEngine", () => {
  it("stitches blocks into exactly the whole-volume result, readable as a precomputed volume", async () => {
    const engine = await freshEngine("cache-a");
    const seen: number[] = [];
    const result = await engine.compute({ volume, volumeKey: "v", box: fullBox, scale: 0, model: "tiny_conv3d", onProgress: (p) => seen.push(p.blocksDone) });
    expect(result.blocksTotal).toBe(3 * 3 * 3);
    expect(result.blocksCached).toBe(0);
    expect(seen.at(-1)).toBe(27);
    const sdf = await openVolume(result.resultUrl, { roots: [dir] });
    try {
      expect(sdf.metadata.dtype).toBe("float32");
      expect(sdf.metadata.scales[0]!.shapeZyx).toEqual(SHAPE);
      expect(sdf.metadata.scales[0]!.voxelSizeNm).toEqual([5, 5, 5]);
      const got = (await sdf.read(fullBox, 0)) as Float32Array;
      let maxDiff = 0;
      for (let i = 0; i < whole.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i]! - whole[i]!));
      expect(maxDiff).toBeLessThan(1e-5);
    } finally {
      await sdf.close();
    }
  });

  it("computes each block once: a repeated request is all cache hits and runs no model", async () => {
    const engine = await freshEngine("cache-b");
    await engine.compute({ volume, volumeKey: "v", box: fullBox, scale: 0, model: "tiny_conv3d" });
    const before = registry.stats().dispatched;
    // A new engine on the same cache folder (a restarted server) finds the blocks on disk.
    const again = await (await freshEngine("cache-b")).compute({ volume, volumeKey: "v", box: fullBox, scale: 0, model: "tiny_conv3d" });
    expect(again.blocksCached).toBe(27);
    expect(registry.stats().dispatched).toBe(before);
  });

  it("shares blocks between concurrent overlapping requests and computes only the blocks a box needs", async () => {
    const engine = await freshEngine("cache-c");
    const before = registry.stats().dispatched;
    const a = { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: [8, 32, 64] as Vec3 }; // blocks z0, y0-1, x0-1: 4
    const b = { offsetZyx: [4, 16, 32] as Vec3, shapeZyx: [4, 16, 32] as Vec3 }; // block (0,1,1), also in a
    const [ra, rb] = await Promise.all([
      engine.compute({ volume, volumeKey: "v", box: a, scale: 0, model: "tiny_conv3d" }),
      engine.compute({ volume, volumeKey: "v", box: b, scale: 0, model: "tiny_conv3d" }),
    ]);
    expect(ra.blocksTotal).toBe(4);
    expect(rb.blocksTotal).toBe(1);
    expect(registry.stats().dispatched - before).toBe(4);
  });

  it("stops when cancelled, and a later request completes the work", async () => {
    const engine = await freshEngine("cache-d");
    const controller = new AbortController();
    let done = 0;
    const p = engine.compute({
      volume,
      volumeKey: "v",
      box: fullBox,
      scale: 0,
      model: "tiny_conv3d",
      signal: controller.signal,
      onProgress: (pr) => {
        done = pr.blocksDone;
        if (pr.blocksDone >= 2) controller.abort();
      },
    });
    await expect(p).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(done).toBeLessThan(27);
    const rest = await engine.compute({ volume, volumeKey: "v", box: fullBox, scale: 0, model: "tiny_conv3d" });
    expect(rest.blocksCached).toBeGreaterThanOrEqual(2);
    expect(rest.blocksDone).toBe(27);
  });

  it("rejects unknown models, scales and boxes outside the volume, naming the field", async () => {
    const engine = await freshEngine("cache-e");
    await expect(engine.compute({ volume, volumeKey: "v", box: fullBox, scale: 0, model: "nope" })).rejects.toMatchObject({ _tag: "NotFound", field: "model" });
    await expect(engine.compute({ volume, volumeKey: "v", box: fullBox, scale: 3, model: "tiny_conv3d" })).rejects.toMatchObject({ _tag: "InvalidArgument", field: "scale" });
    await expect(
      engine.compute({ volume, volumeKey: "v", box: { offsetZyx: [0, 0, 0], shapeZyx: [21, 45, 70] }, scale: 0, model: "tiny_conv3d" }),
    ).rejects.toMatchObject({ _tag: "InvalidArgument", field: "box.shape" });
  });

  it("runs a 16-bit volume through its intensity window: 8-bit data stored as x16 + 1000 gives exactly the uint8 SDF", async () => {
    const v16 = await openVolume(await writePrecomputedArray(dir, "image16", "uint16", Uint16Array.from(image, (v) => v * 16 + 1000), SHAPE), { roots: [dir] });
    try {
      const engine = await freshEngine("cache-16");
      const req = { volume: v16, volumeKey: "v16", box: fullBox, scale: 0, model: "tiny_conv3d" };
      // Without a window nothing is computed: the error names the window.
      await expect(engine.compute(req)).rejects.toMatchObject({ _tag: "InvalidArgument", field: "intensity_window" });
      await expect(engine.compute({ ...req, intensity: { low: 5, high: 5 } })).rejects.toMatchObject({ _tag: "InvalidArgument", field: "intensity_window" });
      const result = await engine.compute({ ...req, intensity: { low: 1000, high: 5080 } });
      expect(result.blocksCached).toBe(0);
      const sdf = await openVolume(result.resultUrl, { roots: [dir] });
      try {
        expect(Array.from((await sdf.read(fullBox, 0)) as Float32Array)).toEqual(Array.from(whole));
      } finally {
        await sdf.close();
      }
      // Another window is another input: its SDF is a separate cache entry, not the first one's blocks.
      const other = await engine.compute({ ...req, intensity: { low: 1000, high: 9160 } });
      expect(other.resultUrl).not.toBe(result.resultUrl);
      expect(other.blocksCached).toBe(0);
      const again = await engine.compute({ ...req, intensity: { low: 1000, high: 5080 } });
      expect(again.blocksCached).toBe(again.blocksTotal);
    } finally {
      await v16.close();
    }
  });

  it.each([
    [true, "BA"],
    [false, "AB"],
  ])("fairShare %s: another client's one-block request completes in the order %s against a 27-block request", async (fairShare, expected) => {
    const engine = new SdfEngine({ registry, cacheDir: join(dir, `cache-fair-${fairShare}`), log: silentLogger(), concurrency: 1, defaultBlockShapeZyx: BLOCK, fairShare });
    const corner = (z: number) => ({ offsetZyx: [z, 0, 0] as Vec3, shapeZyx: BLOCK });
    // B's cache layout exists already, so its request below queues its block at once.
    await engine.compute({ volume, volumeKey: "b", box: corner(BLOCK[0]), scale: 0, model: "tiny_conv3d", client: "B" });
    const order: string[] = [];
    let scheduled!: () => void;
    const allQueued = new Promise<void>((r) => (scheduled = r));
    // The first progress report comes once every block of the request is queued.
    const a = engine.compute({ volume, volumeKey: "a", box: fullBox, scale: 0, model: "tiny_conv3d", client: "A", onProgress: () => scheduled() });
    await allQueued;
    const b = engine.compute({ volume, volumeKey: "b", box: corner(0), scale: 0, model: "tiny_conv3d", client: "B" });
    await Promise.all([a.then(() => order.push("A")), b.then(() => order.push("B"))]);
    expect(order.join("")).toBe(expected);
    expect((await a).blocksTotal).toBe(27);
  });
});

describe("SdfEngine.blockShape", () => {
  it("runs the model on inputs of the manifest's patch; the default block only where the patch holds none", async () => {
    const engine = await freshEngine("cache-f");
    const manifest = registry.get("tiny_conv3d")!.manifest;
    // A U-Net trained on 32x96x96 crops with a 48-voxel context: patch - 2*context is negative.
    expect(engine.blockShape({ ...manifest, patchShapeZyx: [32, 96, 96], contextZyx: [48, 48, 48] })).toEqual(BLOCK);
    // No patch: the default block.
    expect(engine.blockShape({ ...manifest, patchShapeZyx: undefined, contextZyx: [4, 4, 4] })).toEqual(BLOCK);
    // A large patch gives a larger block.
    expect(engine.blockShape({ ...manifest, patchShapeZyx: [64, 160, 160], contextZyx: [8, 8, 8] })).toEqual([48, 144, 144]);
    // A thin patch is honoured, smaller than the default block (the shipped Lucchi++ U-Net: 48-slice
    // inputs score better than deeper ones), and rounded down to the pooling multiple.
    expect(engine.blockShape({ ...manifest, patchShapeZyx: [48, 352, 352], contextZyx: [16, 48, 48], sizeMultipleZyx: [16, 16, 16] })).toEqual([16, 256, 256]);
    expect(engine.blockShape({ ...manifest, patchShapeZyx: [50, 360, 360], contextZyx: [16, 48, 48], sizeMultipleZyx: [16, 16, 16] })).toEqual([16, 256, 256]);
    // Left with less than one multiple on an axis: that axis falls back to the default block.
    expect(engine.blockShape({ ...manifest, patchShapeZyx: [48, 100, 352], contextZyx: [16, 48, 48], sizeMultipleZyx: [16, 16, 16] })).toEqual([16, BLOCK[1], 256]);
  });
});
