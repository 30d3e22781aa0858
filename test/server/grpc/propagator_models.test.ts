// Several propagators on one server, chosen per session by StartSession's `model` (the name in
// propagator.json): a real server with the shipped propagator as the default and the golden tiny
// propagator and the shipped research-use one (models/propagator_lucchi_cdeep3m) as extras. The tiny one
// answers the Python golden masks, the shipped ones answer what their graphs give in this process, and
// an unknown name is NOT_FOUND naming `model`; the CLI's --more-propagators loads the extra folders.
import { status } from "@grpc/grpc-js";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  PointLabel,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type ObjectMask,
  type SegmentVolumeResponse,
  type StartSessionRequest,
  type StartSessionResponse,
} from "#proto/spatial_sam/v1/segmentation.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { silentLogger } from "#server/log.ts";
import { EmbeddingCache } from "#server/engine/propagation/embedding_cache.ts";
import { loadPropagator } from "#server/engine/propagation/propagator.ts";
import { PropagationSession } from "#server/engine/propagation/session.ts";
import type { RunningServer } from "#server/serve.ts";
import { startTestServer } from "#test/helpers/test_server.ts";
import { call, collect, connect, grpcError, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const shipped = join(root, "models", "propagator_lucchi");
const research = join(root, "models", "propagator_lucchi_cdeep3m");
const image = readNpy(join(golden, "image.npy"));
const sdf = readNpy(join(golden, "sdf.npy"));
const [Z, Y, X] = image.shape as Vec3;
// The golden session's first prompt (session.json ops[0]): object 1 on slice 3, one positive and
// one negative click; its Python masks are add_0.npy.
const PROMPT = { z: 3, points: [{ x: 0, y: 18, label: 1 as const }, { x: 2, y: 2, label: 0 as const }] };

let server: RunningServer;
let clients: Clients;
let dir: string;
let imageId: string;
let sdfId: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "propagator-models-"));
  server = await startTestServer(dir, { propagation: { dir: shipped, extraDirs: [join(golden, "model"), research] } });
  clients = connect(server.grpc.address);
  const open = async (url: string) => (await grpcOpenVolume(clients, { url })).volume!.volumeId;
  imageId = await open(await writePrecomputedArray(dir, "image", "uint8", image.data, [Z, Y, X]));
  sdfId = await open(await writePrecomputedArray(dir, "sdf", "float32", sdf.data, [Z, Y, X]));
}, 60_000);

afterAll(async () => {
  clients?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const box = { offset: { z: 0, y: 0, x: 0 }, shape: { z: Z, y: Y, x: X } };

async function clickWith(model: string): Promise<Uint8Array> {
  const { sessionId } = await call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
    volumeId: imageId,
    box,
    scale: 0,
    model,
    sdfModel: "",
    sdfVolumeId: sdfId,
  });
  const res = await call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
    sessionId,
    objectId: 1n,
    z: PROMPT.z,
    points: PROMPT.points.map((p) => ({ x: p.x, y: p.y, label: p.label === 1 ? PointLabel.POINT_LABEL_POSITIVE : PointLabel.POINT_LABEL_NEGATIVE })),
    clearOld: false,
  });
  await call(clients.segmentation, clients.segmentation.closeSession, { sessionId });
  return uncrop(res.masks[0]!);
}

function uncrop(m: ObjectMask): Uint8Array {
  const out = new Uint8Array(Y * X);
  const b = m.bbox!;
  const w = b.x1 - b.x0;
  for (let r = b.y0; r < b.y1; r++) for (let c = b.x0; c < b.x1; c++) out[r * X + c] = m.data[(r - b.y0) * w + (c - b.x0)]!;
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

/** The same click through a shipped folder's graphs in this process (its own pool and cache). */
async function inProcess(folder: string): Promise<Uint8Array> {
  const propagator = await loadPropagator(folder, { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
  try {
    const slice = (a: ArrayLike<number>, z: number) => Array.prototype.slice.call(a, z * Y * X, (z + 1) * Y * X) as number[];
    const session = new PropagationSession({
      propagator,
      embeddings: new EmbeddingCache(1 << 26),
      slices: {
        shapeZyx: [Z, Y, X],
        imageKey: "golden",
        image: async (z) => slice(image.data as ArrayLike<number>, z),
        sdf: async (z) => Float32Array.from(slice(sdf.data as ArrayLike<number>, z)),
      },
    });
    return (await session.addPrompts(1n, PROMPT.z, { points: PROMPT.points }))[0]!.mask;
  } finally {
    await propagator.close();
  }
}

describe("StartSession's model", () => {
  it("picks the propagator by name; empty is the configured default", async () => {
    const want = readNpy(join(golden, "add_0.npy")).data as Uint8Array;
    const tiny = await clickWith("propagator_tiny");
    expect(iou(tiny, want)).toBeGreaterThanOrEqual(0.999);

    const reference = await inProcess(shipped);
    const byDefault = await clickWith("");
    const byName = await clickWith("propagator_compact");
    expect(iou(byDefault, reference)).toBeGreaterThanOrEqual(0.999);
    expect(iou(byName, reference)).toBeGreaterThanOrEqual(0.999);
    const researchRef = await inProcess(research);
    expect(iou(await clickWith("propagator_lucchi_cdeep3m"), researchRef)).toBeGreaterThanOrEqual(0.999);
    // The models disagree on this click, so the comparisons above tell them apart.
    expect(iou(tiny, reference)).toBeLessThan(0.9);
    expect(iou(researchRef, reference)).toBeLessThan(0.99);
  }, 60_000);

  it("an unknown name is NOT_FOUND naming model and listing the loaded ones (StartSession and SegmentVolume)", async () => {
    const e = await grpcError(clickWith("no_such_propagator"));
    expect(e.code).toBe(status.NOT_FOUND);
    expect(e.details).toMatch(/^model: /);
    expect(e.details).toContain('"propagator_compact", "propagator_tiny", "propagator_lucchi_cdeep3m"');
    const s = await grpcError(
      collect<SegmentVolumeResponse>(
        clients.segmentation.segmentVolume({ volumeId: imageId, box, scale: 0, model: "no_such_propagator", sdfModel: "", sdfVolumeId: sdfId, outputUrl: `precomputed://file://${join(dir, "seg")}`, propagatedOnly: false }),
      ),
    );
    expect(s.code).toBe(status.NOT_FOUND);
    expect(s.details).toMatch(/^model: /);
  });

  it("`spatial-sam serve --propagator A --more-propagators B` loads both", async () => {
    const child = spawn(
      process.execPath,
      [join(root, "server", "bin", "spatial-sam.js"), "serve", "--port", "0", "--http-port", "-1", "--models", join(root, "test", "fixtures", "models"), "--roots", dir, "--cache-dir", join(dir, "cli-cache"), "--threads", "1", "--propagator", shipped, "--more-propagators", join(golden, "model")],
      { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      let out = "";
      const address = await new Promise<string>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`serve did not start: ${out}`)), 90_000);
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          const m = /gRPC (\S+)/.exec(out);
          if (m) {
            clearTimeout(t);
            resolve(m[1]!.replace(/,$/, ""));
          }
        });
        child.once("exit", (code) => reject(new Error(`serve exited with ${code}: ${out}`)));
      });
      const c = connect(address);
      try {
        const e = await grpcError(
          call<StartSessionRequest, StartSessionResponse>(c.segmentation, c.segmentation.startSession, { volumeId: "x", box, scale: 0, model: "nope", sdfModel: "", sdfVolumeId: "" }),
        );
        expect(e.code).toBe(status.NOT_FOUND);
        expect(e.details).toContain('"propagator_compact", "propagator_tiny"');
      } finally {
        c.close();
      }
    } finally {
      child.kill("SIGTERM");
    }
  }, 120_000);
});
