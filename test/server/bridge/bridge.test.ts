// The bridge over a real socket: volumes in three source formats re-exposed as precomputed, read
// back through our own precomputed reader (http:// store) and independently by tensorstore, every
// bad path parameter answered 400 naming it, unknown ids 404, CORS and cache headers.
import { execFile } from "node:child_process";
import { createServer, type Server } from "node:http";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCompressedSegmentation } from "#src/codecs/compressed_segmentation.ts";
import { asBytes, viewBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { parsePrecomputedInfo } from "#src/volume/precomputed_info.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { defaultViewerState } from "#server/bridge/viewer_state.ts";
import { silentLogger } from "#server/log.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { writeTiff } from "#server/volume/tiff_writer.ts";
import { blobLabels, PYTHON, rng, tempDir } from "#test/server/volume/precomputed_helpers.ts";

const execFileAsync = promisify(execFile);

// Sizes that are not multiples of the chunk size, and voxel offsets, so edge chunks are truncated.
const IMG_SHAPE_ZYX: Vec3 = [20, 45, 70];
const IMG_CHUNK_ZYX: Vec3 = [8, 16, 32];
const IMG_OFFSET_ZYX: Vec3 = [3, -5, 10];
const SEG_SHAPE_ZYX: Vec3 = [18, 40, 50];
const SEG_CHUNK_ZYX: Vec3 = [16, 16, 16];
const TIFF_SHAPE_ZYX: Vec3 = [5, 12, 9];

let dir: string;
let bridge: Bridge;
let http: Server;
let base: string;
let image0: Uint16Array;
let image1: Uint16Array;
let labels: BigUint64Array;
let tiffData: Float64Array;

const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];
const half = (v: Vec3): Vec3 => [Math.ceil(v[0] / 2), Math.ceil(v[1] / 2), Math.ceil(v[2] / 2)];

/** Writes a whole level as chunks of `chunkZyx` (C-order zyx `data`). */
async function writeLevel(w: PrecomputedWriter, scale: number, data: TypedArray, shapeZyx: Vec3, chunkZyx: Vec3, dtype: DataType) {
  const [Z, Y, X] = shapeZyx;
  for (let cz = 0; cz * chunkZyx[0] < Z; cz++)
    for (let cy = 0; cy * chunkZyx[1] < Y; cy++)
      for (let cx = 0; cx * chunkZyx[2] < X; cx++) {
        const z0 = cz * chunkZyx[0];
        const y0 = cy * chunkZyx[1];
        const x0 = cx * chunkZyx[2];
        const [dz, dy, dx] = [Math.min(chunkZyx[0], Z - z0), Math.min(chunkZyx[1], Y - y0), Math.min(chunkZyx[2], X - x0)];
        const chunk = dtype === "uint64" ? new BigUint64Array(dz * dy * dx) : new Uint16Array(dz * dy * dx);
        for (let z = 0; z < dz; z++)
          for (let y = 0; y < dy; y++)
            for (let x = 0; x < dx; x++) chunk[(z * dy + y) * dx + x] = data[((z0 + z) * Y + y0 + y) * X + x0 + x]!;
        await w.writeChunk(scale, [cz, cy, cx], chunk);
      }
}

async function get(path: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}${path}`, { headers });
  return { status: res.status, headers: res.headers, bytes: new Uint8Array(await res.arrayBuffer()) };
}

async function getJson(path: string, headers: Record<string, string> = {}) {
  const r = await get(path, headers);
  return { ...r, json: JSON.parse(new TextDecoder().decode(r.bytes)) as Record<string, unknown> };
}

async function post(body: string, headers: Record<string, string> = { "Content-Type": "application/json" }) {
  const res = await fetch(`${base}/api/volumes`, { method: "POST", headers, body });
  return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, unknown> };
}

beforeAll(async () => {
  dir = tempDir("bridge");
  const next = rng(7);
  // A two-level uint16 image with a voxel offset; level 1 is an independent array (not a downsampling).
  image0 = Uint16Array.from({ length: IMG_SHAPE_ZYX[0] * IMG_SHAPE_ZYX[1] * IMG_SHAPE_ZYX[2] }, () => Math.floor(next() * 65536));
  const s1 = half(IMG_SHAPE_ZYX);
  image1 = Uint16Array.from({ length: s1[0] * s1[1] * s1[2] }, () => Math.floor(next() * 65536));
  mkdirSync(join(dir, "image"));
  const img = await PrecomputedWriter.create(await FileStore.open(join(dir, "image"), [dir]), {
    type: "image",
    dataType: "uint16",
    numChannels: 1,
    scales: [
      { key: "4_4_40", sizeXyz: xyz(IMG_SHAPE_ZYX), resolutionXyz: [4, 4, 40], voxelOffsetXyz: xyz(IMG_OFFSET_ZYX), chunkSizeXyz: xyz(IMG_CHUNK_ZYX), encoding: "raw" },
      { key: "8_8_80", sizeXyz: xyz(s1), resolutionXyz: [8, 8, 80], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: xyz(IMG_CHUNK_ZYX), encoding: "raw" },
    ],
  });
  await writeLevel(img, 0, image0, IMG_SHAPE_ZYX, IMG_CHUNK_ZYX, "uint16");
  await writeLevel(img, 1, image1, s1, IMG_CHUNK_ZYX, "uint16");
  // uint64 labels (ids beyond 2^53), stored raw so the bridge's compressed_segmentation is its own.
  labels = blobLabels(SEG_SHAPE_ZYX, 30, [0n, 1n, 7n, 2n ** 40n + 3n, 2n ** 63n + 11n], 3);
  mkdirSync(join(dir, "labels"));
  const seg = await PrecomputedWriter.create(await FileStore.open(join(dir, "labels"), [dir]), {
    type: "segmentation",
    dataType: "uint64",
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: xyz(SEG_SHAPE_ZYX), resolutionXyz: [6, 6, 30], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: xyz(SEG_CHUNK_ZYX), encoding: "raw" }],
  });
  await writeLevel(seg, 0, labels, SEG_SHAPE_ZYX, SEG_CHUNK_ZYX, "uint64");
  // A float64 TIFF: served as float32 (Neuroglancer has no float64), scale key "" becomes "s0".
  tiffData = Float64Array.from({ length: TIFF_SHAPE_ZYX[0] * TIFF_SHAPE_ZYX[1] * TIFF_SHAPE_ZYX[2] }, (_, i) => i * 0.25 - 3);
  await writeTiff(join(dir, "vol.tif"), tiffData, "float64", TIFF_SHAPE_ZYX, { voxelSizeNm: [50, 5, 5] });

  bridge = await createBridge({
    roots: [dir],
    log: silentLogger(),
    volumes: [
      { id: "img", url: `precomputed://file://${join(dir, "image")}`, name: "image" },
      { id: "seg", url: `precomputed://file://${join(dir, "labels")}`, name: "labels", mutable: true },
    ],
    corsOrigins: ["https://neuroglancer.example"],
    maxBodyBytes: 1024,
  });
  const app = express();
  app.use(bridge.router);
  http = createServer(app);
  await new Promise<void>((res) => http.listen(0, "127.0.0.1", () => res()));
  const a = http.address();
  base = `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}`;
});

afterAll(async () => {
  await new Promise<void>((res) => (http ? http.close(() => res()) : res()));
  await bridge?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function readAll(v: VolumeSource, scale: number): Promise<TypedArray> {
  const s = v.metadata.scales[scale]!;
  return v.read({ offsetZyx: s.offsetZyx, shapeZyx: s.shapeZyx }, scale);
}

describe("info", () => {
  it("announces every scale of the source with its size, offset, resolution (xyz) and chunking", async () => {
    const r = await getJson("/volumes/img/info");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/application\/json/);
    const info = parsePrecomputedInfo(r.json);
    expect(info).toMatchObject({ type: "image", dataType: "uint16" });
    expect(info.scales).toEqual([
      { key: "4_4_40", sizeXyz: [70, 45, 20], resolutionXyz: [4, 4, 40], voxelOffsetXyz: [10, -5, 3], chunkSizeXyz: [32, 16, 8], encoding: "raw" },
      { key: "8_8_80", sizeXyz: [35, 23, 10], resolutionXyz: [8, 8, 80], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [32, 16, 8], encoding: "raw" },
    ]);
  });

  it("serves uint64 labels as a compressed_segmentation segmentation", async () => {
    const info = parsePrecomputedInfo((await getJson("/volumes/seg/info")).json);
    expect(info.type).toBe("segmentation");
    expect(info.dataType).toBe("uint64");
    expect(info.scales[0]).toMatchObject({ encoding: "compressed_segmentation", blockSizeXyz: [8, 8, 8], chunkSizeXyz: [16, 16, 16] });
  });
});

describe("round trip through our precomputed reader over http://", () => {
  it("reads back the image, every scale, equal to the source (metadata and voxels)", async () => {
    const src = bridge.volumes.get("img").source;
    const back = await openVolume(`precomputed://${base}/volumes/img`, { roots: [] });
    try {
      expect(back.metadata.scales.map(({ key: _k, ...s }) => s)).toEqual(src.metadata.scales.map(({ key: _k, ...s }) => s));
      expect(back.metadata.dtype).toBe("uint16");
      expect(await readAll(back, 0)).toEqual(image0);
      expect(await readAll(back, 1)).toEqual(image1);
    } finally {
      await back.close();
    }
  });

  it("reads back uint64 labels (ids above 2^53 intact) through compressed_segmentation", async () => {
    const back = await openVolume(`precomputed://${base}/volumes/seg`, { roots: [] });
    try {
      expect(back.metadata.kind).toBe("segmentation");
      expect(await readAll(back, 0)).toEqual(labels);
    } finally {
      await back.close();
    }
  });

  it("registers a float64 TIFF by POST and serves it as float32 under scale key s0", async () => {
    const url = `tiff://file://${join(dir, "vol.tif")}`;
    const r = await post(JSON.stringify({ url }));
    expect(r.status).toBe(201);
    expect(r.json).toMatchObject({ url, type: "image", dataType: "float32", precomputedUrl: `precomputed://${base}/volumes/${r.json.id as string}` });
    // Registering the same URL again is idempotent.
    expect((await post(JSON.stringify({ url }))).json.id).toBe(r.json.id);
    const back = await openVolume(r.json.precomputedUrl as string, { roots: [] });
    try {
      const source = bridge.volumes.get(r.json.id as string).source.metadata.scales[0]!;
      expect(back.metadata.scales[0]).toMatchObject({ key: "s0", shapeZyx: TIFF_SHAPE_ZYX, voxelSizeNm: source.voxelSizeNm });
      expect(await readAll(back, 0)).toEqual(Float32Array.from(tiffData));
    } finally {
      await back.close();
    }
    const listed = (await getJson("/api/volumes")).json as unknown as { id: string }[];
    expect(listed.map((v) => v.id)).toEqual(["img", "seg", r.json.id]);
  });

  it("registers a URL with an intensity window as its own volume, which the viewer shows with that contrast", async () => {
    const url = `tiff://file://${join(dir, "vol.tif")}`;
    const plain = await post(JSON.stringify({ url }));
    const windowed = await post(JSON.stringify({ url, intensityWindow: { low: -1, high: 1 } }));
    expect(windowed.status).toBe(201);
    expect(windowed.json.id).not.toBe(plain.json.id);
    expect(windowed.json.intensityWindow).toEqual({ low: -1, high: 1 });
    expect(plain.json.intensityWindow).toBeUndefined();
    const v = bridge.volumes.get(windowed.json.id as string);
    expect(v.intensity).toEqual({ low: -1, high: 1 });
    const layer = (defaultViewerState([v]).layers as Record<string, unknown>[])[0]!;
    expect(layer.shaderControls).toEqual({ normalized: { range: [-1, 1] } });
    // The same id with another window is a conflict, not a silent switch of what the models see.
    const clash = await post(JSON.stringify({ url, id: windowed.json.id, intensityWindow: { low: 0, high: 1 } }));
    expect([clash.status, clash.json.field]).toEqual([409, "id"]);
    await bridge.volumes.remove(windowed.json.id as string);
  });
});

describe("chunks", () => {
  it("a raw chunk's bytes are VolumeSource.read of its box (edge chunk truncated, offset included)", async () => {
    const src = bridge.volumes.get("img").source;
    // Last chunk along every axis: x 10+64..10+70, y -5+32..-5+45, z 3+16..3+20.
    const r = await get("/volumes/img/4_4_40/74-80_27-40_19-23");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/octet-stream");
    expect(r.headers.get("cache-control")).toBe("private, max-age=60");
    const want = await src.read({ offsetZyx: [19, 27, 74], shapeZyx: [4, 13, 6] }, 0);
    expect(r.bytes).toEqual(asBytes(want));
  });

  it("a compressed_segmentation chunk decodes to VolumeSource.read of its box; live volumes are no-store", async () => {
    const src = bridge.volumes.get("seg").source;
    const r = await get("/volumes/seg/s0/16-32_32-40_16-18");
    expect(r.status).toBe(200);
    expect(r.headers.get("cache-control")).toBe("no-store");
    const shape: Vec3 = [2, 8, 16];
    const decoded = decodeCompressedSegmentation(r.bytes, "uint64", shape, [8, 8, 8], "chunk");
    expect(decoded).toEqual(await src.read({ offsetZyx: [16, 32, 16], shapeZyx: shape }, 0));
    expect((await getJson("/volumes/seg/info")).headers.get("cache-control")).toBe("no-store");
  });
});

describe("independent reader: tensorstore over HTTP", () => {
  it("reads the bridge's image (scale 0) and labels equal to the written arrays", async () => {
    const out = join(dir, "ts");
    mkdirSync(out);
    const script = [
      "import sys, numpy as np, tensorstore as ts",
      "base, out = sys.argv[1], sys.argv[2]",
      "for vid in ('img', 'seg'):",
      "    t = ts.open({'driver': 'neuroglancer_precomputed', 'kvstore': f'{base}/volumes/{vid}/', 'scale_index': 0}).result()",
      "    a = t.read().result()[..., 0]",
      "    np.ascontiguousarray(a.transpose(2, 1, 0)).tofile(f'{out}/{vid}.bin')",
      "    print(vid, list(t.domain.inclusive_min), list(t.domain.exclusive_max), t.dtype)",
    ].join("\n");
    // Asynchronous: the bridge answering tensorstore lives in this process.
    const { stdout } = await execFileAsync(PYTHON, ["-c", script, base, out], { timeout: 60_000 });
    expect(stdout).toContain("img [10, -5, 3, 0] [80, 40, 23, 1] dtype(\"uint16\")");
    expect(viewBytes("uint16", new Uint8Array(readFileSync(join(out, "img.bin"))))).toEqual(image0);
    expect(viewBytes("uint64", new Uint8Array(readFileSync(join(out, "seg.bin"))))).toEqual(labels);
  });
});

describe("bad requests", () => {
  it.each([
    ["/volumes/img/4_4_40/10-42_-5-11", "chunk"],
    ["/volumes/img/4_4_40/10-42_-5-11_3-11.bin", "chunk"],
    ["/volumes/img/4_4_40/1e1-42_-5-11_3-11", "chunk"],
    ["/volumes/img/4_4_40/11-43_-5-11_3-11", "chunk.x"],
    ["/volumes/img/4_4_40/10-43_-5-11_3-11", "chunk.x"],
    ["/volumes/img/4_4_40/10-42_-37--21_3-11", "chunk.y"],
    ["/volumes/img/4_4_40/10-42_-5-11_-5-3", "chunk.z"],
    ["/volumes/img/4_4_40/10-42_-5-11_27-35", "chunk.z"],
    ["/volumes/img/4_4_40/10-42_-5-11_19-27", "chunk.z"],
    ["/volumes/img/8_8_80/0-32_0-16_8-16", "chunk.z"],
    ["/volumes/bad.id/info", "id"],
    ["/volumes/bad.id/4_4_40/10-42_-5-11_3-11", "id"],
  ])("GET %s -> 400 naming %s", async (path, field) => {
    const r = await getJson(path);
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: "InvalidArgument", field });
    expect(r.json.message).toMatch(new RegExp(`^${field.replace(".", "\\.")}: `));
  });

  it.each([
    ["/volumes/nope/info", "id"],
    ["/volumes/nope/s0/0-16_0-16_0-16", "id"],
    ["/volumes/img/2_2_20/10-42_-5-11_3-11", "scaleKey"],
  ])("GET %s -> 404 naming %s", async (path, field) => {
    const r = await getJson(path);
    expect(r.status).toBe(404);
    expect(r.json).toMatchObject({ error: "NotFound", field });
  });

  it.each([
    ["malformed JSON", "not json", "body", 400],
    ["not an object", "[1]", "body", 400],
    ["no url", "{}", "url", 400],
    ["url not a string", '{"url": 5}', "url", 400],
    ["url without scheme", '{"url": "nonsense"}', "url", 400],
    ["file outside the roots", JSON.stringify({ url: "precomputed://file:///etc" }), undefined, 403],
    ["bad id", JSON.stringify({ url: "precomputed://file:///x", id: "../etc" }), "id", 400],
    ["id taken by another URL", JSON.stringify({ url: "precomputed://file:///x", id: "img" }), "id", 409],
    ["body over the limit", JSON.stringify({ url: "x".repeat(2000) }), "body", 413],
    ["empty intensity window", JSON.stringify({ url: "precomputed://file:///x", intensityWindow: { low: 1, high: 1 } }), "intensityWindow", 400],
    ["intensity window not an object", JSON.stringify({ url: "precomputed://file:///x", intensityWindow: "0,1" }), "intensityWindow", 400],
    ["intensity window bound not a number", JSON.stringify({ url: "precomputed://file:///x", intensityWindow: { low: 0, high: "1" } }), "intensityWindow.high", 400],
  ])("POST /api/volumes, %s -> %s %i", async (_what, body, field, status) => {
    const r = await post(body);
    expect(r.status).toBe(status);
    if (field !== undefined) expect(r.json.field).toBe(field);
  });
});

describe("CORS", () => {
  it("answers the bridge's own origin and configured origins, nobody else", async () => {
    expect((await get("/volumes/img/info", { Origin: base })).headers.get("access-control-allow-origin")).toBe(base);
    expect((await get("/volumes/img/info", { Origin: "https://neuroglancer.example" })).headers.get("access-control-allow-origin")).toBe(
      "https://neuroglancer.example",
    );
    const foreign = await get("/volumes/img/info", { Origin: "https://evil.example" });
    expect(foreign.status).toBe(200);
    expect(foreign.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("refuses state changes from a foreign origin", async () => {
    const r = await post(JSON.stringify({ url: `precomputed://file://${join(dir, "image")}` }), {
      "Content-Type": "application/json",
      Origin: "https://evil.example",
    });
    expect(r.status).toBe(403);
    expect(r.json.field).toBe("origin");
  });
});

describe("viewer state", () => {
  it("opens the start-up volumes by spatialsam:// id, segmentation as a segmentation layer with its segments selected, in 4 panels", async () => {
    const r = await getJson("/api/viewer/state");
    expect(r.json.layout).toBe("4panel");
    // Every segment is selected (so the 3D panel meshes it), largest first.
    const counts = new Map<bigint, number>();
    for (const id of labels) if (id !== 0n) counts.set(id, (counts.get(id) ?? 0) + 1);
    const bySize = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([id]) => id.toString());
    expect(bySize).toHaveLength(4);
    expect(r.json.layers).toEqual([
      { type: "image", source: "spatialsam://img", name: "image" },
      { type: "segmentation", source: "spatialsam://seg", name: "labels", selectedAlpha: 0.45, segments: bySize },
    ]);
    expect(r.json.dimensions).toEqual({ x: [4e-9, "m"], y: [4e-9, "m"], z: [4e-8, "m"] });
    expect(r.json.position).toEqual([10 + 35, -5 + 22.5, 3 + 10]);
  });
});
