// SegmentationService end to end: a real server (serve()) with the golden propagator fixture, the
// golden image and SDF written as precomputed volumes, the generated client over a socket; masks
// compared with the Python predictor's golden session, and every error path by code and field.
import { status, type ClientReadableStream } from "@grpc/grpc-js";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Box3 } from "#proto/spatial_sam/v1/common.ts";
import {
  Direction,
  PointLabel,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type CloseSessionRequest,
  type CloseSessionResponse,
  type ObjectMask,
  type PropagateResponse,
  type RemoveObjectRequest,
  type RemoveObjectResponse,
  type ResetSessionRequest,
  type ResetSessionResponse,
  type StartSessionRequest,
  type StartSessionResponse,
} from "#proto/spatial_sam/v1/segmentation.ts";
import type { OpenVolumeRequest } from "#proto/spatial_sam/v1/volume.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";
import { call, collect, connect, grpcError, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const session = JSON.parse(readFileSync(join(golden, "session.json"), "utf8")) as {
  shape_zyx: [number, number, number];
  ops: {
    op: string;
    z?: number;
    obj_id?: number;
    points?: [number, number][];
    labels?: number[];
    box?: [number, number, number, number];
    direction?: "forward" | "backward" | "both";
    start_z?: number;
    max_slices?: number;
    z_order?: number[];
    masks: string;
    mask_obj_ids: number[];
  }[];
  tolerance: { mask_iou_min: number };
};
const [Z, Y, X] = session.shape_zyx;

let server: RunningServer;
let clients: Clients;
let dataDir: string;
let imageId: string;
let sdfId: string;

async function writeVolume(name: string, dtype: DataType, data: TypedArray): Promise<string> {
  const opened = await grpcOpenVolume(clients, {
    url: await writePrecomputedArray(dataDir, name, dtype, data, [Z, Y, X]),
  });
  return opened.volume!.volumeId;
}

const startSession = (req: Partial<StartSessionRequest>) =>
  call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
    volumeId: imageId,
    box: { offset: { z: 0, y: 0, x: 0 }, shape: { z: Z, y: Y, x: X } },
    scale: 0,
    model: "",
    sdfModel: "",
    sdfVolumeId: sdfId,
    ...req,
  });

const addPrompts = (req: Partial<AddPromptsRequest> & { sessionId: string }) =>
  call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
    objectId: 1n,
    z: 0,
    points: [],
    clearOld: false,
    ...req,
  });

const propagate = (sessionId: string, req: { direction: Direction; startZ?: number; maxSlices?: number }) =>
  clients.segmentation.propagate({ sessionId, objectIds: [], maxSlices: 0, ...req });

/** An ObjectMask (cropped, volume coordinates) back on a whole box slice [h, w] at (y0, x0). */
function uncrop(m: ObjectMask, h = Y, w = X, oy = 0, ox = 0): Uint8Array {
  const out = new Uint8Array(h * w);
  const b = m.bbox!;
  const bw = b.x1 - b.x0;
  for (let r = b.y0; r < b.y1; r++) {
    for (let c = b.x0; c < b.x1; c++) out[(r - oy) * w + (c - ox)] = m.data[(r - b.y0) * bw + (c - b.x0)]!;
  }
  return out;
}

function iou(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] && b[i]) inter++;
    if (a[i] || b[i]) union++;
  }
  return union === 0 ? 1 : inter / union;
}

const goldenSlice = (file: string, k: number) => (readNpy(join(golden, file)).data as Uint8Array).subarray(k * Y * X, (k + 1) * Y * X);

const promptOf = (op: (typeof session.ops)[number]): Partial<AddPromptsRequest> => ({
  objectId: BigInt(op.obj_id!),
  z: op.z!,
  points: (op.points ?? []).map(([x, y], i) => ({ x, y, label: op.labels![i] === 1 ? PointLabel.POINT_LABEL_POSITIVE : PointLabel.POINT_LABEL_NEGATIVE })),
  // The golden box has both corner pixels included; the wire's Box2 is half-open.
  ...(op.box ? { box: { x0: op.box[0], y0: op.box[1], x1: op.box[2] + 1, y1: op.box[3] + 1 } } : {}),
});

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "segmentation-test-"));
  server = await serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: join(root, "test", "fixtures", "models"),
    roots: [dataDir],
    cacheDir: join(dataDir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 4,
    log: silentLogger(),
    propagation: { dir: join(golden, "model"), maxSessions: 3 },
  });
  clients = connect(server.grpc.address);
  imageId = await writeVolume("image", "uint8", readNpy(join(golden, "image.npy")).data);
  sdfId = await writeVolume("sdf", "float32", readNpy(join(golden, "sdf.npy")).data);
});

afterAll(async () => {
  clients?.close();
  await server?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe("golden session over gRPC", () => {
  it("AddPrompts and Propagate answer the Python predictor's masks (IoU >= 0.999 per slice)", async () => {
    const { sessionId } = await startSession({});
    let compared = 0;
    for (const op of session.ops) {
      if (op.op === "add_prompts") {
        const res = await addPrompts({ sessionId, ...promptOf(op) });
        expect(res.masks.map((m) => Number(m.objectId))).toEqual(op.mask_obj_ids);
        res.masks.forEach((m, k) => {
          expect(m.z).toBe(op.z);
          expect(iou(uncrop(m), goldenSlice(op.masks, k)), `${op.masks} object ${m.objectId}`).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
          compared++;
        });
      } else {
        const direction = { forward: Direction.DIRECTION_FORWARD, backward: Direction.DIRECTION_BACKWARD, both: Direction.DIRECTION_BOTH }[op.direction!];
        const messages = await collect<PropagateResponse>(
          propagate(sessionId, { direction, ...(op.start_z === undefined ? {} : { startZ: op.start_z }), ...(op.max_slices === undefined ? {} : { maxSlices: op.max_slices }) }),
        );
        expect(messages.map((m) => m.z)).toEqual(op.z_order);
        messages.forEach((msg, i) =>
          msg.masks.forEach((m, k) => {
            expect(m.objectId).toBe(BigInt(op.mask_obj_ids[k]!));
            const want = goldenSlice(op.masks, i * op.mask_obj_ids.length + k);
            expect(iou(uncrop(m), want), `${op.masks} z=${msg.z} object ${m.objectId}`).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
            compared++;
          }),
        );
      }
    }
    expect(compared).toBe(2 + 26 * 2);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });

  it("a session box offset in z answers in volume coordinates (same slice, same mask)", async () => {
    const { sessionId } = await startSession({ box: { offset: { z: 2, y: 0, x: 0 }, shape: { z: 8, y: Y, x: X } } });
    const op = session.ops[0]!;
    const res = await addPrompts({ sessionId, ...promptOf(op) });
    expect(res.masks[0]!.z).toBe(3);
    expect(iou(uncrop(res.masks[0]!), goldenSlice(op.masks, 0))).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
    const zs = (await collect<PropagateResponse>(propagate(sessionId, { direction: Direction.DIRECTION_BACKWARD }))).map((m) => m.z);
    expect(zs).toEqual([3, 2]);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });

  it("a 16-bit volume opened with an intensity window segments exactly as its 8-bit original", async () => {
    const image8 = readNpy(join(golden, "image.npy")).data as Uint8Array;
    const url = await writePrecomputedArray(dataDir, "image16", "uint16", Uint16Array.from(image8, (v) => v * 16 + 1000), [Z, Y, X]);
    const open = (req: Partial<OpenVolumeRequest>) => grpcOpenVolume(clients, { url, ...req });
    const windowed = await open({ intensityWindow: { low: 1000, high: 5080 } });
    expect(windowed.volume!.intensityWindow).toEqual({ low: 1000, high: 5080 });
    const op = session.ops[0]!;
    const masks: Uint8Array[] = [];
    for (const volumeId of [imageId, windowed.volume!.volumeId]) {
      const { sessionId } = await startSession({ volumeId });
      const res = await addPrompts({ sessionId, ...promptOf(op) });
      masks.push(uncrop(res.masks[0]!));
      await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
    }
    expect(masks[0]!.some((v) => v > 0)).toBe(true);
    expect(Buffer.from(masks[1]!).equals(Buffer.from(masks[0]!))).toBe(true);
    // Without a window the session is refused (the raw 16-bit values are not what the models take) ...
    const raw = await open({});
    expect(raw.volume!.intensityWindow).toBeUndefined();
    const refused = await grpcError(startSession({ volumeId: raw.volume!.volumeId }));
    expect([refused.code, refused.details.split(":")[0]]).toEqual([status.INVALID_ARGUMENT, "intensity_window"]);
    // ... and a window that maps nothing is refused when the volume is opened.
    const bad = await grpcError(open({ intensityWindow: { low: 3, high: 3 } }));
    expect([bad.code, bad.details.split(":")[0]]).toEqual([status.INVALID_ARGUMENT, "intensity_window"]);
  });

  it("computes the SDF memory on demand with sdf_model when no SDF volume is given", async () => {
    const { sessionId } = await startSession({ sdfVolumeId: "", sdfModel: "tiny_conv3d" });
    const res = await addPrompts({ sessionId, ...promptOf(session.ops[0]!) });
    expect(res.masks).toHaveLength(1);
    // Only the blocks under the slices used so far exist in the SDF cache.
    const cached = readdirSync(join(dataDir, "cache", "sdf"));
    expect(cached).toHaveLength(1);
    const messages = await collect<PropagateResponse>(propagate(sessionId, { direction: Direction.DIRECTION_FORWARD, maxSlices: 2 }));
    expect(messages.map((m) => m.z)).toEqual([3, 4]);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });
});

describe("errors and lifecycle", () => {
  it("a session started with start_z (slices embedded ahead of the click) answers the same masks", async () => {
    const op = session.ops[0]!;
    const { sessionId } = await startSession({ startZ: op.z! });
    // Give the speculative work time to run, so the click finds its slice embedded.
    await new Promise((r) => setTimeout(r, 200));
    const res = await addPrompts({ sessionId, ...promptOf(op) });
    expect(iou(uncrop(res.masks[0]!), goldenSlice(op.masks, 0))).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });

  it("refuses bad prompts with INVALID_ARGUMENT naming the field", async () => {
    const { sessionId } = await startSession({});
    const cases: [Partial<AddPromptsRequest>, string][] = [
      [{ points: [{ x: Number.NaN, y: 3, label: PointLabel.POINT_LABEL_POSITIVE }] }, "points[0].x"],
      [{ points: [{ x: 3, y: 1, label: PointLabel.POINT_LABEL_POSITIVE }, { x: 3, y: Number.POSITIVE_INFINITY, label: PointLabel.POINT_LABEL_POSITIVE }] }, "points[1].y"],
      [{ points: [{ x: X, y: 3, label: PointLabel.POINT_LABEL_POSITIVE }] }, "points[0].x"],
      [{ points: [{ x: 3, y: 3, label: PointLabel.POINT_LABEL_UNSPECIFIED }] }, "points[0].label"],
      [{ z: Z, points: [{ x: 3, y: 3, label: PointLabel.POINT_LABEL_POSITIVE }] }, "z"],
      [{ z: -1, points: [{ x: 3, y: 3, label: PointLabel.POINT_LABEL_POSITIVE }] }, "z"],
      [{ box: { y0: 5, x0: 5, y1: 5, x1: 9 } }, "box"],
      [{ box: { y0: 5, x0: 5, y1: Y + 1, x1: 9 } }, "box"],
      [{ mask: { box: { y0: 0, x0: 0, y1: 4, x1: 4 }, data: Buffer.alloc(3) } }, "mask.data"],
      [{}, "points"],
    ];
    for (const [req, field] of cases) {
      const e = await grpcError(addPrompts({ sessionId, ...req }));
      expect(e.code, field).toBe(status.INVALID_ARGUMENT);
      expect(e.details.startsWith(`${field}: `), `${field}: ${e.details}`).toBe(true);
    }
    const bad = await grpcError(startSession({ box: { offset: { z: 0, y: 0, x: 0 }, shape: { z: Z, y: 16, x: X } } }));
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.details).toMatch(/^box\.shape: /);
    const outside = await grpcError(startSession({ box: { offset: { z: 0, y: 0, x: 0 }, shape: { z: Z + 1, y: Y, x: X } } as Box3 }));
    expect(outside.details).toMatch(/^box\.shape: /);
    const noSdf = await grpcError(startSession({ sdfVolumeId: "", sdfModel: "no_such_unet" }));
    expect(noSdf.details).toMatch(/^sdf_model: /);
    const startZ = await grpcError(startSession({ startZ: Z }));
    expect([startZ.code, startZ.details.split(":")[0]]).toEqual([status.INVALID_ARGUMENT, "start_z"]);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });

  it("NOT_FOUND names session_id, object_id, volume_id and sdf_volume_id", async () => {
    const e1 = await grpcError(addPrompts({ sessionId: "nope", points: [{ x: 1, y: 1, label: PointLabel.POINT_LABEL_POSITIVE }] }));
    expect([e1.code, e1.details.split(":")[0]]).toEqual([status.NOT_FOUND, "session_id"]);
    const e2 = await grpcError(collect(propagate("nope", { direction: Direction.DIRECTION_FORWARD })));
    expect([e2.code, e2.details.split(":")[0]]).toEqual([status.NOT_FOUND, "session_id"]);
    const { sessionId } = await startSession({});
    const e3 = await grpcError(call<RemoveObjectRequest, RemoveObjectResponse>(clients.segmentation, clients.segmentation.removeObject, { sessionId, objectId: 42n }));
    expect([e3.code, e3.details.split(":")[0]]).toEqual([status.NOT_FOUND, "object_id"]);
    const e4 = await grpcError(startSession({ volumeId: "nope" }));
    expect([e4.code, e4.details.split(":")[0]]).toEqual([status.NOT_FOUND, "volume_id"]);
    const e5 = await grpcError(startSession({ sdfVolumeId: "nope" }));
    expect([e5.code, e5.details.split(":")[0]]).toEqual([status.NOT_FOUND, "sdf_volume_id"]);
    // Propagating before any prompt is a state problem, not a bad argument.
    const e6 = await grpcError(collect(propagate(sessionId, { direction: Direction.DIRECTION_FORWARD })));
    expect(e6.code).toBe(status.FAILED_PRECONDITION);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
    const e7 = await grpcError(call<ResetSessionRequest, ResetSessionResponse>(clients.segmentation, clients.segmentation.resetSession, { sessionId }));
    expect(e7.code).toBe(status.NOT_FOUND);
  });

  it("a client cancel stops propagation; the session answers the next prompt; remove and reset work", async () => {
    const { sessionId } = await startSession({});
    await addPrompts({ sessionId, ...promptOf(session.ops[0]!) });
    await addPrompts({ sessionId, ...promptOf(session.ops[1]!) });
    const stream: ClientReadableStream<PropagateResponse> = propagate(sessionId, { direction: Direction.DIRECTION_FORWARD });
    const seen: number[] = [];
    await new Promise<void>((resolve) => {
      stream.on("data", (m: PropagateResponse) => {
        seen.push(m.z);
        if (seen.length === 1) stream.cancel();
      });
      stream.on("error", () => resolve());
      stream.on("end", () => resolve());
    });
    expect(seen.length).toBeLessThan(9);
    // The cancelled propagation released the session: a correction goes through.
    const res = await addPrompts({ sessionId, ...promptOf(session.ops[0]!) });
    // Slice 3 was propagated for object 2 before the cancel, so both objects have a mask there.
    expect(res.masks.map((m) => m.objectId)).toEqual([1n, 2n]);
    await call<RemoveObjectRequest, RemoveObjectResponse>(clients.segmentation, clients.segmentation.removeObject, { sessionId, objectId: 1n });
    const only2 = await collect<PropagateResponse>(propagate(sessionId, { direction: Direction.DIRECTION_FORWARD, maxSlices: 1 }));
    expect(only2[0]!.masks.map((m) => m.objectId)).toEqual([2n]);
    await call<ResetSessionRequest, ResetSessionResponse>(clients.segmentation, clients.segmentation.resetSession, { sessionId });
    const e = await grpcError(collect(propagate(sessionId, { direction: Direction.DIRECTION_FORWARD })));
    expect(e.code).toBe(status.FAILED_PRECONDITION);
    await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });

  it("refuses sessions beyond the configured maximum with RESOURCE_EXHAUSTED", async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await startSession({})).sessionId);
    const e = await grpcError(startSession({}));
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    for (const sessionId of ids) await call<CloseSessionRequest, CloseSessionResponse>(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  });
});
