// ModelRegistry.load refuses to start on anything that does not match: each case copies a fixture
// model into a temp folder, breaks one thing, and checks the error names the file and field.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";

const MODELS = fileURLToPath(new URL("../../fixtures/models", import.meta.url));
const silent = pino({ level: "silent" });

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "spatial-sam-models-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A pino logger whose JSON lines land in `lines`. */
function capture(lines: Record<string, unknown>[]) {
  return pino(
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()));
        done();
      },
    }),
  );
}

/** Copies the tiny fixture model into `dir/<folder>`, letting `edit` change its manifest JSON. */
// The edits build manifests that no type would allow.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function tinyCopy(folder = "tiny", edit: (m: Record<string, any>) => void = () => {}): { manifestPath: string; onnxPath: string } {
  mkdirSync(join(dir, folder));
  const onnxPath = join(dir, folder, "model.onnx");
  copyFileSync(join(MODELS, "tiny_conv3d", "model.onnx"), onnxPath);
  const manifest = JSON.parse(readFileSync(join(MODELS, "tiny_conv3d", "model.json"), "utf8"));
  edit(manifest);
  const manifestPath = join(dir, folder, "model.json");
  writeFileSync(manifestPath, JSON.stringify(manifest));
  return { manifestPath, onnxPath };
}

async function loadFailure(options: { executionProvider?: "cpu" | "cuda" } = {}): Promise<SpatialSamError> {
  const e = await ModelRegistry.load(dir, { logger: silent, intraOpThreads: 1, ...options }).then(
    async (r) => {
      await r.close();
      return undefined;
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  return e as SpatialSamError;
}

describe("ModelRegistry.load refuses to start", () => {
  it("on an ONNX file whose sha256 differs from the manifest (DataCorruption naming the file)", async () => {
    const { onnxPath } = tinyCopy("tiny", (m) => (m.sha256 = "0".repeat(64)));
    const e = await loadFailure();
    expect(e._tag).toBe("DataCorruption");
    expect(e.field).toBe(onnxPath);
    expect(e.message).toMatch(/sha256 is [0-9a-f]{64} but .*model\.json says 0{64}/);
  });

  it("on a manifest input name the graph does not have", async () => {
    const { manifestPath } = tinyCopy("tiny", (m) => (m.inputs[0].name = "raw"));
    const e = await loadFailure();
    expect(e._tag).toBe("InvalidArgument");
    expect(e.field).toBe(`${manifestPath}:inputs[0].name`);
    expect(e.message).toMatch(/no input "raw" \(it has: image\)/);
  });

  it("on a manifest dtype or static dimension that disagrees with the graph", async () => {
    tinyCopy("a", (m) => (m.outputs[0].dtype = "float64"));
    const a = await loadFailure();
    expect(a.field).toMatch(/a\/model\.json:outputs\[0\]\.dtype$/);
    rmSync(join(dir, "a"), { recursive: true });
    tinyCopy("b", (m) => (m.outputs[0].shape[1] = 3));
    const b = await loadFailure();
    expect(b.field).toMatch(/b\/model\.json:outputs\[0\]\.shape\[1\]$/);
    expect(b.message).toMatch(/graph fixes it to 2/);
  });

  it("on an invalid manifest, naming file and field", async () => {
    const { manifestPath } = tinyCopy("tiny", (m) => (m.voxel_size_nm = [5, 5]));
    const e = await loadFailure();
    expect(e._tag).toBe("InvalidArgument");
    expect(e.field).toBe(`${manifestPath}:voxel_size_nm`);
  });

  it("on a manifest that is not JSON", async () => {
    const { manifestPath } = tinyCopy();
    writeFileSync(manifestPath, "{ not json");
    const e = await loadFailure();
    expect(e.field).toBe(manifestPath);
    expect(e.message).toMatch(/not valid JSON/);
  });

  it("on a missing ONNX file (NotFound naming it)", async () => {
    const { onnxPath } = tinyCopy();
    rmSync(onnxPath);
    const e = await loadFailure();
    expect(e._tag).toBe("NotFound");
    expect(e.field).toBe(onnxPath);
  });

  it("on an ONNX file that onnxruntime cannot load, even with a matching sha256", async () => {
    const junk = Buffer.from("this is not an ONNX protobuf");
    const sha256 = createHash("sha256").update(junk).digest("hex");
    const { onnxPath } = tinyCopy("tiny", (m) => (m.sha256 = sha256));
    writeFileSync(onnxPath, junk);
    const e = await loadFailure();
    expect(e._tag).toBe("DataCorruption");
    expect(e.field).toBe(onnxPath);
    expect(e.message).toMatch(/onnxruntime cannot load model "tiny_conv3d"/);
  });

  it("on two manifests with the same model name", async () => {
    tinyCopy("one");
    const { manifestPath } = tinyCopy("two");
    const e = await loadFailure();
    expect(e.field).toBe(`${manifestPath}:name`);
    expect(e.message).toMatch(/also defined by .*one\/model\.json/);
  });

  it("on a models folder that does not exist", async () => {
    const e = await ModelRegistry.load(join(dir, "nope"), { logger: silent }).catch((err: unknown) => err);
    expect((e as SpatialSamError)._tag).toBe("NotFound");
  });
});

describe("ModelRegistry.load", () => {
  it("skips folders without model.json", async () => {
    tinyCopy();
    mkdirSync(join(dir, "notes"));
    writeFileSync(join(dir, "README.txt"), "not a model");
    const registry = await ModelRegistry.load(dir, { logger: silent, intraOpThreads: 1 });
    expect(registry.list().map((m) => m.manifest.name)).toEqual(["tiny_conv3d"]);
    await registry.close();
  });

  it("falls back from cuda to cpu when cuda cannot load, and logs it as a structured warning", async () => {
    tinyCopy();
    const lines: Record<string, unknown>[] = [];
    const registry = await ModelRegistry.load(dir, { logger: capture(lines), intraOpThreads: 1, executionProvider: "cuda" });
    try {
      expect(registry.list().map((m) => m.executionProvider)).toEqual(["cpu"]);
      const out = await registry.run("tiny_conv3d", { image: { dtype: "float32", dims: [1, 1, 2, 3, 4], data: new Float32Array(24) } });
      expect(out.out!.dims).toEqual([1, 2, 2, 3, 4]);
    } finally {
      await registry.close();
    }
    const fallback = lines.filter((l) => l.requested === "cuda");
    expect(fallback).toHaveLength(1);
    expect(fallback[0]).toMatchObject({ level: 40, requested: "cuda", using: "cpu" });
    expect(String(fallback[0]!.reason)).toMatch(/cuda/i);
    expect(String(fallback[0]!.msg)).toMatch(/falling back to cpu/);
  });

  it("keeps retrying a replacement worker that cannot load, and serves again once it can", async () => {
    const { onnxPath } = tinyCopy();
    const lines: Record<string, unknown>[] = [];
    const registry = await ModelRegistry.load(dir, { logger: capture(lines), intraOpThreads: 1, allowTestFaults: true });
    try {
      renameSync(onnxPath, `${onnxPath}.moved`);
      registry.armFaultForTest("exit");
      const input = { image: { dtype: "float32" as const, dims: [1, 1, 2, 2, 2], data: new Float32Array(8) } };
      const doomed = registry.run("tiny_conv3d", input).catch((e: SpatialSamError) => e._tag);
      const waiting = registry.run("tiny_conv3d", input);
      expect(await doomed).toBe("Unavailable");
      // The replacement cannot open the file: it is logged, and retried after a delay.
      while (!lines.some((l) => l.msg === "a replacement ONNX worker could not load its models")) await new Promise((r) => setTimeout(r, 20));
      expect(registry.stats().ready).toBe(0);
      renameSync(`${onnxPath}.moved`, onnxPath);
      expect((await waiting).out!.dims).toEqual([1, 2, 2, 2, 2]);
      expect(registry.stats().ready).toBe(1);
      expect(registry.stats().workerDeaths).toBeGreaterThanOrEqual(2);
    } finally {
      await registry.close();
    }
  });
});
