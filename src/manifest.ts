// Parser and validator of a model manifest (models/<name>/model.json): the description that travels
// with every ONNX graph, so the server never hard-codes a tensor name, shape, dtype or normalisation.

import { isDataType, type DataType } from "#src/dtype.ts";
import { invalidArgument, SpatialSamError, withPath } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";

/** One dimension: a fixed size, or dynamic (-1, or a symbol such as "z"; equal symbols must agree). */
export type Dim = number | string;

/** One named input or output of the graph. */
export interface TensorSpec {
  name: string;
  dtype: DataType;
  shape: Dim[];
  /** One letter per dimension, e.g. "NCZYX". */
  axes: string;
}

/** Applied to raw intensities before they enter the graph: (x - mean) / std. */
export interface Normalization {
  mean: number;
  std: number;
}

export interface ModelManifest {
  name: string;
  version: string;
  /** What the graph computes, e.g. "sdf_unet3d", "image_encoder", "memory_decoder", "test". */
  kind: string;
  /** ONNX file, relative to the manifest's folder. */
  onnx: string;
  /** Lowercase hex sha256 of the ONNX file. */
  sha256: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  normalization: Normalization | null;
  /** Extra input voxels each side (zyx) needed for a valid output voxel (the halo). */
  contextZyx: Vec3;
  /** The block shape the model was trained/exported for, if it has one. */
  patchShapeZyx?: Vec3;
  /** Every spatial input size must be a multiple of this (a U-Net's total pooling); default 1. */
  sizeMultipleZyx?: Vec3;
  voxelSizeNm: Vec3;
  /** Free-form provenance (data, budget, seed, command, time, metrics), kept as written. */
  training?: Record<string, unknown>;
}

const KEYS = [
  "name",
  "version",
  "kind",
  "onnx",
  "sha256",
  "inputs",
  "outputs",
  "normalization",
  "context_zyx",
  "patch_shape_zyx",
  "size_multiple_zyx",
  "voxel_size_nm",
  "training",
] as const;

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function requireKey(o: JsonObject, key: string): unknown {
  if (!(key in o) || o[key] === undefined) throw invalidArgument(key, "is required");
  return o[key];
}

function nonEmptyString(v: unknown, what = "a non-empty string"): string {
  if (typeof v !== "string" || v.length === 0) throw new SpatialSamError("InvalidArgument", `expected ${what}, got ${JSON.stringify(v)}`);
  return v;
}

function field<T>(o: JsonObject, key: string, parse: (v: unknown) => T): T {
  const v = requireKey(o, key);
  return withPath(key, () => parse(v));
}

function vec3(v: unknown, ok: (x: number) => boolean, what: string): Vec3 {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && ok(x))) {
    throw new SpatialSamError("InvalidArgument", `expected 3 ${what} (z, y, x), got ${JSON.stringify(v)}`);
  }
  return [v[0], v[1], v[2]];
}

const isNonNegativeInt = (x: number) => Number.isInteger(x) && x >= 0;
const isPositiveInt = (x: number) => Number.isInteger(x) && x > 0;
const isPositiveFinite = (x: number) => Number.isFinite(x) && x > 0;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function parseDim(v: unknown): Dim {
  if (typeof v === "string" && v.length > 0) return v;
  if (typeof v === "number" && (v === -1 || isPositiveInt(v))) return v;
  throw new SpatialSamError("InvalidArgument", `expected a positive integer, -1 or a symbol, got ${JSON.stringify(v)}`);
}

function parseTensorSpec(v: unknown): TensorSpec {
  if (!isObject(v)) throw new SpatialSamError("InvalidArgument", "expected an object {name, dtype, shape, axes}");
  const name = field(v, "name", (x) => nonEmptyString(x));
  const dtype = field(v, "dtype", (x) => {
    if (!isDataType(x)) throw new SpatialSamError("InvalidArgument", `unknown data type ${JSON.stringify(x)}`);
    return x;
  });
  const shape = field(v, "shape", (x) => {
    if (!Array.isArray(x)) throw new SpatialSamError("InvalidArgument", "expected an array of dimensions");
    return x.map((d, i) => withPath(`[${i}]`, () => parseDim(d)));
  });
  const axes = field(v, "axes", (x) => {
    const s = nonEmptyString(x, "axis letters such as NCZYX");
    if (!/^[A-Z]+$/.test(s) || new Set(s).size !== s.length) {
      throw new SpatialSamError("InvalidArgument", `expected distinct uppercase axis letters, got ${JSON.stringify(s)}`);
    }
    if (s.length !== shape.length) {
      throw new SpatialSamError("InvalidArgument", `has ${s.length} letters but shape has ${shape.length} dimensions`);
    }
    return s;
  });
  return { name, dtype, shape, axes };
}

function parseTensorSpecs(v: unknown): TensorSpec[] {
  if (!Array.isArray(v) || v.length === 0) throw new SpatialSamError("InvalidArgument", "expected a non-empty array");
  const specs = v.map((s, i) => withPath(`[${i}]`, () => parseTensorSpec(s)));
  const seen = new Set<string>();
  specs.forEach((s, i) => {
    if (seen.has(s.name)) throw invalidArgument(`[${i}].name`, `duplicate name ${JSON.stringify(s.name)}`);
    seen.add(s.name);
  });
  return specs;
}

function parseNormalization(v: unknown): Normalization | null {
  if (v === null) return null;
  if (!isObject(v)) throw new SpatialSamError("InvalidArgument", "expected {mean, std} or null");
  const mean = field(v, "mean", (x) => {
    if (typeof x !== "number" || !Number.isFinite(x)) throw new SpatialSamError("InvalidArgument", "expected a finite number");
    return x;
  });
  const std = field(v, "std", (x) => {
    if (typeof x !== "number" || !isPositiveFinite(x)) throw new SpatialSamError("InvalidArgument", "expected a positive number");
    return x;
  });
  return { mean, std };
}

function parseOnnxPath(v: unknown): string {
  const s = nonEmptyString(v, "the ONNX file name");
  // The file must lie in the manifest's folder tree: a manifest may not point the server elsewhere.
  if (s.startsWith("/") || s.includes("\\") || /^[A-Za-z]:/.test(s) || s.split("/").some((p) => p === ".." || p === "")) {
    throw new SpatialSamError("InvalidArgument", `must be a relative path inside the model folder, got ${JSON.stringify(s)}`);
  }
  return s;
}

/**
 * Validates a parsed model.json. Errors are InvalidArgument with a path-like field
 * (`inputs[1].dtype`); unknown keys are rejected so that a misspelt optional key is not ignored.
 */
export function parseManifest(json: unknown): ModelManifest {
  if (!isObject(json)) throw new SpatialSamError("InvalidArgument", "a model manifest must be a JSON object");
  for (const key of Object.keys(json)) {
    if (!(KEYS as readonly string[]).includes(key)) throw invalidArgument(key, `unknown manifest key (known: ${KEYS.join(", ")})`);
  }
  const manifest: ModelManifest = {
    name: field(json, "name", (x) => {
      const s = nonEmptyString(x);
      if (!NAME.test(s)) throw new SpatialSamError("InvalidArgument", `expected letters, digits, '_', '.', '-', got ${JSON.stringify(s)}`);
      return s;
    }),
    version: field(json, "version", (x) => nonEmptyString(x)),
    kind: field(json, "kind", (x) => nonEmptyString(x)),
    onnx: field(json, "onnx", parseOnnxPath),
    sha256: field(json, "sha256", (x) => {
      if (typeof x !== "string" || !/^[0-9a-fA-F]{64}$/.test(x)) {
        throw new SpatialSamError("InvalidArgument", `expected 64 hex digits, got ${JSON.stringify(x)}`);
      }
      return x.toLowerCase();
    }),
    inputs: field(json, "inputs", parseTensorSpecs),
    outputs: field(json, "outputs", parseTensorSpecs),
    normalization: field(json, "normalization", parseNormalization),
    contextZyx: field(json, "context_zyx", (x) => vec3(x, isNonNegativeInt, "non-negative integers")),
    voxelSizeNm: field(json, "voxel_size_nm", (x) => vec3(x, isPositiveFinite, "positive numbers")),
  };
  if (json.patch_shape_zyx !== undefined) {
    manifest.patchShapeZyx = field(json, "patch_shape_zyx", (x) => vec3(x, isPositiveInt, "positive integers"));
  }
  if (json.size_multiple_zyx !== undefined) {
    manifest.sizeMultipleZyx = field(json, "size_multiple_zyx", (x) => vec3(x, isPositiveInt, "positive integers"));
  }
  if (json.training !== undefined) {
    manifest.training = field(json, "training", (x) => {
      if (!isObject(x)) throw new SpatialSamError("InvalidArgument", "expected an object");
      return x;
    });
  }
  return manifest;
}

/** The shape with every dynamic dimension as -1 (the wire's TensorSpec convention). */
export function numericShape(shape: readonly Dim[]): number[] {
  return shape.map((d) => (typeof d === "number" ? d : -1));
}
