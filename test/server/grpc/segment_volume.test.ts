// SegmentVolume end to end: a real server (serve()) with the golden propagator and the tiny 3D
// model as SDF, the generated client over a socket; the streamed progress, the written volume
// (equal to the engine's own run with the same SDF model), a given SDF volume instead of the model,
// one run per output (a second concurrent call is refused), and the errors by code and field.
import { status } from "@grpc/grpc-js";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { hostname } from "node:os";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ComputeSdfResponse } from "#proto/spatial_sam/v1/sdf.ts";
import type { SegmentVolumeRequest, SegmentVolumeResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { silentLogger } from "#server/log.ts";
import { openOutput } from "#server/engine/auto/output.ts";
import { segmentVolume } from "#server/engine/auto/segment.ts";
import { loadPropagator } from "#server/engine/propagation/propagator.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import type { RunningServer } from "#server/serve.ts";
import { startTestServer } from "#test/helpers/test_server.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { collect, connect, grpcError, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const models = join(root, "test", "fixtures", "models");
const image = readNpy(join(golden, "image.npy"));
const [Z, Y, X] = image.shape as Vec3;

let server: RunningServer;
let clients: Clients;
let dir: string;
let imageUrl: string;
let imageId: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "segment-volume-"));
  const store = await FileStore.open(join(dir, "image"), [dir]);
  const writer = await PrecomputedWriter.create(store, {
    type: "image",
    dataType: "uint8",
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: [X, Y, Z], resolutionXyz: [5, 5, 5], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [X, Y, Z], encoding: "raw" }],
  });
  await writer.writeChunk(0, [0, 0, 0], image.data);
  server = await startTestServer(dir, { propagation: { dir: join(golden, "model") } });
  clients = connect(server.grpc.address);
  imageUrl = `precomputed://file://${join(dir, "image")}`;
  const opened = await grpcOpenVolume(clients, { url: imageUrl });
  imageId = opened.volume!.volumeId;
}, 60_000);

afterAll(async () => {
  clients?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const request = (req: Partial<SegmentVolumeRequest>): SegmentVolumeRequest => ({
  volumeId: imageId,
  box: { offset: { z: 0, y: 0, x: 0 }, shape: { z: Z, y: Y, x: X } },
  scale: 0,
  model: "",
  sdfModel: "tiny_conv3d",
  sdfVolumeId: "",
  outputUrl: `precomputed://file://${join(dir, "out")}`,
  propagatedOnly: false,
  ...req,
});

async function readLabels(url: string): Promise<BigUint64Array> {
  const v = await openVolume(url, { roots: [dir] });
  try {
    return (await v.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)) as BigUint64Array;
  } finally {
    await v.close();
  }
}

describe("SegmentVolume", () => {
  it("streams progress to a final done message and writes what the engine writes in process", async () => {
    const messages = await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({})));
    const final = messages.at(-1)!;
    expect(final.done).toBe(true);
    expect(final.resultUrl).toBe(`precomputed://file://${join(dir, "out")}`);
    expect(final.blocksDone).toBe(final.blocksTotal);
    expect(messages.slice(0, -1).every((m) => !m.done)).toBe(true);
    for (let i = 1; i < messages.length; i++) expect(messages[i]!.blocksDone).toBeGreaterThanOrEqual(messages[i - 1]!.blocksDone);
    const got = await readLabels(final.resultUrl);
    const ids = new Set(got);
    ids.delete(0n);
    expect(BigInt(ids.size)).toBe(final.objectsFound);
    expect(final.objectsFound).toBeGreaterThan(0n);

    // The same request through the engine in this process, with its own SDF cache and registry.
    const registry = await ModelRegistry.load(models, { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
    const propagator = await loadPropagator(join(golden, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
    const volume = await openVolume(imageUrl, { roots: [dir] });
    try {
      const engine = new SdfEngine({ registry, cacheDir: join(dir, "local-cache"), log: silentLogger(), concurrency: 1 });
      const r = await segmentVolume({
        volume,
        volumeKey: imageUrl,
        box: { offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] },
        scale: 0,
        sdf: { kind: "model", engine, model: "tiny_conv3d", openVolume: (u) => openVolume(u, { roots: [dir] }) },
        propagator,
        out: await openOutput(`precomputed://file://${join(dir, "local")}`, [dir], "out"),
      });
      expect(BigInt(r.objects)).toBe(final.objectsFound);
      const want = await readLabels(r.resultUrl);
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    } finally {
      await volume.close();
      await propagator.close();
      await registry.close();
    }
  }, 120_000);

  it("propagated_only writes the propagated masks alone: the default output less the SDF voxels no mask reached", async () => {
    const full = await readLabels((await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({})))).at(-1)!.resultUrl);
    const outputUrl = `precomputed://file://${join(dir, "masks_only")}`;
    const final = (await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({ outputUrl, propagatedOnly: true })))).at(-1)!;
    const masks = await readLabels(final.resultUrl);
    let filled = 0;
    full.forEach((v, i) => {
      if (masks[i] !== v) {
        expect(masks[i]).toBe(0n);
        filled++;
      }
    });
    expect(filled).toBeGreaterThan(0);
  }, 120_000);

  it("a cancelled call leaves a resumable output: the same request again finishes it with the same labels", async () => {
    const outputUrl = `precomputed://file://${join(dir, "cancelled")}`;
    const stream = clients.segmentation.segmentVolume(request({ outputUrl }));
    const cancelled = await new Promise<number>((resolve, reject) => {
      stream.on("data", () => stream.cancel());
      stream.on("error", (e: { code: number }) => resolve(e.code));
      stream.on("end", () => reject(new Error("the stream ended before the cancel")));
    });
    expect(cancelled).toBe(status.CANCELLED);
    const messages = await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({ outputUrl })));
    expect(messages.at(-1)!.done).toBe(true);
    const a = await readLabels(outputUrl);
    const b = await readLabels(`precomputed://file://${join(dir, "out")}`);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  }, 60_000);

  it("answers bad requests with INVALID_ARGUMENT naming the field", async () => {
    const cases: [Partial<SegmentVolumeRequest>, string][] = [
      [{ box: { offset: { z: 0, y: 0, x: 60 }, shape: { z: 2, y: 2, x: 8 } } }, "box"],
      [{ sdfModel: "no_such_model" }, "sdf_model"],
      [{ outputUrl: "" }, "output_url"],
      [{ outputUrl: `tiff://file://${join(dir, "x")}` }, "output_url"],
      [{ scale: 3 }, "scale"],
    ];
    for (const [req, field] of cases) {
      const e = await grpcError(collect(clients.segmentation.segmentVolume(request(req))));
      expect(e.code, field).toBe(status.INVALID_ARGUMENT);
      expect(e.details.startsWith(field), `${field}: ${e.details}`).toBe(true);
    }
    const outside = await grpcError(collect(clients.segmentation.segmentVolume(request({ outputUrl: "precomputed://file:///etc/seg" }))));
    expect(outside.code).toBe(status.PERMISSION_DENIED);
    const unknown = await grpcError(collect(clients.segmentation.segmentVolume(request({ volumeId: "nope" }))));
    expect(unknown.code).toBe(status.NOT_FOUND);
    for (const [req, field] of [
      [{ model: "other_propagator" }, "model"],
      [{ sdfVolumeId: "nope" }, "sdf_volume_id"],
    ] as const) {
      const e = await grpcError(collect(clients.segmentation.segmentVolume(request(req))));
      expect(e.code, field).toBe(status.NOT_FOUND);
      expect(e.details.startsWith(`${field}: `), e.details).toBe(true);
    }
    // The volume itself (uint8, not an SDF) on the right grid is accepted; a label volume is not.
    const labels = await grpcOpenVolume(clients, { url: `precomputed://file://${join(dir, "out")}` });
    const e = await grpcError(collect(clients.segmentation.segmentVolume(request({ sdfVolumeId: labels.volume!.volumeId, outputUrl: `precomputed://file://${join(dir, "bad")}` }))));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toMatch(/^sdf_volume_id: /);
  });

  it("with sdf_volume_id runs no SDF model and writes what the on-demand SDF gives for the same values", async () => {
    // The SDF the first test computed on demand (ComputeSdf answers it from the cache), copied into
    // a volume of its own: the same values under another URL.
    const sdfStream = clients.sdf.computeSdf({ volumeId: imageId, box: request({}).box, scale: 0, model: "tiny_conv3d" });
    const sdfUrl = (await collect<ComputeSdfResponse>(sdfStream)).at(-1)!.resultUrl;
    const cached = await openVolume(sdfUrl, { roots: [dir] });
    const values = (await cached.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)) as Float32Array;
    await cached.close();
    await writePrecomputedArray(dir, "sdf_copy", "float32", values, [Z, Y, X]);
    const copy = await grpcOpenVolume(clients, { url: `precomputed://file://${join(dir, "sdf_copy")}` });

    const before = server.registry.stats().dispatched;
    const outputUrl = `precomputed://file://${join(dir, "given_sdf")}`;
    // sdf_model is not looked at when an SDF volume is given (this one does not exist).
    const messages = await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({ sdfVolumeId: copy.volume!.volumeId, sdfModel: "no_such_model", outputUrl })));
    expect(messages.at(-1)!.done).toBe(true);
    expect(server.registry.stats().dispatched).toBe(before);
    const a = await readLabels(outputUrl);
    const b = await readLabels(`precomputed://file://${join(dir, "out")}`);
    expect(a.some((v) => v !== 0n)).toBe(true);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  }, 60_000);

  it("two concurrent calls on one output: one runs, the other fails naming output_url; the output is whole", async () => {
    const outputUrl = `precomputed://file://${join(dir, "contended")}`;
    const settled = await Promise.allSettled([0, 1].map(() => collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({ outputUrl })))));
    const ok = settled.filter((r) => r.status === "fulfilled");
    const failed = settled.flatMap((r) => (r.status === "rejected" ? [r.reason as { code: number; details: string }] : []));
    expect(ok.length).toBe(1);
    expect(failed.length).toBe(1);
    expect(failed[0]!.code).toBe(status.FAILED_PRECONDITION);
    expect(failed[0]!.details).toMatch(new RegExp(`^output_url: .*being written by pid ${process.pid} on ${hostname()}`));
    expect(existsSync(join(dir, "contended", "segment_work.lock"))).toBe(false);
    const a = await readLabels(outputUrl);
    const b = await readLabels(`precomputed://file://${join(dir, "out")}`);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
    // Released: the same request again runs (and finds everything done).
    expect((await collect<SegmentVolumeResponse>(clients.segmentation.segmentVolume(request({ outputUrl })))).at(-1)!.done).toBe(true);
  }, 60_000);
});
