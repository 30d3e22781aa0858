// The gRPC server end to end: a real server on 127.0.0.1:0, the generated clients over a socket,
// real ONNX models in worker threads, and every error path of the status boundary.
import { status, type ServiceError } from "@grpc/grpc-js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataType as WireDataType } from "#proto/spatial_sam/v1/common.ts";
import type { ListModelsResponse, RunModelRequest, RunModelResponse } from "#proto/spatial_sam/v1/model.ts";
import type { StartSessionRequest, StartSessionResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import type { ComputeSdfResponse } from "#proto/spatial_sam/v1/sdf.ts";
import { makeDemoVolume } from "#src/demo_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { checkHealth } from "#server/grpc/health_client.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { call, collect, connect, grpcError, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { readNpy } from "#test/helpers/npy.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const fixtures = join(root, "test", "fixtures", "models");

let server: RunningServer;
let clients: Clients;
let dataDir: string;

function runModel(req: RunModelRequest, deadline?: number): Promise<RunModelResponse> {
  return call(clients.models, clients.models.runModel, req, deadline === undefined ? {} : { deadline });
}

function floatTensor(dims: number[], fill: (i: number) => number) {
  const n = dims.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = fill(i);
  return { dtype: WireDataType.DATA_TYPE_FLOAT32, shape: dims.map(BigInt), data: Buffer.from(a.buffer) };
}

const slowInput = () => ({ model: "slow_conv3d", inputs: { image: floatTensor([1, 1, 64, 64, 64], (i) => (i % 97) / 97) } });

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "grpc-test-"));
  server = await serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: -1,
    modelsDir: fixtures,
    roots: [dataDir],
    cacheDir: join(dataDir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 1,
    maxMessageBytes: 4 * 1024 * 1024,
    log: silentLogger(),
    allowTestFaults: true,
  });
  clients = connect(server.grpc.address);
});

afterAll(async () => {
  clients?.close();
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe("health and models", () => {
  it("answers grpc.health.v1 Check with SERVING, for the server and each service", async () => {
    expect(await checkHealth(server.grpc.address)).toBe("SERVING");
    expect(await checkHealth(server.grpc.address, "spatial_sam.v1.ModelService")).toBe("SERVING");
  });

  it("lists every loaded model with its manifest", async () => {
    const res = await call<object, ListModelsResponse>(clients.models, clients.models.listModels, {});
    const names = res.models.map((m) => m.name).sort();
    expect(names).toEqual(["slow_conv3d", "tiny_conv3d"]);
    const tiny = res.models.find((m) => m.name === "tiny_conv3d")!;
    expect(tiny.kind).toBe("test");
    expect(tiny.executionProvider).toBe("cpu");
    expect(tiny.inputs.map((i) => [i.name, i.dtype, i.axes])).toEqual([["image", WireDataType.DATA_TYPE_FLOAT32, "NCZYX"]]);
    expect(tiny.inputs[0]!.shape).toEqual([1n, 1n, -1n, -1n, -1n]);
    expect(tiny.onnxSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.parse(tiny.manifestJson).name).toBe("tiny_conv3d");
  });

  it("runs tiny_conv3d through the worker pool matching onnxruntime in Python within 1e-5", async () => {
    const input = readNpy(join(fixtures, "tiny_conv3d", "golden_input.npy"));
    const golden = readNpy(join(fixtures, "tiny_conv3d", "golden_output.npy"));
    const res = await runModel({
      model: "tiny_conv3d",
      inputs: {
        image: {
          dtype: WireDataType.DATA_TYPE_FLOAT32,
          shape: input.shape.map(BigInt),
          data: Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength),
        },
      },
    });
    const out = res.outputs.out!;
    expect(out.shape.map(Number)).toEqual(golden.shape);
    const got = new Float32Array(out.data.buffer.slice(out.data.byteOffset, out.data.byteOffset + out.data.byteLength));
    const want = golden.data as Float32Array;
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i]! - want[i]!));
    expect(got.length).toBe(want.length);
    expect(maxDiff).toBeLessThan(1e-5);
  });
});

describe("the event loop stays free", () => {
  it("answers Health quickly while a model runs for hundreds of ms in a worker", async () => {
    const started = performance.now();
    let finished = 0;
    const run = runModel(slowInput()).then(() => (finished = performance.now()));
    // Let the request reach the worker first.
    await new Promise((r) => setTimeout(r, 30));
    const latencies: number[] = [];
    while (finished === 0) {
      const t = performance.now();
      expect(await checkHealth(server.grpc.address)).toBe("SERVING");
      latencies.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 10));
    }
    await run;
    expect(finished - started).toBeGreaterThan(200);
    expect(latencies.length).toBeGreaterThanOrEqual(3);
    // The median, so that one scheduling hiccup on a shared 2-core machine does not decide it.
    latencies.sort((a, b) => a - b);
    expect(latencies[Math.floor(latencies.length / 2)]!).toBeLessThan(50);
  });
});

describe("errors map to status codes", () => {
  it("INVALID_ARGUMENT names the field (data length that does not match the shape)", async () => {
    const bad = floatTensor([1, 1, 4, 4, 4], () => 0);
    bad.data = bad.data.subarray(0, 12);
    const e = await grpcError(runModel({ model: "tiny_conv3d", inputs: { image: bad } }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toContain("inputs.image.data");
    expect(e.metadata.get("spatial-sam-field")).toEqual(["inputs.image.data"]);
  });

  it("INVALID_ARGUMENT names the field (wrong dtype for the model)", async () => {
    const t = { dtype: WireDataType.DATA_TYPE_UINT8, shape: [1n, 1n, 2n, 2n, 2n], data: Buffer.alloc(8) };
    const e = await grpcError(runModel({ model: "tiny_conv3d", inputs: { image: t } }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toContain("inputs.image");
  });

  it("NOT_FOUND for an unknown model, naming it", async () => {
    const e = await grpcError(runModel({ model: "no_such_model", inputs: {} }));
    expect(e.code).toBe(status.NOT_FOUND);
    expect(e.details).toContain("model");
  });

  it("RESOURCE_EXHAUSTED when a model's queue is full, never an unbounded backlog", async () => {
    // One worker and a queue of one: the first runs, the second waits, the rest are refused.
    const results = await Promise.allSettled([0, 1, 2, 3].map(() => runModel(slowInput())));
    const codes = results.map((r) => (r.status === "fulfilled" ? status.OK : (r.reason as ServiceError).code));
    expect(codes.filter((c) => c === status.OK).length).toBe(2);
    expect(codes.filter((c) => c === status.RESOURCE_EXHAUSTED).length).toBe(2);
  });

  it("DEADLINE_EXCEEDED when the client's deadline passes, and the server keeps serving", async () => {
    const e = await grpcError(runModel(slowInput(), Date.now() + 50));
    expect(e.code).toBe(status.DEADLINE_EXCEEDED);
    expect(await checkHealth(server.grpc.address)).toBe("SERVING");
  });

  it("CANCELLED when the client goes away; the queue slot is released", async () => {
    const err = await new Promise<ServiceError>((resolve) => {
      const c = clients.models.runModel(slowInput(), (e) => resolve(e!));
      setTimeout(() => c.cancel(), 50);
    });
    expect(err.code).toBe(status.CANCELLED);
    // After the cancelled run, the model is usable again (nothing leaked in the queue).
    const ok = await runModel({ model: "tiny_conv3d", inputs: { image: floatTensor([1, 1, 4, 4, 4], () => 1) } });
    expect(ok.outputs.out!.shape.map(Number)).toEqual([1, 2, 4, 4, 4]);
  });

  it("a worker killed mid-inference fails only that call; the next call succeeds on a new worker", async () => {
    server.registry.armFaultForTest("exit");
    const e = await grpcError(runModel({ model: "tiny_conv3d", inputs: { image: floatTensor([1, 1, 4, 4, 4], () => 1) } }));
    expect(e.code).toBe(status.UNAVAILABLE);
    const ok = await runModel({ model: "tiny_conv3d", inputs: { image: floatTensor([1, 1, 4, 4, 4], () => 1) } });
    expect(ok.outputs.out!.shape.map(Number)).toEqual([1, 2, 4, 4, 4]);
    expect(await checkHealth(server.grpc.address)).toBe("SERVING");
  });

  it("RESOURCE_EXHAUSTED for a message over the size limit", async () => {
    const e = await grpcError(runModel({ model: "tiny_conv3d", inputs: { image: floatTensor([1, 1, 128, 128, 128], () => 0) } }));
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
  });

  it("PERMISSION_DENIED for a volume outside the configured roots", async () => {
    const e = await grpcError(
      grpcOpenVolume(clients, { url: "zarr://file:///etc" }),
    );
    expect(e.code).toBe(status.PERMISSION_DENIED);
  });

  it("INVALID_ARGUMENT naming url for a malformed volume URL", async () => {
    const e = await grpcError(grpcOpenVolume(clients, { url: "nonsense" }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.metadata.get("spatial-sam-field")).toEqual(["url"]);
  });

  it("NOT_FOUND for an unknown volume id on a stream", async () => {
    const stream = clients.volumes.readRegion({ volumeId: "nope", scale: 0, box: { offset: { z: 0, y: 0, x: 0 }, shape: { z: 1, y: 1, x: 1 } } });
    const e = await grpcError(collect(stream));
    expect(e.code).toBe(status.NOT_FOUND);
  });

  it("UNIMPLEMENTED for engine RPCs that have not landed, with a message saying so", async () => {
    const e = await grpcError(
      call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
        volumeId: "v",
        box: undefined,
        scale: 0,
        model: "",
        sdfModel: "",
        sdfVolumeId: "",
      }),
    );
    expect(e.code).toBe(status.UNIMPLEMENTED);
    expect(e.details).toContain("StartSession");
  });
});

describe("ComputeSdf", () => {
  it("streams progress and ends with where the SDF lives; the result opens as a volume", async () => {
    const shape: [number, number, number] = [12, 40, 40];
    const store = await FileStore.open(join(dataDir, "em"), [dataDir]);
    const writer = await PrecomputedWriter.create(store, {
      type: "image",
      dataType: "uint8",
      numChannels: 1,
      scales: [{ key: "s0", sizeXyz: [40, 40, 12], resolutionXyz: [8, 8, 8], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [40, 40, 12], encoding: "raw" }],
    });
    await writer.writeChunk(0, [0, 0, 0], makeDemoVolume(shape, 5, 3).image);
    const opened = await grpcOpenVolume(clients, {
      url: `precomputed://file://${join(dataDir, "em")}`,
    });
    const box = { offset: { z: 0, y: 0, x: 0 }, shape: { z: 12, y: 40, x: 40 } };
    const progress = await collect<ComputeSdfResponse>(clients.sdf.computeSdf({ volumeId: opened.volume!.volumeId, box, scale: 0, model: "tiny_conv3d" }));
    const last = progress.at(-1)!;
    expect(last.done).toBe(true);
    expect(last.blocksDone).toBe(last.blocksTotal);
    expect(last.resultUrl).toMatch(/^precomputed:\/\/file:\/\//);
    const sdf = await grpcOpenVolume(clients, { url: last.resultUrl });
    expect(sdf.volume!.dtype).toBe(WireDataType.DATA_TYPE_FLOAT32);
    expect(sdf.volume!.scales[0]!.shape).toEqual(box.shape);
    // A second request finds every block cached.
    const again = await collect<ComputeSdfResponse>(clients.sdf.computeSdf({ volumeId: opened.volume!.volumeId, box, scale: 0, model: "tiny_conv3d" }));
    expect(again.at(-1)!.blocksCached).toBe(last.blocksTotal);
  });

  it("NOT_FOUND for an unknown volume", async () => {
    const e = await grpcError(collect(clients.sdf.computeSdf({ volumeId: "nope", box: undefined, scale: 0, model: "tiny_conv3d" })));
    expect(e.code).toBe(status.NOT_FOUND);
  });
});
