// Live sessions on a box of a volume larger than the bridge's session limit (the golden propagator
// volume, placed at a voxel offset): without a box the bridge refuses naming `box`; with one, the
// masks land in the live volume exactly where the inference server's own session on that box puts
// them (volume coordinates), nothing outside the box is written, and prompts, propagation and
// segment-in-view outside the box are refused naming the field.
import type { Server } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCompressedSegmentation } from "#src/codecs/compressed_segmentation.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { SegmentationClient } from "#server/bridge/segmentation_client.ts";
import { silentLogger } from "#server/log.ts";
import type { RunningServer } from "#server/serve.ts";
import { closeHttp, listenRouter, startTestServer } from "#test/helpers/test_server.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const [Z, Y, X] = (JSON.parse(readFileSync(join(golden, "session.json"), "utf8")) as { shape_zyx: Vec3 }).shape_zyx;
const CHUNK_ZYX: Vec3 = [4, 32, 32];
// A voxel offset, so volume and box coordinates differ from array indices.
const OFFSET: Vec3 = [4, 16, 32];
// 10 x 40 x 40 = 16000 voxels of the 12 x 64 x 64 = 49152: over the limit whole, within it boxed.
const MAX_SESSION_VOXELS = 20_000;
const BOX: Box3 = { offsetZyx: [OFFSET[0] + 2, OFFSET[1] + 24, OFFSET[2] + 24], shapeZyx: [10, 40, 40] };
const boxBody = { x0: BOX.offsetZyx[2], y0: BOX.offsetZyx[1], z0: BOX.offsetZyx[0], x1: BOX.offsetZyx[2] + 40, y1: BOX.offsetZyx[1] + 40, z1: BOX.offsetZyx[0] + 10 };
// The golden session's box prompt on object 2 (corner pixels included there; half-open here), in volume coordinates.
const PROMPT_Z = OFFSET[0] + 8;
const PROMPT_BOX = { x0: OFFSET[2] + 46, y0: OFFSET[1] + 55, x1: OFFSET[2] + 59, y1: OFFSET[1] + 64 };

let server: RunningServer;
let bridge: Bridge;
let http: Server;
let base: string;
let dir: string;
let imageUrl: string;
let sdfUrl: string;

type Json = Record<string, unknown>;

async function api(method: string, path: string, body?: unknown) {
  const res = await fetch(`${base}${path}`, { method, headers: { "Content-Type": "application/json" }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, json: (text === "" ? {} : JSON.parse(text)) as Json };
}

/** The live volume as served (every chunk over HTTP, decoded), as a C-order array over the level. */
async function liveVolume(volumeId: string): Promise<BigUint64Array> {
  const info = (await api("GET", `/volumes/${volumeId}/info`)).json as { scales: { key: string; voxel_offset: number[]; compressed_segmentation_block_size: Vec3 }[] };
  const scale = info.scales[0]!;
  expect(scale.voxel_offset).toEqual([OFFSET[2], OFFSET[1], OFFSET[0]]);
  const out = new BigUint64Array(Z * Y * X);
  for (let z = 0; z < Z; z += CHUNK_ZYX[0])
    for (let y = 0; y < Y; y += CHUNK_ZYX[1])
      for (let x = 0; x < X; x += CHUNK_ZYX[2]) {
        const [vz, vy, vx] = [z + OFFSET[0], y + OFFSET[1], x + OFFSET[2]];
        const res = await fetch(`${base}/volumes/${volumeId}/${scale.key}/${vx}-${vx + CHUNK_ZYX[2]}_${vy}-${vy + CHUNK_ZYX[1]}_${vz}-${vz + CHUNK_ZYX[0]}`);
        expect(res.status).toBe(200);
        const chunk = decodeCompressedSegmentation(new Uint8Array(await res.arrayBuffer()), "uint64", CHUNK_ZYX, scale.compressed_segmentation_block_size, "chunk") as BigUint64Array;
        for (let dz = 0; dz < CHUNK_ZYX[0]; dz++)
          for (let dy = 0; dy < CHUNK_ZYX[1]; dy++)
            for (let dx = 0; dx < CHUNK_ZYX[2]; dx++) out[((z + dz) * Y + y + dy) * X + x + dx] = chunk[(dz * CHUNK_ZYX[1] + dy) * CHUNK_ZYX[2] + dx]!;
      }
  return out;
}

const inBox = (z: number, y: number, x: number) =>
  z + OFFSET[0] >= BOX.offsetZyx[0] && z + OFFSET[0] < BOX.offsetZyx[0] + BOX.shapeZyx[0] && y + OFFSET[1] >= BOX.offsetZyx[1] && y + OFFSET[1] < BOX.offsetZyx[1] + BOX.shapeZyx[1] && x + OFFSET[2] >= BOX.offsetZyx[2] && x + OFFSET[2] < BOX.offsetZyx[2] + BOX.shapeZyx[2];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "live-session-box-test-"));
  server = await startTestServer(dir, { propagation: { dir: join(golden, "model"), maxSessions: 8 } });
  imageUrl = await writePrecomputedArray(dir, "image", "uint8", readNpy(join(golden, "image.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX, offsetZyx: OFFSET });
  sdfUrl = await writePrecomputedArray(dir, "sdf", "float32", readNpy(join(golden, "sdf.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX, offsetZyx: OFFSET });
  bridge = await createBridge({
    roots: [dir],
    log: silentLogger(),
    volumes: [
      { id: "image", url: imageUrl },
      { id: "sdf", url: sdfUrl },
    ],
    live: { grpcTarget: server.grpc.address, sdfVolumes: { image: "sdf" }, maxSessionVoxels: MAX_SESSION_VOXELS, segmentOutputDir: join(dir, "segment") },
  });
  ({ http, base } = await listenRouter(bridge.router));
});

afterAll(async () => {
  await closeHttp(http);
  await bridge?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("live sessions on a box of a large volume", () => {
  it("refuses a session without a box, or a box over the limit, naming box", async () => {
    const whole = await api("POST", "/api/sessions", { volumeId: "image" });
    expect(whole.status).toBe(400);
    expect(whole.json).toMatchObject({ field: "box" });
    const big = await api("POST", "/api/sessions", { volumeId: "image", box: { ...boxBody, y0: boxBody.y0 - 20 } });
    expect(big.status).toBe(400);
    expect(big.json).toMatchObject({ field: "box" });
    expect((await api("POST", "/api/sessions", { volumeId: "image", box: { ...boxBody, x1: boxBody.x0 } })).json).toMatchObject({ field: "box.x1" });
    expect((await api("POST", "/api/sessions", { volumeId: "image", box: { ...boxBody, z0: 1.5 } })).json).toMatchObject({ field: "box.z0" });
    expect((await api("POST", "/api/sessions", { volumeId: "image", box: { ...boxBody, x0: 10_000, x1: 10_010 } })).json).toMatchObject({ field: "box.x0" });
    expect((await api("POST", "/api/sessions", { volumeId: "image", box: boxBody, startZ: OFFSET[0] })).json).toMatchObject({ field: "startZ" });
  });

  it("writes the server's masks for the box at their volume coordinates; refuses prompts, propagation and segment-view outside it", async () => {
    // The view reaches past the volume's far corner: clamped to it, the box is BOX.
    const created = await api("POST", "/api/sessions", { volumeId: "image", box: { ...boxBody, x1: boxBody.x1 + 100, y1: boxBody.y1 + 7, z1: boxBody.z1 + 3 }, startZ: PROMPT_Z });
    expect(created.status).toBe(201);
    const { sessionId, liveVolumeId } = created.json as { sessionId: string; liveVolumeId: string };
    expect(created.json["box"]).toEqual(BOX);
    expect(created.json["level"]).toEqual({ offsetZyx: OFFSET, shapeZyx: [Z, Y, X] });
    expect(created.json["maxSessionVoxels"]).toBe(MAX_SESSION_VOXELS);

    const prompt = { objectId: "2", z: PROMPT_Z, box: PROMPT_BOX, points: [{ x: PROMPT_BOX.x0 + 6.5, y: PROMPT_BOX.y0 + 4.5, label: "positive" }] };
    const r = await api("POST", `/api/sessions/${sessionId}/prompts`, prompt);
    expect(r.status).toBe(200);

    // The reference: the inference server's own session on the same box, asked directly over gRPC.
    const client = new SegmentationClient({ target: server.grpc.address });
    const expected = new BigUint64Array(Z * Y * X);
    try {
      const volumeId = await client.openVolume(imageUrl);
      const sdfVolumeId = await client.openVolume(sdfUrl);
      const wire = { offset: { z: BOX.offsetZyx[0], y: BOX.offsetZyx[1], x: BOX.offsetZyx[2] }, shape: { z: BOX.shapeZyx[0], y: BOX.shapeZyx[1], x: BOX.shapeZyx[2] } };
      const sid = await client.startSession({ volumeId, box: wire, scale: 0, model: "", sdfModel: "", sdfVolumeId });
      const res = await client.addPrompts({ sessionId: sid, objectId: 2n, z: PROMPT_Z, points: [{ x: PROMPT_BOX.x0 + 6, y: PROMPT_BOX.y0 + 4, label: 1 }], box: { ...PROMPT_BOX }, clearOld: false });
      await client.closeSession(sid);
      for (const m of res.masks) {
        const b = m.bbox!;
        const w = b.x1 - b.x0;
        for (let y = b.y0; y < b.y1; y++)
          for (let x = b.x0; x < b.x1; x++) if (m.data[(y - b.y0) * w + (x - b.x0)]) expected[((m.z - OFFSET[0]) * Y + (y - OFFSET[1])) * X + (x - OFFSET[2])] = m.objectId;
      }
    } finally {
      client.close();
    }
    expect(expected.filter((v) => v === 2n).length).toBeGreaterThan(10);
    const live = await liveVolume(liveVolumeId);
    expect(live).toEqual(expected);

    // Propagation stays inside the box's slices and xy extent.
    const p = await api("POST", `/api/sessions/${sessionId}/propagate`, { direction: "backward", maxSlices: 3 });
    expect(p.status).toBe(200);
    expect(p.json).toMatchObject({ slices: 3, cancelled: false });
    const after = await liveVolume(liveVolumeId);
    let written = 0;
    for (let z = 0; z < Z; z++)
      for (let y = 0; y < Y; y++)
        for (let x = 0; x < X; x++) {
          if (after[(z * Y + y) * X + x] === 0n) continue;
          written++;
          expect(inBox(z, y, x)).toBe(true);
          expect(z + OFFSET[0]).toBeGreaterThan(PROMPT_Z - 3);
        }
    expect(written).toBeGreaterThan(expected.filter((v) => v === 2n).length);

    // Outside the box: refused before anything reaches the server.
    const outside = [
      [{ objectId: "3", z: PROMPT_Z, points: [{ x: BOX.offsetZyx[2] - 1, y: PROMPT_BOX.y0, label: "positive" }] }, "points[0].x"],
      [{ objectId: "3", z: BOX.offsetZyx[0] - 1, points: [{ x: PROMPT_BOX.x0, y: PROMPT_BOX.y0, label: "positive" }] }, "z"],
      [{ objectId: "3", z: PROMPT_Z, box: { x0: BOX.offsetZyx[2] - 4, y0: PROMPT_BOX.y0, x1: PROMPT_BOX.x1, y1: PROMPT_BOX.y1 } }, "box.x0"],
    ] as const;
    for (const [body, field] of outside) {
      const o = await api("POST", `/api/sessions/${sessionId}/prompts`, body);
      expect(o.status).toBe(400);
      expect(o.json["field"]).toBe(field);
    }
    expect((await api("POST", `/api/sessions/${sessionId}/propagate`, { startZ: BOX.offsetZyx[0] - 1 })).json).toMatchObject({ field: "startZ" });
    const view = await api("POST", `/api/sessions/${sessionId}/segment-view`, { box: { ...boxBody, y0: boxBody.y0 - 1 } });
    expect(view.status).toBe(400);
    expect(view.json["field"]).toBe("box");
    expect(await liveVolume(liveVolumeId)).toEqual(after);
    expect((await api("DELETE", `/api/sessions/${sessionId}`)).status).toBe(204);
  });
});
