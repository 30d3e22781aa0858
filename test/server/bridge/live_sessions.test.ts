// Live sessions through the bridge's HTTP API, with the bridge as a gRPC client of a separate
// inference server (serve() with the golden propagator fixture, no HTTP side): masks written into
// the live label volume match the Python predictor's golden session when read back as served
// compressed_segmentation chunks, the event stream announces exactly the changed chunks, every bad
// field is named, and one tab's flood is answered 429 while another tab goes on.
import { execFileSync } from "node:child_process";
import { createServer, type Server } from "node:http";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCompressedSegmentation } from "#src/codecs/compressed_segmentation.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { silentLogger } from "#server/log.ts";
import type { RunningServer } from "#server/serve.ts";
import { closeHttp, listenRouter, startTestServer } from "#test/helpers/test_server.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const session = JSON.parse(readFileSync(join(golden, "session.json"), "utf8")) as {
  shape_zyx: Vec3;
  ops: { op: string; z?: number; obj_id?: number; points?: [number, number][]; labels?: number[]; box?: [number, number, number, number]; z_order?: number[]; masks: string }[];
  tolerance: { mask_iou_min: number };
};
const [Z, Y, X] = session.shape_zyx;
// 3 x 2 x 2 live chunks over the 12 x 64 x 64 golden volume.
const CHUNK_ZYX: Vec3 = [4, 32, 32];

let server: RunningServer;
let bridge: Bridge;
let http: Server;
let base: string;
let dir: string;

type Json = Record<string, unknown>;

async function api(method: string, path: string, body?: unknown, client = "tab-main") {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { "Content-Type": "application/json", "X-Client-Id": client },
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: (text === "" ? {} : JSON.parse(text)) as Json };
}

/** Reads a Server-Sent Events stream; `next()` resolves the next `chunks` event's data. */
async function events(path: string, headers: Record<string, string> = {}) {
  const abort = new AbortController();
  const res = await fetch(`${base}${path}`, { headers, signal: abort.signal });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const next = async (): Promise<Json> => {
    for (;;) {
      const end = buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").find((l) => l.startsWith("data: "));
        if (block.includes("event: chunks") && data !== undefined) return JSON.parse(data.slice(6)) as Json;
        continue;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("event stream ended");
      buffer += decoder.decode(value, { stream: true });
    }
  };
  return { status: res.status, contentType: res.headers.get("content-type"), next, close: () => abort.abort() };
}

/** The live volume as the viewer sees it: every chunk fetched over HTTP and decoded. */
async function liveVolume(volumeId: string): Promise<BigUint64Array> {
  const info = (await api("GET", `/volumes/${volumeId}/info`)).json as { scales: { key: string; chunk_sizes: number[][]; compressed_segmentation_block_size: Vec3; encoding: string }[] };
  const scale = info.scales[0]!;
  expect(scale.encoding).toBe("compressed_segmentation");
  expect(scale.chunk_sizes[0]).toEqual([CHUNK_ZYX[2], CHUNK_ZYX[1], CHUNK_ZYX[0]]);
  const out = new BigUint64Array(Z * Y * X);
  for (let z = 0; z < Z; z += CHUNK_ZYX[0])
    for (let y = 0; y < Y; y += CHUNK_ZYX[1])
      for (let x = 0; x < X; x += CHUNK_ZYX[2]) {
        const res = await fetch(`${base}/volumes/${volumeId}/${scale.key}/${x}-${x + CHUNK_ZYX[2]}_${y}-${y + CHUNK_ZYX[1]}_${z}-${z + CHUNK_ZYX[0]}`);
        expect(res.status).toBe(200);
        expect(res.headers.get("cache-control")).toBe("no-store");
        const chunk = decodeCompressedSegmentation(new Uint8Array(await res.arrayBuffer()), "uint64", CHUNK_ZYX, scale.compressed_segmentation_block_size, "chunk") as BigUint64Array;
        for (let dz = 0; dz < CHUNK_ZYX[0]; dz++)
          for (let dy = 0; dy < CHUNK_ZYX[1]; dy++)
            for (let dx = 0; dx < CHUNK_ZYX[2]; dx++) out[((z + dz) * Y + y + dy) * X + x + dx] = chunk[(dz * CHUNK_ZYX[1] + dy) * CHUNK_ZYX[2] + dx]!;
      }
  return out;
}

/**
 * The live volume decoded independently: every served chunk's bytes handed to Python's
 * compressed-segmentation package, assembled there (zyx) and read back as .npy.
 */
async function liveVolumeByPython(volumeId: string): Promise<BigUint64Array> {
  const out = join(dir, `cs-${volumeId}`);
  mkdirSync(out, { recursive: true });
  const key = ((await api("GET", `/volumes/${volumeId}/info`)).json as { scales: { key: string }[] }).scales[0]!.key;
  for (let z = 0; z < Z; z += CHUNK_ZYX[0])
    for (let y = 0; y < Y; y += CHUNK_ZYX[1])
      for (let x = 0; x < X; x += CHUNK_ZYX[2]) {
        const res = await fetch(`${base}/volumes/${volumeId}/${key}/${x}-${x + CHUNK_ZYX[2]}_${y}-${y + CHUNK_ZYX[1]}_${z}-${z + CHUNK_ZYX[0]}`);
        writeFileSync(join(out, `${z}_${y}_${x}.bin`), new Uint8Array(await res.arrayBuffer()));
      }
  const script = `
import sys, os, numpy as np, compressed_segmentation as cs
d, (Z, Y, X), (cz, cy, cx) = sys.argv[1], [int(v) for v in sys.argv[2].split(",")], [int(v) for v in sys.argv[3].split(",")]
vol = np.zeros((Z, Y, X), np.uint64)
for f in os.listdir(d):
    if not f.endswith(".bin"): continue
    z, y, x = (int(v) for v in f[:-4].split("_"))
    a = cs.decompress(open(os.path.join(d, f), "rb").read(), (cx, cy, cz), np.uint64, (8, 8, 8), order="F")
    vol[z:z + cz, y:y + cy, x:x + cx] = np.squeeze(a).transpose(2, 1, 0)
np.save(os.path.join(d, "volume.npy"), vol)
`;
  execFileSync(join(root, "models", ".venv", "bin", "python"), ["-c", script, out, [Z, Y, X].join(","), CHUNK_ZYX.join(",")]);
  return readNpy(join(out, "volume.npy")).data as BigUint64Array;
}

/** Names of the chunks holding at least one voxel where `a` and `b` differ. */
function chunksDiffering(a: BigUint64Array, b: BigUint64Array): string[] {
  const names = new Set<string>();
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const z = Math.floor(i / (Y * X));
    const y = Math.floor(i / X) % Y;
    const x = i % X;
    const [z0, y0, x0] = [z - (z % CHUNK_ZYX[0]), y - (y % CHUNK_ZYX[1]), x - (x % CHUNK_ZYX[2])];
    names.add(`${x0}-${x0 + CHUNK_ZYX[2]}_${y0}-${y0 + CHUNK_ZYX[1]}_${z0}-${z0 + CHUNK_ZYX[0]}`);
  }
  return [...names].sort();
}

function iou(a: ArrayLike<unknown>, b: ArrayLike<unknown>, va: unknown, vb: unknown): number {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    const p = a[i] === va;
    const q = b[i] === vb;
    if (p && q) inter++;
    if (p || q) union++;
  }
  return union === 0 ? 1 : inter / union;
}

const promptBody = (op: (typeof session.ops)[number]) => ({
  objectId: String(op.obj_id),
  z: op.z,
  ...(op.points ? { points: op.points.map(([x, y], i) => ({ x, y, label: op.labels![i] === 1 ? "positive" : "negative" })) } : {}),
  // The golden box has both corner pixels included; the API's is half-open.
  ...(op.box ? { box: { x0: op.box[0], y0: op.box[1], x1: op.box[2] + 1, y1: op.box[3] + 1 } } : {}),
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "live-sessions-test-"));
  server = await startTestServer(dir, { propagation: { dir: join(golden, "model"), maxSessions: 8 } });
  const image = await writePrecomputedArray(dir, "image", "uint8", readNpy(join(golden, "image.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  const sdf = await writePrecomputedArray(dir, "sdf", "float32", readNpy(join(golden, "sdf.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  // An SDF on another grid: the inference server, not the bridge, refuses it.
  const smallSdf = await writePrecomputedArray(dir, "small-sdf", "float32", new Float32Array(2 * 8 * 8), [2, 8, 8]);
  // A bridge of its own in front of the inference server's gRPC port, as for a remote GPU server.
  bridge = await createBridge({
    roots: [dir],
    log: silentLogger(),
    volumes: [
      { id: "image", url: image },
      { id: "sdf", url: sdf },
      { id: "small-sdf", url: smallSdf },
    ],
    live: { grpcTarget: server.grpc.address, sdfVolumes: { image: "sdf" }, acceptDir: join(dir, "accepted"), rateLimit: { burst: 3, perSecond: 0.001 }, maxSessions: 4, idleTimeoutMs: 60_000 },
  });
  ({ http, base } = await listenRouter(bridge.router));
});

afterAll(async () => {
  await closeHttp(http);
  await bridge?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("live sessions over the bridge", () => {
  it("prompts and propagation land in the live volume as the golden session's masks; events name exactly the changed chunks", async () => {
    const created = await api("POST", "/api/sessions", { volumeId: "image" });
    expect(created.status).toBe(201);
    const { sessionId, liveVolumeId, chunkCount, source } = created.json as { sessionId: string; liveVolumeId: string; chunkCount: number; source: string };
    expect(chunkCount).toBe(12);
    expect(source).toBe(`spatialsam://${liveVolumeId}`);
    const listed = (await api("GET", "/api/volumes")).json as unknown as { id: string }[];
    expect(listed.map((v) => v.id)).toContain(liveVolumeId);
    const stream = await events(`/api/sessions/${sessionId}/events`);
    expect(stream.status).toBe(200);
    expect(stream.contentType).toBe("text/event-stream");
    expect(await stream.next()).toMatchObject({ generation: 0, chunks: [], volumeId: liveVolumeId });

    let before = await liveVolume(liveVolumeId);
    expect(before.every((v) => v === 0n)).toBe(true);
    const [add0, add1, forward] = session.ops;
    const expected = new BigUint64Array(Z * Y * X);
    let generation = 0;
    /** Chunks announced after generation 1, for the reconnect check below. */
    const announcedAfterFirst = new Set<string>();
    for (const [op, file] of [
      [add0!, "add_0.npy"],
      [add1!, "add_1.npy"],
    ] as const) {
      const r = await api("POST", `/api/sessions/${sessionId}/prompts`, promptBody(op));
      expect(r.status).toBe(200);
      const mask = readNpy(join(golden, file)).data as Uint8Array;
      for (let i = 0; i < Y * X; i++) if (mask[i]) expected[op.z! * Y * X + i] = BigInt(op.obj_id!);
      const after = await liveVolume(liveVolumeId);
      expect(iou(after.subarray(op.z! * Y * X, (op.z! + 1) * Y * X), mask, BigInt(op.obj_id!), 1)).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
      const event = await stream.next();
      generation++;
      expect(event["generation"]).toBe(generation);
      // The event and the answer name the chunks whose voxels changed, no more, no fewer.
      expect([...(event["chunks"] as string[])].sort()).toEqual(chunksDiffering(before, after));
      expect([...(r.json["chunks"] as string[])].sort()).toEqual(chunksDiffering(before, after));
      if (generation > 1) for (const c of event["chunks"] as string[]) announcedAfterFirst.add(c);
      before = after;
    }

    const p = await api("POST", `/api/sessions/${sessionId}/propagate`, { direction: "forward" });
    expect(p.status).toBe(200);
    expect(p.json).toMatchObject({ slices: forward!.z_order!.length, cancelled: false });
    const fwd = readNpy(join(golden, "propagate_forward.npy")).data as Uint8Array;
    forward!.z_order!.forEach((z, k) => {
      for (let i = 0; i < Y * X; i++) expected[z * Y * X + i] = 0n;
      // Objects are written in order: where masks overlap the later object holds the voxel.
      for (const [o, id] of [[0, 1n], [1, 2n]] as const) for (let i = 0; i < Y * X; i++) if (fwd[((k * 2 + o) * Y * X) + i]) expected[z * Y * X + i] = id;
    });
    const after = await liveVolume(liveVolumeId);
    for (const id of [1n, 2n]) expect(iou(after, expected, id, id)).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
    // The served chunks decode the same with the reference implementation.
    expect(await liveVolumeByPython(liveVolumeId)).toEqual(after);
    // One event per propagated slice that changed something; together they name the changed chunks.
    const announced = new Set<string>();
    for (let e = await stream.next(); ; e = await stream.next()) {
      for (const c of e["chunks"] as string[]) announced.add(c);
      if (e["generation"] === p.json["generation"]) break;
    }
    expect([...announced].sort()).toEqual(chunksDiffering(before, after));
    for (const c of announced) announcedAfterFirst.add(c);
    expect(chunksDiffering(before, after).length).toBeLessThan(chunkCount);

    const objects = (await api("GET", `/api/sessions/${sessionId}/objects`)).json as unknown as { objectId: string; voxels: number }[];
    expect(objects).toEqual([1n, 2n].map((id) => ({ objectId: String(id), voxels: after.filter((v) => v === id).length })));

    // A viewer that reconnects with the last generation it saw gets every chunk changed since.
    const replay = await events(`/api/sessions/${sessionId}/events`, { "Last-Event-ID": "1" });
    const since = await replay.next();
    replay.close();
    expect(since["generation"]).toBe((p.json as { generation: number }).generation);
    expect(new Set(since["chunks"] as string[])).toEqual(announcedAfterFirst);
    // Which objects changed during the gap is not kept: every current object's mesh is called stale.
    expect(since["changedObjects"]).toEqual(["1", "2"]);

    // Deleting object 2 clears exactly its voxels.
    const del = await api("DELETE", `/api/sessions/${sessionId}/objects/2`);
    expect(del.status).toBe(200);
    const cleared = await liveVolume(liveVolumeId);
    expect([...(await stream.next())["chunks"] as string[]].sort()).toEqual(chunksDiffering(after, cleared));
    expect(cleared.every((v, i) => v === (after[i] === 2n ? 0n : after[i]))).toBe(true);
    expect((await api("GET", `/api/sessions/${sessionId}/objects`)).json).toEqual([{ objectId: "1", voxels: cleared.filter((v) => v === 1n).length }]);

    // Accept writes the result as precomputed (read back by the project's reader) and registers it.
    const acc = await api("POST", `/api/sessions/${sessionId}/accept`);
    expect(acc.status, JSON.stringify(acc.json)).toBe(201);
    const saved = await openVolume(acc.json["url"] as string, { roots: [dir] });
    expect(await saved.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)).toEqual(cleared);
    await saved.close();

    stream.close();
    expect((await api("DELETE", `/api/sessions/${sessionId}`)).status).toBe(204);
    expect((await api("GET", `/volumes/${liveVolumeId}/info`)).status).toBe(404);
  });

  it("names the field of every bad request", async () => {
    const { sessionId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string };
    const prompts = `/api/sessions/${sessionId}/prompts`;
    const propagate = `/api/sessions/${sessionId}/propagate`;
    const ok = { objectId: "1", z: 3, points: [{ x: 10, y: 10, label: "positive" }] };
    const cases: [string, string, unknown, number, string][] = [
      ["POST", "/api/sessions", { volumeId: "../x" }, 400, "volumeId"],
      ["POST", "/api/sessions", { volumeId: "nope" }, 404, "id"],
      ["POST", "/api/sessions", { volumeId: "image", sdfVolumeId: "nope" }, 404, "sdfVolumeId"],
      ["POST", "/api/sessions", { volumeId: "image", colour: 1 }, 400, "colour"],
      ["POST", "/api/sessions", "[1, 2]", 400, "body"],
      ["POST", "/api/sessions", "{not json", 400, "body"],
      ["POST", prompts, { ...ok, objectId: "0" }, 400, "objectId"],
      ["POST", prompts, { ...ok, objectId: "18446744073709551616" }, 400, "objectId"],
      ["POST", prompts, { ...ok, objectId: 1.5 }, 400, "objectId"],
      ["POST", prompts, { ...ok, z: Z }, 400, "z"],
      ["POST", prompts, { ...ok, z: "3" }, 400, "z"],
      ["POST", prompts, { ...ok, points: {} }, 400, "points"],
      ["POST", prompts, { ...ok, points: [] }, 400, "points"],
      ["POST", prompts, { ...ok, points: [{ x: X, y: 1, label: "positive" }] }, 400, "points[0].x"],
      ["POST", prompts, { ...ok, points: [ok.points[0], { x: 1, y: -0.5, label: "positive" }] }, 400, "points[1].y"],
      ["POST", prompts, { ...ok, points: [{ x: 1, y: 1, label: "maybe" }] }, 400, "points[0].label"],
      ["POST", prompts, { ...ok, points: [{ x: 1, y: 1, label: "positive", z: 3 }] }, 400, "z"],
      ["POST", prompts, { ...ok, box: { x0: 5, y0: 5, x1: 6, y1: 20 } }, 400, "box.x1"],
      ["POST", prompts, { ...ok, box: { x0: 5, y0: 5, x1: 20, y1: Y + 1 } }, 400, "box.y1"],
      ["POST", prompts, { ...ok, clearOld: "yes" }, 400, "clearOld"],
      ["POST", propagate, { direction: "sideways" }, 400, "direction"],
      ["POST", propagate, { maxSlices: 0 }, 400, "maxSlices"],
      ["POST", propagate, { startZ: -1 }, 400, "startZ"],
      ["POST", propagate, { toZ: 5 }, 400, "toZ"],
      ["POST", propagate, { objectIds: ["1", "x"] }, 400, "objectIds[1]"],
      ["POST", "/api/sessions/XYZ/prompts", ok, 400, "session"],
      ["POST", "/api/sessions/0123456789ab/prompts", ok, 404, "session"],
      ["DELETE", `/api/sessions/${sessionId}/objects/abc`, undefined, 400, "objectId"],
    ];
    for (const [method, path, body, status, field] of cases) {
      const r = await api(method, path, body, "tab-validation");
      expect([r.status, r.json["field"]], `${method} ${path} ${JSON.stringify(body)}`).toEqual([status, field]);
      expect(typeof r.json["message"]).toBe("string");
    }
    const badClient = await fetch(`${base}${prompts}`, { method: "POST", headers: { "Content-Type": "application/json", "X-Client-Id": "a b" }, body: JSON.stringify(ok) });
    expect([badClient.status, ((await badClient.json()) as Json)["field"]]).toEqual([400, "x-client-id"]);
    // A too-large body is refused before parsing.
    const huge = await api("POST", prompts, { ...ok, pad: "x".repeat(70_000) }, "tab-validation");
    expect([huge.status, huge.json["field"]]).toEqual([413, "body"]);
    expect((await api("DELETE", `/api/sessions/${sessionId}`)).status).toBe(204);
  });

  it("rate-limits prompts per tab: a flooding tab gets 429 naming the field, another tab is served", async () => {
    const { sessionId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string };
    const body = { objectId: "7", z: 2, points: [{ x: 20, y: 20, label: "positive" }] };
    const statuses: number[] = [];
    let limited: Awaited<ReturnType<typeof api>> | undefined;
    for (let i = 0; i < 5; i++) {
      const r = await api("POST", `/api/sessions/${sessionId}/prompts`, body, "tab-flood");
      statuses.push(r.status);
      if (r.status === 429) limited ??= r;
    }
    // burst 3, then (at 0.001 tokens/s) nothing more for this tab.
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    expect(limited!.json).toMatchObject({ error: "ResourceExhausted", field: "x-client-id" });
    expect(Number(limited!.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await api("POST", `/api/sessions/${sessionId}/propagate`, { maxSlices: 1 }, "tab-flood")).status).toBe(429);
    // Another tab on the same session is not starved.
    expect((await api("POST", `/api/sessions/${sessionId}/prompts`, body, "tab-other")).status).toBe(200);
    expect((await api("POST", `/api/sessions/${sessionId}/propagate`, { toZ: 4 }, "tab-other")).json).toMatchObject({ slices: 3, cancelled: false });
    expect((await api("DELETE", `/api/sessions/${sessionId}`)).status).toBe(204);
  });
});

describe("sessions and the inference server", () => {
  it("answers with the server's field when it refuses a request, and 503 when it cannot be reached", async () => {
    const refused = await api("POST", "/api/sessions", { volumeId: "image", sdfVolumeId: "small-sdf" });
    expect(refused.status).toBe(400);
    expect(refused.json["field"]).toMatch(/^sdf_volume_id/);

    // A bridge whose target has nothing listening (port 1 on loopback).
    const lonely = await createBridge({ roots: [dir], log: silentLogger(), volumes: [{ id: "image", url: `precomputed://file://${join(dir, "image")}` }], live: { grpcTarget: "127.0.0.1:1" } });
    const app = express();
    app.use(lonely.router);
    const h = createServer(app);
    await new Promise<void>((resolve) => h.listen(0, "127.0.0.1", resolve));
    try {
      const a = h.address();
      const res = await fetch(`http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}/api/sessions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ volumeId: "image" }) });
      expect(res.status).toBe(503);
      expect(((await res.json()) as Json)["error"]).toBe("Unavailable");
    } finally {
      await new Promise<void>((resolve) => h.close(() => resolve()));
      await lonely.close();
    }
  });

  it("ends event streams when the session closes; closes sessions idle and unwatched", async () => {
    const { sessionId, liveVolumeId } = (await api("POST", "/api/sessions", { volumeId: "image" })).json as { sessionId: string; liveVolumeId: string };
    const stream = await events(`/api/sessions/${sessionId}/events`);
    await stream.next();
    expect((await api("DELETE", `/api/sessions/${sessionId}`)).status).toBe(204);
    await expect(stream.next()).rejects.toThrow("event stream ended");
    expect((await api("GET", `/volumes/${liveVolumeId}/info`)).status).toBe(404);

    // A bridge that closes sessions unwatched and unused for 50 ms: the watched one stays.
    const quick = await createBridge({
      roots: [dir],
      log: silentLogger(),
      volumes: [{ id: "image", url: `precomputed://file://${join(dir, "image")}` }, { id: "sdf", url: `precomputed://file://${join(dir, "sdf")}` }],
      live: { grpcTarget: server.grpc.address, sdfVolumes: { image: "sdf" }, idleTimeoutMs: 50 },
    });
    const app = express();
    app.use(quick.router);
    const h = createServer(app);
    await new Promise<void>((resolve) => h.listen(0, "127.0.0.1", resolve));
    const a = h.address();
    const quickBase = `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}`;
    const create = async () => ((await (await fetch(`${quickBase}/api/sessions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ volumeId: "image" }) })).json()) as { sessionId: string }).sessionId;
    const alive = async (id: string) => (await fetch(`${quickBase}/api/sessions/${id}`)).status === 200;
    try {
      const unwatched = await create();
      const watchedId = await create();
      const abort = new AbortController();
      const watching = await fetch(`${quickBase}/api/sessions/${watchedId}/events`, { signal: abort.signal });
      expect(watching.status).toBe(200);
      for (let i = 0; i < 200 && (await alive(unwatched)); i++) await new Promise((resolve) => setTimeout(resolve, 25));
      expect(await alive(unwatched)).toBe(false);
      expect(await alive(watchedId)).toBe(true);
      abort.abort();
    } finally {
      h.closeAllConnections();
      await new Promise<void>((resolve) => h.close(() => resolve()));
      await quick.close();
    }
  });
});
