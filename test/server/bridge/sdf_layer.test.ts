// The SDF companion layer over a real socket with a real ONNX model (the tiny_conv3d fixture):
// nothing is computed until a chunk is requested, one chunk runs the model on exactly one block,
// its values are the SdfEngine's own output for that box, and a repeated request is a cache hit.
import type { Server } from "node:http";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeDemoVolume } from "#src/demo_volume.ts";
import { parsePrecomputedInfo } from "#src/volume/precomputed_info.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { silentLogger } from "#server/log.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";
import { closeHttp, listenRouter } from "#test/helpers/test_server.ts";
import { tempDir } from "#test/server/volume/precomputed_helpers.ts";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const SHAPE: Vec3 = [20, 45, 70]; // not a multiple of the block on any axis
const OFFSET: Vec3 = [3, -5, 10];
const BLOCK: Vec3 = [8, 16, 32];
const MODEL = "tiny_conv3d";

let dir: string;
let registry: ModelRegistry;
let engine: SdfEngine;
let bridge: Bridge;
let http: Server;
let base: string;
let imageUrl: string;

beforeAll(async () => {
  dir = tempDir("sdf-layer");
  const demo = makeDemoVolume(SHAPE, 3, 6);
  imageUrl = await writePrecomputedArray(dir, "image", "uint8", demo.image, SHAPE, [5, 5, 5], { chunkZyx: [8, 32, 32], offsetZyx: OFFSET });
  const labelsUrl = await writePrecomputedArray(dir, "labels", "uint64", demo.labels, SHAPE, [5, 5, 5], { type: "segmentation" });
  registry = await ModelRegistry.load(join(ROOT, "test", "fixtures", "models"), { logger: silentLogger(), workers: 1, intraOpThreads: 1, maxQueuePerModel: 64 });
  engine = new SdfEngine({ registry, cacheDir: join(dir, "sdf-cache"), log: silentLogger(), concurrency: 1, defaultBlockShapeZyx: BLOCK });
  bridge = await createBridge({
    roots: [dir],
    log: silentLogger(),
    volumes: [
      { id: "img", url: imageUrl, name: "image" },
      { id: "labels", url: labelsUrl },
    ],
    sdf: { engine, registry, model: MODEL },
  });
  ({ http, base } = await listenRouter(bridge.router));
});

afterAll(async () => {
  await closeHttp(http);
  await bridge?.close();
  await registry?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function get(path: string) {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, bytes: new Uint8Array(await res.arrayBuffer()) };
}

const json = (bytes: Uint8Array) => JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;

/** Chunk files the engine has written (its cache is a precomputed volume per volume and model). */
function cachedChunks(): string[] {
  const root = join(dir, "sdf-cache");
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, encoding: "utf8" }).filter((p) => /\/sdf\/[^/]+$/.test(p));
}

/** The chunk name of block (bz, by, bx), in volume coordinates (the offset included). */
function blockBox(b: Vec3): Box3 {
  const offsetZyx = [0, 1, 2].map((d) => OFFSET[d]! + b[d]! * BLOCK[d]!) as Vec3;
  return { offsetZyx, shapeZyx: [0, 1, 2].map((d) => Math.min(BLOCK[d]!, OFFSET[d]! + SHAPE[d]! - offsetZyx[d]!)) as Vec3 };
}
const nameOf = (b: Box3) => [2, 1, 0].map((d) => `${b.offsetZyx[d]}-${b.offsetZyx[d]! + b.shapeZyx[d]!}`).join("_");

describe("SDF companion layer", () => {
  it("is announced for image volumes only, as float32 with one SDF block per chunk, and computes nothing up front", async () => {
    const r = await get("/volumes/img-sdf/info");
    expect(r.status).toBe(200);
    const info = parsePrecomputedInfo(json(r.bytes));
    expect(info).toMatchObject({ type: "image", dataType: "float32" });
    expect(info.scales).toEqual([{ key: "sdf", sizeXyz: [70, 45, 20], resolutionXyz: [5, 5, 5], voxelOffsetXyz: [10, -5, 3], chunkSizeXyz: [32, 16, 8], encoding: "raw" }]);
    expect((await get("/volumes/labels-sdf/info")).status).toBe(404);
    expect(json((await get("/volumes/nope-sdf/info")).bytes)).toMatchObject({ error: "NotFound", field: "id" });
    expect(json((await get("/volumes/img-sdf/s0/10-42_-5-11_3-11")).bytes)).toMatchObject({ error: "NotFound", field: "scaleKey" });
    expect(bridge.sdf!.stats).toEqual({ reads: 0, blocksComputed: 0, blocksCached: 0 });
    expect(registry.stats().dispatched).toBe(0);
    expect(cachedChunks()).toEqual([]);
  });

  it("shows the SDF as a hidden image layer after its image in the default viewer state", async () => {
    const state = json((await get("/api/viewer/state")).bytes) as { layers: Record<string, unknown>[] };
    expect(state.layers.map((l) => [l.source, l.visible])).toEqual([
      ["spatialsam://img", undefined],
      ["spatialsam://img-sdf", false],
      ["spatialsam://labels", undefined],
    ]);
    expect(state.layers[1]!.shader).toMatch(/invlerp/);
  });

  it("computes exactly the requested chunk's block, equal to the SdfEngine's own output, and serves it again from the cache", async () => {
    const box = blockBox([1, 1, 1]);
    const r = await get(`/volumes/img-sdf/sdf/${nameOf(box)}`);
    expect(r.status).toBe(200);
    const got = new Float32Array(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength / 4);
    expect(got.length).toBe(box.shapeZyx[0] * box.shapeZyx[1] * box.shapeZyx[2]);
    // One model run, one block written.
    expect(registry.stats().dispatched).toBe(1);
    expect(bridge.sdf!.stats).toEqual({ reads: 1, blocksComputed: 1, blocksCached: 0 });
    expect(cachedChunks()).toHaveLength(1);

    // Reference: a fresh engine (own cache) computing the whole volume; the chunk is its box.
    const reference = new SdfEngine({ registry, cacheDir: join(dir, "reference-cache"), log: silentLogger(), concurrency: 1, defaultBlockShapeZyx: BLOCK });
    const image = await openVolume(imageUrl, { roots: [dir] });
    const whole = await reference.compute({ volume: image, volumeKey: imageUrl, box: { offsetZyx: OFFSET, shapeZyx: SHAPE }, scale: 0, model: MODEL });
    const sdf = await openVolume(whole.resultUrl, { roots: [dir] });
    try {
      expect(Array.from(got)).toEqual(Array.from((await sdf.read(box, 0)) as Float32Array));
      expect(got.some((v) => v !== 0)).toBe(true);
    } finally {
      await sdf.close();
      await image.close();
    }

    const dispatched = registry.stats().dispatched;
    const again = await get(`/volumes/img-sdf/sdf/${nameOf(box)}`);
    expect(again.bytes).toEqual(r.bytes);
    expect(registry.stats().dispatched).toBe(dispatched);
    expect(bridge.sdf!.stats).toEqual({ reads: 2, blocksComputed: 1, blocksCached: 1 });
  });

  it("serves truncated edge chunks and gives volumes registered later their companion", async () => {
    const edge = blockBox([2, 2, 2]);
    expect(edge.shapeZyx).toEqual([4, 13, 6]);
    const r = await get(`/volumes/img-sdf/sdf/${nameOf(edge)}`);
    expect(r.status).toBe(200);
    expect(r.bytes.byteLength).toBe(4 * 4 * 13 * 6);

    const res = await fetch(`${base}/api/volumes`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url: imageUrl, id: "again" }) });
    expect(res.status).toBe(201);
    expect((await get("/volumes/again-sdf/info")).status).toBe(200);
  });

  it("gives a 16-bit volume a companion only with an intensity window, and then the 8-bit original's SDF", async () => {
    const demo = makeDemoVolume(SHAPE, 3, 6);
    const url16 = await writePrecomputedArray(dir, "image16", "uint16", Uint16Array.from(demo.image, (v) => v * 16 + 1000), SHAPE, [5, 5, 5], {
      chunkZyx: [8, 32, 32],
      offsetZyx: OFFSET,
    });
    const register = (body: Record<string, unknown>) =>
      fetch(`${base}/api/volumes`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url: url16, ...body }) });
    expect((await register({ id: "raw16" })).status).toBe(201);
    expect((await get("/volumes/raw16-sdf/info")).status).toBe(404); // the models cannot read raw 16-bit values
    expect((await register({ id: "win16", intensityWindow: { low: 1000, high: 5080 } })).status).toBe(201);
    const chunk = nameOf(blockBox([1, 0, 1]));
    const windowed = await get(`/volumes/win16-sdf/sdf/${chunk}`);
    const original = await get(`/volumes/img-sdf/sdf/${chunk}`);
    expect([windowed.status, original.status]).toEqual([200, 200]);
    expect(Buffer.from(windowed.bytes).equals(Buffer.from(original.bytes))).toBe(true);
  });
});
