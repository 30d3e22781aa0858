// The registry on the checked-in fixture models, with real onnxruntime-node sessions in real worker
// threads; expected values come from onnxruntime (Python) via the fixture generator.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { ModelRegistry, type TensorData } from "#server/onnx/model_registry.ts";
import { readNpy } from "#test/helpers/npy.ts";

const MODELS = fileURLToPath(new URL("../../fixtures/models", import.meta.url));
const REPO = fileURLToPath(new URL("../../..", import.meta.url));
const golden = { input: readNpy(`${MODELS}/tiny_conv3d/golden_input.npy`), output: readNpy(`${MODELS}/tiny_conv3d/golden_output.npy`) };

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function failure(p: Promise<unknown>): Promise<SpatialSamError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  return e as SpatialSamError;
}

const image = (dims: number[], data?: Float32Array): Record<string, TensorData> => ({
  image: { dtype: "float32", dims, data: data ?? new Float32Array(dims.reduce((a, b) => a * b, 1)) },
});

describe("ModelRegistry on the fixture models", () => {
  let registry: ModelRegistry;
  beforeAll(async () => {
    registry = await ModelRegistry.load(MODELS, { logger: pino({ level: "silent" }), workers: 1, intraOpThreads: 1 });
  });
  afterAll(async () => {
    await registry.close();
  });

  it("lists both models with their manifests, raw JSON and provider", () => {
    const models = registry.list();
    expect(models.map((m) => m.manifest.name).sort()).toEqual(["slow_conv3d", "tiny_conv3d"]);
    const tiny = registry.get("tiny_conv3d")!;
    expect(tiny.executionProvider).toBe("cpu");
    expect(tiny.manifest.inputs).toEqual([{ name: "image", dtype: "float32", shape: [1, 1, "z", "y", "x"], axes: "NCZYX" }]);
    expect(tiny.manifest.contextZyx).toEqual([1, 1, 1]);
    expect(JSON.parse(tiny.manifestJson).sha256).toBe(tiny.manifest.sha256);
    expect(tiny.onnxPath).toBe(`${MODELS}/tiny_conv3d/model.onnx`);
  });

  it("matches onnxruntime-Python's golden output within 1e-5", async () => {
    const { input, output } = golden;
    const out = await registry.run("tiny_conv3d", { image: { dtype: "float32", dims: input.shape, data: input.data } });
    expect(Object.keys(out)).toEqual(["out"]);
    expect(out.out!.dtype).toBe("float32");
    expect(out.out!.dims).toEqual(output.shape);
    expect(maxAbsDiff(out.out!.data as Float32Array, output.data as Float32Array)).toBeLessThan(1e-5);
    // The caller keeps its input: the registry copies before transferring to the worker.
    expect(input.data.length).toBe(16 * 32 * 32);
  });

  it("takes any size on the dynamic axes", async () => {
    const out = await registry.run("tiny_conv3d", image([1, 1, 3, 5, 7]));
    expect(out.out!.dims).toEqual([1, 2, 3, 5, 7]);
  });

  it.each<[string, Record<string, TensorData>, string, RegExp]>([
    ["a missing input", {}, "inputs.image", /is required/],
    ["an unknown input", { ...image([1, 1, 2, 2, 2]), mask: image([1])["image"]! }, "inputs.mask", /no such input/],
    ["a wrong dtype", { image: { dtype: "float64", dims: [1, 1, 2, 2, 2], data: new Float64Array(8) } }, "inputs.image", /must be float32, got float64/],
    ["data of another type than dtype", { image: { dtype: "float32", dims: [1, 1, 2, 2, 2], data: new Int32Array(8) } }, "inputs.image", /Float32Array/],
    ["a wrong rank", image([1, 2, 2, 2]), "inputs.image", /5 dimensions \(NCZYX\)/],
    ["a wrong static dimension", image([1, 3, 2, 2, 2]), "inputs.image", /dimension 1 \(C\) must be 1/],
    ["a zero dimension", image([1, 1, 0, 2, 2]), "inputs.image", /positive integer/],
    ["too few elements", image([1, 1, 2, 2, 2], new Float32Array(7)), "inputs.image", /7 elements/],
  ])("rejects %s with InvalidArgument naming the input", async (_what, inputs, field, message) => {
    const e = await failure(registry.run("tiny_conv3d", inputs));
    expect(e._tag).toBe("InvalidArgument");
    expect(e.field).toBe(field);
    expect(e.message).toMatch(message);
  });

  it("rejects an unknown model with NotFound naming `model`", async () => {
    const e = await failure(registry.run("no_such_model", image([1, 1, 2, 2, 2])));
    expect(e._tag).toBe("NotFound");
    expect(e.field).toBe("model");
  });

  it("refuses to arm a test fault unless created with allowTestFaults", () => {
    expect(() => registry.armFaultForTest("exit")).toThrow(/allowTestFaults/);
  });

  it("works when spawned from a plain `node --import tsx` process, not only under vitest", async () => {
    const script = `
      import { pino } from "pino";
      import { ModelRegistry } from "#server/onnx/model_registry.ts";
      import { readNpy } from "#test/helpers/npy.ts";
      const x = readNpy(${JSON.stringify(`${MODELS}/tiny_conv3d/golden_input.npy`)});
      const y = readNpy(${JSON.stringify(`${MODELS}/tiny_conv3d/golden_output.npy`)});
      const registry = await ModelRegistry.load(${JSON.stringify(MODELS)}, { logger: pino({ level: "silent" }), intraOpThreads: 1 });
      const out = await registry.run("tiny_conv3d", { image: { dtype: "float32", dims: x.shape, data: x.data } });
      let d = 0;
      out.out.data.forEach((v, i) => { d = Math.max(d, Math.abs(v - y.data[i])); });
      await registry.close();
      console.log(JSON.stringify({ maxAbsDiff: d }));
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", "--input-type=module", "--eval", script], { cwd: REPO });
    expect(JSON.parse(stdout.trim().split("\n").at(-1)!).maxAbsDiff).toBeLessThan(1e-5);
  });
});
