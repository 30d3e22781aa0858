// Interactive propagation over gRPC against a real server: click-to-mask latency (AddPrompts round
// trip; cold = the slice's image embedding is computed in the call, warm = it is cached) and the
// propagation rate (slices/s, one object) of a streamed Propagate.
// Run: nice node --import tsx test/bench/propagation.bench.ts [propagator-dir] [fixture|lucchi] [crop-yx] [slices] [workers]
// Defaults: the golden fixture propagator on the golden 12x64x64 volume. "lucchi" reads a crop of
// ../shared/data/lucchi_pp/test; its label stack stands in for the SDF (timing only, not quality).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  Direction,
  PointLabel,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type PropagateResponse,
  type StartSessionRequest,
  type StartSessionResponse,
} from "#proto/spatial_sam/v1/segmentation.ts";
import type { OpenVolumeRequest, OpenVolumeResponse } from "#proto/spatial_sam/v1/volume.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { silentLogger } from "#server/log.ts";
import { serve } from "#server/serve.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { call, collect, connect } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";

const root = resolve(import.meta.dirname, "..", "..");
const propagatorDir = resolve(process.argv[2] ?? join(root, "test", "fixtures", "propagator", "model"));
const data = process.argv[3] ?? "fixture";
const cropYx = Number(process.argv[4] ?? 256);
const cropZ = Number(process.argv[5] ?? 32);
const workers = Number(process.argv[6] ?? 1);
const threads = Math.max(1, Math.floor(2 / workers));
const CLICKS = 20;

const dir = mkdtempSync(join(tmpdir(), "propagation-bench-"));
const server = await serve({
  host: "127.0.0.1",
  port: 0,
  httpPort: -1,
  modelsDir: join(root, "test", "fixtures", "models"),
  roots: [dir, resolve(root, "..", "shared", "data")],
  cacheDir: join(dir, "cache"),
  workers,
  intraOpThreads: threads,
  executionProvider: "cpu",
  maxQueuePerModel: 16,
  log: silentLogger(),
  propagation: { dir: propagatorDir },
});
const clients = connect(server.grpc.address);
const open = async (url: string) => (await call<OpenVolumeRequest, OpenVolumeResponse>(clients.volumes, clients.volumes.openVolume, { url })).volume!;

async function writeVolume(name: string, dtype: DataType, shape: [number, number, number], values: TypedArray): Promise<string> {
  const [z, y, x] = shape;
  const store = await FileStore.open(join(dir, name), [dir]);
  const w = await PrecomputedWriter.create(store, {
    type: "image",
    dataType: dtype,
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: [x, y, z], resolutionXyz: [5, 5, 5], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [x, y, z], encoding: "raw" }],
  });
  await w.writeChunk(0, [0, 0, 0], values);
  return (await open(`precomputed://file://${join(dir, name)}`)).volumeId;
}

let imageId: string;
let sdfId: string;
let box: { offset: { z: number; y: number; x: number }; shape: { z: number; y: number; x: number } };
if (data === "lucchi") {
  const base = resolve(root, "..", "shared", "data", "lucchi_pp", "test");
  const image = await open(`png://file://${join(base, "image")}`);
  imageId = image.volumeId;
  sdfId = (await open(`png://file://${join(base, "label")}`)).volumeId;
  box = { offset: { z: 0, y: 0, x: 0 }, shape: { z: cropZ, y: cropYx, x: cropYx } };
} else {
  const g = join(root, "test", "fixtures", "propagator");
  const shape = readNpy(join(g, "image.npy")).shape as [number, number, number];
  imageId = await writeVolume("image", "uint8", shape, readNpy(join(g, "image.npy")).data);
  sdfId = await writeVolume("sdf", "float32", shape, readNpy(join(g, "sdf.npy")).data);
  box = { offset: { z: 0, y: 0, x: 0 }, shape: { z: shape[0], y: shape[1], x: shape[2] } };
}

const { sessionId } = await call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
  volumeId: imageId,
  box,
  scale: 0,
  model: "",
  sdfModel: "",
  sdfVolumeId: sdfId,
});
const click = (z: number, i: number, clearOld: boolean) =>
  call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
    sessionId,
    objectId: 1n,
    z,
    points: [{ y: box.shape.y / 2 + (i % 5), x: box.shape.x / 2 + (i % 7), label: PointLabel.POINT_LABEL_POSITIVE }],
    clearOld,
  });
const time = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};
// Cold clicks on the last slices, then propagation from slice 0 through the slices before them
// (never embedded yet), then clicks on slice 0, whose embedding is cached by then.
const nCold = Math.min(5, box.shape.z - 2);
const cold: number[] = [];
for (let k = 0; k < nCold; k++) cold.push(await time(() => click(box.shape.z - 1 - k, k, true)));
await call(clients.segmentation, clients.segmentation.resetSession, { sessionId });
const first = await time(() => click(0, 0, true));
cold.push(first);
let slices = 0;
const propMs = await time(async () => {
  const stream = clients.segmentation.propagate({ sessionId, direction: Direction.DIRECTION_FORWARD, maxSlices: box.shape.z - nCold, objectIds: [] });
  slices = (await collect<PropagateResponse>(stream)).length;
});
const warm: number[] = [];
for (let i = 0; i < CLICKS; i++) warm.push(await time(() => click(0, i, i % 4 === 0)));

const q = (a: number[], p: number) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))]!;
const fmt = (v: number) => v.toFixed(1);
console.log(`propagation bench: ${propagatorDir} on ${data} box zyx ${box.shape.z}x${box.shape.y}x${box.shape.x}, ${workers} worker(s) x ${threads} thread(s), cpu`);
console.log("| measure | median | p95 | n |");
console.log("| --- | --- | --- | --- |");
console.log(`| click-to-mask, cold slice (ms) | ${fmt(q(cold, 0.5))} | ${fmt(q(cold, 0.95))} | ${cold.length} |`);
console.log(`| click-to-mask, embedded slice (ms) | ${fmt(q(warm, 0.5))} | ${fmt(q(warm, 0.95))} | ${warm.length} |`);
// The start slice is the prompted one (no model run): it is yielded but not counted.
console.log(`| propagation, slices not yet embedded (slices/s) | ${fmt((slices - 1) / (propMs / 1000))} | | ${slices - 1} slices in ${fmt(propMs)} ms |`);

clients.close();
await server.close();
rmSync(dir, { recursive: true, force: true });
