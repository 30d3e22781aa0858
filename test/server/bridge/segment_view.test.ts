// "Segment everything in view" through the bridge's HTTP API, with the bridge as a gRPC client of a
// separate inference server (golden propagator fixture, its SDF as memory): the instances the
// server's SegmentVolume finds in the box (the same RPC called directly is the reference) land in
// the live volume under new ids, only inside the box, the user's object untouched; the event stream
// reports progress and names exactly the chunks and objects that changed; a newer request cancels
// a running one; bad boxes are 400 naming the field.
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SegmentVolumeRequest, SegmentVolumeResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { silentLogger } from "#server/log.ts";
import type { RunningServer } from "#server/serve.ts";
import { closeHttp, listenRouter, startTestServer } from "#test/helpers/test_server.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { collect, connect, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const [Z, Y, X] = readNpy(join(golden, "image.npy")).shape as Vec3;
const CHUNK_ZYX: Vec3 = [4, 32, 32];
const MAX_VOXELS = 40_000;

let server: RunningServer;
let bridge: Bridge;
let http: Server;
let clients: Clients;
let base: string;
let dir: string;
let imageUrl: string;
let sdfUrl: string;

type Json = Record<string, unknown>;

async function api(method: string, path: string, body?: unknown) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { "Content-Type": "application/json", "X-Client-Id": "tab-main" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: (text === "" ? {} : JSON.parse(text)) as Json };
}

/** Server-Sent Events of a session: every event (name and data) in arrival order. */
async function events(path: string) {
  const abort = new AbortController();
  const res = await fetch(`${base}${path}`, { signal: abort.signal });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const next = async (): Promise<{ event: string; data: Json }> => {
    for (;;) {
      const end = buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event !== undefined && data !== undefined) return { event, data: JSON.parse(data) as Json };
        continue;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("event stream ended");
      buffer += decoder.decode(value, { stream: true });
    }
  };
  return { next, close: () => abort.abort() };
}

/** The instances SegmentVolume writes for `box`, called directly on the server (the reference). */
async function reference(box: Box3, name: string): Promise<BigUint64Array> {
  const image = await grpcOpenVolume(clients, { url: imageUrl });
  const sdf = await grpcOpenVolume(clients, { url: sdfUrl });
  const outputUrl = `precomputed://file://${join(dir, name)}`;
  const req: SegmentVolumeRequest = {
    volumeId: image.volume!.volumeId,
    box: { offset: { z: box.offsetZyx[0], y: box.offsetZyx[1], x: box.offsetZyx[2] }, shape: { z: box.shapeZyx[0], y: box.shapeZyx[1], x: box.shapeZyx[2] } },
    scale: 0,
    model: "",
    sdfModel: "",
    sdfVolumeId: sdf.volume!.volumeId,
    outputUrl,
    propagatedOnly: false,
  };
  const done = (await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(req))).at(-1)!;
  const v = await openVolume(done.resultUrl, { roots: [dir] });
  try {
    return (await v.read(box, 0)) as BigUint64Array;
  } finally {
    await v.close();
  }
}

const liveRead = async (id: string) => (await bridge.volumes.get(id).source.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)) as BigUint64Array;

function chunksDiffering(a: BigUint64Array, b: BigUint64Array): string[] {
  const names = new Set<string>();
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const [z, y, x] = [Math.floor(i / (Y * X)), Math.floor(i / X) % Y, i % X];
    const [z0, y0, x0] = [z - (z % CHUNK_ZYX[0]), y - (y % CHUNK_ZYX[1]), x - (x % CHUNK_ZYX[2])];
    names.add(`${x0}-${x0 + CHUNK_ZYX[2]}_${y0}-${y0 + CHUNK_ZYX[1]}_${z0}-${z0 + CHUNK_ZYX[0]}`);
  }
  return [...names].sort();
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "segment-view-test-"));
  server = await startTestServer(dir, { propagation: { dir: join(golden, "model"), maxSessions: 8 } });
  clients = connect(server.grpc.address);
  imageUrl = await writePrecomputedArray(dir, "image", "uint8", readNpy(join(golden, "image.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  sdfUrl = await writePrecomputedArray(dir, "sdf", "float32", readNpy(join(golden, "sdf.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  bridge = await createBridge({
    roots: [dir],
    log: silentLogger(),
    volumes: [
      { id: "image", url: imageUrl },
      { id: "sdf", url: sdfUrl },
    ],
    live: { grpcTarget: server.grpc.address, sdfVolumes: { image: "sdf" }, segmentOutputDir: join(dir, "segment-view"), maxSegmentVoxels: MAX_VOXELS },
  });
  ({ http, base } = await listenRouter(bridge.router));
}, 60_000);

afterAll(async () => {
  await closeHttp(http);
  await bridge?.close();
  clients?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("segment everything in view", () => {
  it("writes the server's instances in the box under new ids, keeps the user's object, announces chunks and objects", async () => {
    const { sessionId, liveVolumeId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string; liveVolumeId: string };
    // The user's object 1, prompted by a click.
    const session = (await import(join(golden, "session.json"), { with: { type: "json" } })) as { default: { ops: { z?: number; points?: [number, number][] }[] } };
    const op = session.default.ops[0]!;
    const [px, py] = op.points![0]!;
    expect((await api("POST", `/api/sessions/${sessionId}/prompts`, { objectId: "1", z: op.z, points: [{ x: px, y: py, label: "positive" }] })).status).toBe(200);
    const before = await liveRead(liveVolumeId);
    expect(before.some((v) => v === 1n)).toBe(true);

    const stream = await events(`/api/sessions/${sessionId}/events`);
    expect((await stream.next()).event).toBe("chunks");
    // The view reaches past the volume's low x face: only its part inside is segmented.
    const r = await api("POST", `/api/sessions/${sessionId}/segment-view`, { box: { x0: -20, y0: 0, z0: 2, x1: 40, y1: 64, z1: 12 } });
    expect(r.status).toBe(200);
    const box: Box3 = { offsetZyx: [2, 0, 0], shapeZyx: [10, 64, 40] };
    expect(r.json["box"]).toEqual(box);
    expect(r.json["cancelled"]).toBe(false);

    const ref = await reference(box, "reference");
    const instances = new Set([...ref].filter((v) => v !== 0n));
    expect(instances.size).toBeGreaterThan(0);
    // New ids start above the user's: instance k is 1 + k.
    const newObjects = (r.json["newObjects"] as string[]).map(BigInt);
    const after = await liveRead(liveVolumeId);
    const expected = before.slice();
    for (let z = 0; z < box.shapeZyx[0]; z++)
      for (let y = 0; y < box.shapeZyx[1]; y++)
        for (let x = 0; x < box.shapeZyx[2]; x++) {
          const i = ((z + 2) * Y + y) * X + x;
          const k = ref[(z * box.shapeZyx[1] + y) * box.shapeZyx[2] + x]!;
          if (k !== 0n && before[i] === 0n) expected[i] = 1n + k;
        }
    expect(after).toEqual(expected);
    expect(new Set(newObjects)).toEqual(new Set([...new Set([...expected].filter((v) => v > 1n))]));
    expect(newObjects.every((id) => id > 1n)).toBe(true);

    // Progress first (the last one done), then the change with exactly the changed chunks and the new objects.
    const progress: Json[] = [];
    let change: Json | undefined;
    while (change === undefined) {
      const e = await stream.next();
      if (e.event === "progress") progress.push(e.data);
      else change = e.data;
    }
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)).toMatchObject({ operation: "segment", done: true, objectsFound: instances.size });
    expect([...(change["chunks"] as string[])].sort()).toEqual(chunksDiffering(before, after));
    expect(change["changedObjects"]).toEqual(newObjects.map(String));
    stream.close();
    // The server's output folder is removed once read back.
    expect(readdirSync(join(dir, "segment-view"))).toEqual([]);

    // An automatic object is deleted like any other (it exists only in the bridge).
    const victim = newObjects[0]!;
    const del = await api("DELETE", `/api/sessions/${sessionId}/objects/${victim}`);
    expect(del.status).toBe(200);
    expect((await liveRead(liveVolumeId)).some((v) => v === victim)).toBe(false);

    // Again over the same box: earlier automatic objects there are replaced, ids keep growing (a deleted id is not reused).
    const again = await api("POST", `/api/sessions/${sessionId}/segment-view`, { box: { x0: 0, y0: 0, z0: 2, x1: 40, y1: 64, z1: 12 } });
    expect(again.status).toBe(200);
    const max = newObjects.at(-1)!;
    const second = (again.json["newObjects"] as string[]).map(BigInt);
    expect(second.length).toBe(newObjects.length);
    expect(second.every((id) => id > max)).toBe(true);
    const third = await liveRead(liveVolumeId);
    for (const id of newObjects) expect(third.some((v) => v === id)).toBe(false);
    expect(third.filter((v) => v === 1n).length).toBe(before.filter((v) => v === 1n).length);
  }, 60_000);

  it("a newer request cancels a running segmentation", async () => {
    const { sessionId, liveVolumeId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string; liveVolumeId: string };
    const stream = await events(`/api/sessions/${sessionId}/events`);
    await stream.next();
    const box = { x0: 0, y0: 0, z0: 0, x1: 64, y1: 32, z1: 12 };
    const first = api("POST", `/api/sessions/${sessionId}/segment-view`, { box });
    // Sent once the server reports the first's progress: the first is under way (a fixed delay let the
    // second overtake the first on a loaded machine), and its SegmentVolume takes far longer than a request's arrival.
    expect((await stream.next()).event).toBe("progress");
    const second = api("POST", `/api/sessions/${sessionId}/segment-view`, { box: { ...box, y0: 32, y1: 64 } });
    const [a, b] = await Promise.all([first, second]);
    expect(a.status).toBe(200);
    expect(a.json).toMatchObject({ cancelled: true, newObjects: [], chunks: [] });
    expect(b.status).toBe(200);
    expect(b.json["cancelled"]).toBe(false);
    // Only the second's half holds voxels.
    const live = await liveRead(liveVolumeId);
    for (let i = 0; i < live.length; i++) if (live[i] !== 0n) expect(Math.floor(i / X) % Y).toBeGreaterThanOrEqual(32);
    stream.close();
  }, 60_000);

  it("a client that goes away cancels its run: nothing is written, and the session goes on", async () => {
    const { sessionId, liveVolumeId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string; liveVolumeId: string };
    const stream = await events(`/api/sessions/${sessionId}/events`);
    await stream.next();
    const abort = new AbortController();
    const gone = fetch(`${base}/api/sessions/${sessionId}/segment-view`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ box: { x0: 0, y0: 0, z0: 0, x1: 64, y1: 64, z1: 8 } }),
      signal: abort.signal,
    }).catch((e: unknown) => e);
    // The tab closes once the server has reported progress (the run is under way).
    expect((await stream.next()).event).toBe("progress");
    abort.abort();
    expect(await gone).toBeInstanceOf(Error);
    // The next request runs after the cancelled one has ended: the live volume is still empty.
    const objects = await api("GET", `/api/sessions/${sessionId}/objects`);
    expect(objects.json).toEqual([]);
    const next = await api("POST", `/api/sessions/${sessionId}/segment-view`, { box: { x0: 0, y0: 0, z0: 0, x1: 8, y1: 8, z1: 2 } });
    expect(next.status).toBe(200);
    expect(next.json["cancelled"]).toBe(false);
    // Only the small second box can hold voxels.
    const live = await liveRead(liveVolumeId);
    for (let i = 0; i < live.length; i++) if (live[i] !== 0n) expect([Math.floor(i / (Y * X)) < 2, Math.floor(i / X) % Y < 8, i % X < 8]).toEqual([true, true, true]);
    stream.close();
  }, 60_000);

  it("refuses boxes beyond the voxel limit or outside the volume, naming the field", async () => {
    const { sessionId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string };
    const path = `/api/sessions/${sessionId}/segment-view`;
    const cases: [unknown, string][] = [
      // 64 x 64 x 12 = 49152 voxels inside the volume (the limit is 40000), even if the view is larger.
      [{ box: { x0: -100, y0: -100, z0: -5, x1: 200, y1: 200, z1: 50 } }, "box"],
      [{ box: { x0: 0, y0: 0, z0: 0, x1: 0, y1: 10, z1: 2 } }, "box.x1"],
      [{ box: { x0: 100, y0: 0, z0: 0, x1: 120, y1: 10, z1: 2 } }, "box.x0"],
      [{ box: { x0: 0, y0: 0, z0: 0, x1: 10, y1: 10 } }, "box.z1"],
      [{ box: { x0: 0.5, y0: 0, z0: 0, x1: 10, y1: 10, z1: 2 } }, "box.x0"],
      [{ box: { x0: 0, y0: 0, z0: 0, x1: 10, y1: 10, z1: 2, w: 1 } }, "w"],
      [{ region: {} }, "region"],
      [{}, "box"],
    ];
    for (const [body, field] of cases) {
      const r = await api("POST", path, body);
      expect([r.status, r.json["field"]], JSON.stringify(body)).toEqual([400, field]);
    }
  });
});
