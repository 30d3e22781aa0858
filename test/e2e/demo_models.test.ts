// The demo models (models/sdf_unet3d_demo, models/propagator_demo) on the demo's own volume (seed
// DEMO_SEED, never seen in training), as `npm start` serves it: a real server, the generated gRPC
// clients, the U-Net's SDF computed on demand as the memory, a session over whole 256x256 slices (as the
// viewer's live session opens it), from 4 slices above the object to 4 below it (fewer slices to run). One click at the
// deepest point of an object's largest cross-section (chosen by scipy in a spawned Python) must
// segment that object in 3D and leave its neighbours alone.
// Thresholds: on the held-out seed 201 (models/README.md, "Demo models"; the manifest's validation),
// in whole slices, the propagator reaches a mean 3D IoU of 0.69 with 20% of the predicted voxels on
// other objects (a few objects account for most of it); this object measured 0.974 and 0.001. The
// Lucchi++ propagator scores 0.08 and 88% there.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Direction, PointLabel, type AddPromptsRequest, type AddPromptsResponse, type ObjectMask, type PropagateResponse, type StartSessionRequest, type StartSessionResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import { encodeNpy } from "#src/npy.ts";
import { DEMO_SHAPE_ZYX, ensureDemoVolume } from "#server/demo.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { call, collect, connect, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";

const root = join(import.meta.dirname, "..", "..");
const python = join(root, "models", ".venv", "bin", "python");
const demoDir = join(root, ".cache", "demo");
const PROPAGATOR = join(root, "models", "propagator_demo");
const SDF_MODEL = "sdf_unet3d_demo";
const [Z, Y, X] = DEMO_SHAPE_ZYX;
const haveModels = existsSync(join(PROPAGATOR, "propagator.json")) && existsSync(join(root, "models", SDF_MODEL, "model.json"));

let dir: string;
let server: RunningServer;
let clients: Clients;
let labels: BigUint64Array; // the demo's instance labels [Z, Y, X]
let imageId: string;

/** Pastes an ObjectMask (cropped to its bbox, volume coordinates) into slice z of a [Z, Y, X] mask. */
function paste(out: Uint8Array, z: number, m: ObjectMask): void {
  const b = m.bbox!;
  const w = b.x1 - b.x0;
  for (let y = b.y0; y < b.y1; y++) for (let x = b.x0; x < b.x1; x++) if (m.data[(y - b.y0) * w + (x - b.x0)]) out[(z * Y + y) * X + x] = 1;
}

/** IoU of `pred` with object `id`, and the share of predicted voxels that lie on other objects. */
function score(pred: Uint8Array, id: bigint): { iou: number; onOthers: number } {
  let inter = 0;
  let union = 0;
  let others = 0;
  let predicted = 0;
  for (let i = 0; i < pred.length; i++) {
    const l = labels[i]!;
    const p = pred[i] === 1;
    if (p) predicted++;
    if (p && l === id) inter++;
    if (p || l === id) union++;
    if (p && l !== 0n && l !== id) others++;
  }
  return { iou: union === 0 ? 1 : inter / union, onOthers: predicted === 0 ? 0 : others / predicted };
}

/** scipy's choice of the object (the largest), its click (the deepest point of its largest cross-section) and its z range. */
function pickObject(): { id: bigint; z: number; y: number; x: number; z0: number; z1: number } {
  writeFileSync(join(dir, "labels.npy"), encodeNpy("uint64", DEMO_SHAPE_ZYX, labels));
  const script = `
import json, sys, numpy as np
from scipy import ndimage as ndi
lab = np.load(sys.argv[1])
ids, counts = np.unique(lab[lab > 0], return_counts=True)
obj = int(ids[np.argmax(counts)])
m = lab == obj
z = int(np.argmax(m.sum(axis=(1, 2))))
d = ndi.distance_transform_edt(m[z])
y, x = np.unravel_index(int(np.argmax(d)), d.shape)
zs = np.nonzero(m.any(axis=(1, 2)))[0]
z0, z1 = max(0, int(zs[0]) - 4), min(lab.shape[0], int(zs[-1]) + 5)
print(json.dumps({"id": obj, "z": z, "y": int(y), "x": int(x), "z0": z0, "z1": z1}))
`;
  const p = JSON.parse(execFileSync(python, ["-c", script, join(dir, "labels.npy")], { encoding: "utf8" })) as { id: number; z: number; y: number; x: number; z0: number; z1: number };
  return { ...p, id: BigInt(p.id) };
}

beforeAll(async () => {
  if (!haveModels) return;
  dir = mkdtempSync(join(tmpdir(), "e2e-demo-"));
  const layers = await ensureDemoVolume(demoDir);
  const seg = await openVolume(`precomputed://file://${layers.labels}`, { roots: [demoDir] });
  try {
    labels = (await seg.read({ offsetZyx: [0, 0, 0], shapeZyx: DEMO_SHAPE_ZYX }, 0)) as BigUint64Array;
  } finally {
    await seg.close();
  }
  server = await serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: join(root, "models"),
    roots: [demoDir, dir],
    cacheDir: join(dir, "cache"),
    workers: 2,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 64,
    log: silentLogger(),
    propagation: { dir: PROPAGATOR, maxSessions: 4, idleTimeoutMs: 600_000, defaultSdfModel: SDF_MODEL },
  });
  clients = connect(server.grpc.address);
  const opened = await grpcOpenVolume(clients, { url: `precomputed://file://${layers.image}` });
  imageId = opened.volume!.volumeId;
}, 300_000);

afterAll(async () => {
  clients?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!haveModels)("demo models on the demo volume", () => {
  it("one click segments the clicked mitochondrion in 3D, not its neighbours", async () => {
    const target = pickObject();
    const started = await call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
      volumeId: imageId,
      box: { offset: { z: target.z0, y: 0, x: 0 }, shape: { z: target.z1 - target.z0, y: Y, x: X } },
      scale: 0,
      model: "",
      sdfModel: "",
      sdfVolumeId: "",
    });
    const added = await call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
      sessionId: started.sessionId,
      objectId: 5n,
      z: target.z,
      points: [{ y: target.y, x: target.x, label: PointLabel.POINT_LABEL_POSITIVE }],
      clearOld: false,
    });
    const pred = new Uint8Array(Z * Y * X);
    paste(pred, target.z, added.masks.find((m) => m.objectId === 5n)!);
    const stream = await collect<PropagateResponse>(
      clients.segmentation.propagate({ sessionId: started.sessionId, startZ: target.z, direction: Direction.DIRECTION_BOTH, maxSlices: 0, objectIds: [] }),
    );
    for (const r of stream) {
      const m = r.masks.find((k) => k.objectId === 5n);
      if (m !== undefined && r.z !== target.z) paste(pred, r.z, m);
    }
    const s = score(pred, target.id);
    process.stdout.write(`e2e demo: object ${target.id} clicked at z ${target.z}: 3D IoU ${s.iou.toFixed(3)}, share on other objects ${s.onOthers.toFixed(3)}\n`);
    expect(s.iou).toBeGreaterThan(0.8);
    expect(s.onOthers).toBeLessThan(0.1);
    // About 40 s alone on 2 cores; 120 s was not enough beside a training run (the machines are shared).
  }, 300_000);
});
