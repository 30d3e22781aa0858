import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { numericShape, parseManifest } from "#src/manifest.ts";
import { SpatialSamError } from "#src/errors.ts";

const fixture = (name: string): Record<string, unknown> =>
  JSON.parse(readFileSync(new URL(`../fixtures/models/${name}/model.json`, import.meta.url), "utf8"));

function good(): Record<string, unknown> {
  return {
    name: "sdf_unet3d",
    version: "0.3.1",
    kind: "sdf_unet3d",
    onnx: "weights/model.onnx",
    sha256: "AB".repeat(32),
    inputs: [{ name: "image", dtype: "float32", shape: [-1, 1, "z", 64, 64], axes: "NCZYX" }],
    outputs: [
      { name: "sdf", dtype: "float32", shape: [-1, 1, "z", 64, 64], axes: "NCZYX" },
      { name: "labels", dtype: "uint64", shape: [-1, "z", 64, 64], axes: "NZYX" },
    ],
    normalization: { mean: 127.5, std: 40.25 },
    context_zyx: [8, 16, 16],
    patch_shape_zyx: [32, 64, 64],
    voxel_size_nm: [5, 5.5, 5.5],
    training: { data: "lucchi++ train", seed: 3, metrics: { dice: 0.91 }, command: "python -m spatialsam.train_unet" },
  };
}

/** The InvalidArgument field that parsing `json` fails with. */
function failure(json: unknown): string | undefined {
  try {
    parseManifest(json);
  } catch (e) {
    expect(e).toBeInstanceOf(SpatialSamError);
    expect((e as SpatialSamError)._tag).toBe("InvalidArgument");
    return (e as SpatialSamError).field ?? "(root)";
  }
  throw new Error("expected parseManifest to fail");
}

// Untyped on purpose: the cases build manifests that no type would allow.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const mutate = (f: (m: Record<string, any>) => void) => {
  const m = good();
  f(m);
  return m;
};

describe("parseManifest", () => {
  it("parses a full manifest into camelCase fields, keeping training as written", () => {
    const m = parseManifest(good());
    expect(m).toEqual({
      name: "sdf_unet3d",
      version: "0.3.1",
      kind: "sdf_unet3d",
      onnx: "weights/model.onnx",
      sha256: "ab".repeat(32),
      inputs: [{ name: "image", dtype: "float32", shape: [-1, 1, "z", 64, 64], axes: "NCZYX" }],
      outputs: [
        { name: "sdf", dtype: "float32", shape: [-1, 1, "z", 64, 64], axes: "NCZYX" },
        { name: "labels", dtype: "uint64", shape: [-1, "z", 64, 64], axes: "NZYX" },
      ],
      normalization: { mean: 127.5, std: 40.25 },
      contextZyx: [8, 16, 16],
      patchShapeZyx: [32, 64, 64],
      voxelSizeNm: [5, 5.5, 5.5],
      training: good().training,
    });
    expect(numericShape(m.inputs[0]!.shape)).toEqual([-1, 1, -1, 64, 64]);
  });

  it("accepts null normalization and omitted optional keys", () => {
    const m = parseManifest(
      mutate((j) => {
        j.normalization = null;
        delete j.patch_shape_zyx;
        delete j.training;
      }),
    );
    expect(m.normalization).toBeNull();
    expect("patchShapeZyx" in m).toBe(false);
    expect("training" in m).toBe(false);
  });

  it("parses the checked-in fixture manifests", () => {
    for (const name of ["tiny_conv3d", "slow_conv3d"]) {
      const m = parseManifest(fixture(name));
      expect(m.name).toBe(name);
      expect(m.inputs.map((s) => s.name)).toEqual(["image"]);
      expect(m.outputs.map((s) => s.name)).toEqual(["out"]);
    }
  });

  it.each<[string, unknown, string]>([
    ["not an object", [1, 2], "(root)"],
    ["null", null, "(root)"],
    ["missing name", mutate((j) => delete j.name), "name"],
    ["name with a slash", mutate((j) => (j.name = "a/b")), "name"],
    ["empty version", mutate((j) => (j.version = "")), "version"],
    ["kind not a string", mutate((j) => (j.kind = 3)), "kind"],
    ["absolute onnx path", mutate((j) => (j.onnx = "/etc/passwd")), "onnx"],
    ["onnx path leaving the folder", mutate((j) => (j.onnx = "../other/model.onnx")), "onnx"],
    ["short sha256", mutate((j) => (j.sha256 = "abc")), "sha256"],
    ["unknown key", mutate((j) => (j.patch_shape = [1, 2, 3])), "patch_shape"],
    ["inputs empty", mutate((j) => (j.inputs = [])), "inputs"],
    ["inputs not an array", mutate((j) => (j.inputs = {})), "inputs"],
    ["input not an object", mutate((j) => (j.inputs = ["image"])), "inputs[0]"],
    ["bad dtype", mutate((j) => (j.outputs[1].dtype = "bool")), "outputs[1].dtype"],
    ["missing dtype", mutate((j) => delete j.inputs[0].dtype), "inputs[0].dtype"],
    ["zero dimension", mutate((j) => (j.inputs[0].shape[3] = 0)), "inputs[0].shape[3]"],
    ["fractional dimension", mutate((j) => (j.inputs[0].shape[1] = 1.5)), "inputs[0].shape[1]"],
    ["axes length differs from shape", mutate((j) => (j.outputs[1].axes = "NCZYX")), "outputs[1].axes"],
    ["repeated axis letter", mutate((j) => (j.inputs[0].axes = "NCZYY")), "inputs[0].axes"],
    ["duplicate output name", mutate((j) => (j.outputs[1].name = "sdf")), "outputs[1].name"],
    ["normalization missing", mutate((j) => delete j.normalization), "normalization"],
    ["zero std", mutate((j) => (j.normalization.std = 0)), "normalization.std"],
    ["negative context", mutate((j) => (j.context_zyx = [1, -1, 1])), "context_zyx"],
    ["two-element voxel size", mutate((j) => (j.voxel_size_nm = [5, 5])), "voxel_size_nm"],
    ["zero voxel size", mutate((j) => (j.voxel_size_nm = [5, 0, 5])), "voxel_size_nm"],
    ["patch shape not integers", mutate((j) => (j.patch_shape_zyx = [32, 64.5, 64])), "patch_shape_zyx"],
    ["training not an object", mutate((j) => (j.training = "lots")), "training"],
  ])("rejects %s, naming the field", (_what, json, field) => {
    expect(failure(json)).toBe(field);
  });

  it("says what was wrong in the message", () => {
    expect(() => parseManifest(mutate((j) => (j.inputs[0].dtype = "float16")))).toThrow(
      'inputs[0].dtype: unknown data type "float16"',
    );
  });
});

describe("size_multiple_zyx", () => {
  const base = JSON.parse(readFileSync(join(import.meta.dirname, "..", "..", "models", "sdf_unet3d_lucchi", "model.json"), "utf8")) as Record<string, unknown>;

  it("is read from the shipped U-Net manifest (its stem times its pooling factors)", () => {
    expect(parseManifest(base).sizeMultipleZyx).toEqual([16, 16, 16]);
  });

  it("must be three positive integers, named in the error", () => {
    expect(() => parseManifest({ ...base, size_multiple_zyx: [8, 0, 8] })).toThrow(/size_multiple_zyx/);
  });
});
