// Parser, validator and serializer for Neuroglancer precomputed `info` files (multiscale volumes),
// plus the xyz -> zyx mapping to VolumeMetadata and the chunk naming rules of the format.
//
// Precomputed states every vector as [x, y, z]; this module keeps the xyz names (`sizeXyz`, ...) for
// the parsed form and converts to zyx only in `toVolumeMetadata`, so the swap happens in one place.

import { isDataType } from "#src/dtype.ts";
import type { DataType } from "#src/dtype.ts";
import { SpatialSamError, invalidArgument, withPath } from "#src/errors.ts";
import type { Vec3, VolumeMetadata } from "#src/volume/types.ts";

export type PrecomputedEncoding = "raw" | "jpeg" | "compressed_segmentation";
export type ShardingHash = "identity" | "murmurhash3_x86_128";
export type ShardingEncoding = "raw" | "gzip";

/** neuroglancer_uint64_sharded_v1 (see neuroglancer's datasource/precomputed/sharded.md). */
export interface ShardingSpec {
  preshiftBits: number;
  hash: ShardingHash;
  minishardBits: number;
  shardBits: number;
  minishardIndexEncoding: ShardingEncoding;
  dataEncoding: ShardingEncoding;
}

export interface PrecomputedScale {
  key: string;
  sizeXyz: Vec3;
  resolutionXyz: Vec3;
  voxelOffsetXyz: Vec3;
  /** The first of `chunk_sizes`; the one this project reads and writes. */
  chunkSizeXyz: Vec3;
  encoding: PrecomputedEncoding;
  /** Present iff encoding is compressed_segmentation. */
  blockSizeXyz?: Vec3;
  sharding?: ShardingSpec;
}

export interface PrecomputedInfo {
  type: "image" | "segmentation";
  dataType: DataType;
  numChannels: 1;
  scales: PrecomputedScale[];
}

export interface ParseInfoOptions {
  /**
   * Largest accepted voxel count per scale (exclusive). A guard against absurd or hostile sizes
   * that would make grid arithmetic lose precision or callers allocate without bound; default 2^40.
   */
  maxVoxels?: number;
}

/** Precomputed data types (neuroglancer's list plus the signed ints tensorstore also writes). */
const PRECOMPUTED_DATA_TYPES: ReadonlySet<DataType> = new Set<DataType>(["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]);
const ENCODINGS: ReadonlySet<string> = new Set<PrecomputedEncoding>(["raw", "jpeg", "compressed_segmentation"]);
const DEFAULT_MAX_VOXELS = 2 ** 40;
// A single decoded chunk must be allocatable.
const MAX_CHUNK_VOXELS = 2 ** 28;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function vec3(v: unknown, field: string, check: (n: number) => boolean, what: string): Vec3 {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((n) => typeof n === "number" && check(n))) {
    throw invalidArgument(field, `expected an [x, y, z] array of ${what}, got ${JSON.stringify(v)}`);
  }
  return [v[0], v[1], v[2]];
}

const positiveInt = (n: number) => Number.isSafeInteger(n) && n > 0;

function oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[], fallback?: T): T {
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v === "string" && (allowed as readonly string[]).includes(v)) return v as T;
  throw invalidArgument(field, `expected one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${JSON.stringify(v)}`);
}

function bitCount(v: unknown, field: string, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max) {
    throw invalidArgument(field, `expected an integer in [0, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

export function parseShardingSpec(v: unknown): ShardingSpec {
  if (!isObject(v)) throw invalidArgument("sharding", "expected an object");
  return withPath("sharding", () => {
    if (v["@type"] !== "neuroglancer_uint64_sharded_v1") {
      throw invalidArgument("@type", `expected "neuroglancer_uint64_sharded_v1", got ${JSON.stringify(v["@type"])}`);
    }
    const spec: ShardingSpec = {
      preshiftBits: bitCount(v.preshift_bits, "preshift_bits", 64),
      hash: oneOf(v.hash, "hash", ["identity", "murmurhash3_x86_128"] as const),
      minishardBits: bitCount(v.minishard_bits, "minishard_bits", 32),
      shardBits: bitCount(v.shard_bits, "shard_bits", 64),
      minishardIndexEncoding: oneOf(v.minishard_index_encoding, "minishard_index_encoding", ["raw", "gzip"] as const, "raw"),
      dataEncoding: oneOf(v.data_encoding, "data_encoding", ["raw", "gzip"] as const, "raw"),
    };
    if (spec.minishardBits + spec.shardBits > 64) {
      throw invalidArgument("shard_bits", `minishard_bits + shard_bits must be at most 64, got ${spec.minishardBits + spec.shardBits}`);
    }
    return spec;
  });
}

/** Rejects keys that are absolute or climb out of the volume's folder. */
function scaleKey(v: unknown): string {
  if (typeof v !== "string" || v.length === 0 || v.startsWith("/") || v.includes("\\") || v.includes("://")) {
    throw invalidArgument("key", `expected a relative path, got ${JSON.stringify(v)}`);
  }
  let depth = 0;
  for (const part of v.split("/")) {
    if (part === "..") depth--;
    else if (part !== "." && part !== "") depth++;
    // The spec lets `..` reach the info file's parent; stores are rooted at the volume, so we don't.
    if (depth < 0) throw invalidArgument("key", `leaves the volume's folder: ${JSON.stringify(v)}`);
  }
  return v;
}

function parseScale(v: Record<string, unknown>, dataType: DataType, maxVoxels: number): PrecomputedScale {
  const key = scaleKey(v.key);
  const sizeXyz = vec3(v.size, "size", (n) => Number.isSafeInteger(n) && n >= 0, "non-negative integers");
  const voxels = sizeXyz[0] * sizeXyz[1] * sizeXyz[2];
  if (voxels >= maxVoxels) {
    throw invalidArgument("size", `${sizeXyz.join("x")} is ${voxels} voxels; at most ${maxVoxels - 1} are supported`);
  }
  const resolutionXyz = vec3(v.resolution, "resolution", (n) => Number.isFinite(n) && n > 0, "positive numbers (nm)");
  const voxelOffsetXyz =
    v.voxel_offset === undefined ? ([0, 0, 0] as Vec3) : vec3(v.voxel_offset, "voxel_offset", Number.isSafeInteger, "integers");
  if (!Array.isArray(v.chunk_sizes) || v.chunk_sizes.length === 0) {
    throw invalidArgument("chunk_sizes", `expected a non-empty array of [x, y, z] sizes, got ${JSON.stringify(v.chunk_sizes)}`);
  }
  const chunkSizes = v.chunk_sizes.map((c, i) => vec3(c, `chunk_sizes[${i}]`, positiveInt, "positive integers"));
  const chunkSizeXyz = chunkSizes[0]!;
  if (chunkSizeXyz[0] * chunkSizeXyz[1] * chunkSizeXyz[2] > MAX_CHUNK_VOXELS) {
    throw invalidArgument("chunk_sizes[0]", `${chunkSizeXyz.join("x")} exceeds ${MAX_CHUNK_VOXELS} voxels per chunk`);
  }
  const encodingName = typeof v.encoding === "string" ? v.encoding.toLowerCase() : v.encoding;
  if (typeof encodingName !== "string" || !ENCODINGS.has(encodingName)) {
    throw invalidArgument("encoding", `expected "raw", "jpeg" or "compressed_segmentation", got ${JSON.stringify(v.encoding)}`);
  }
  const encoding = encodingName as PrecomputedEncoding;
  const scale: PrecomputedScale = { key, sizeXyz, resolutionXyz, voxelOffsetXyz, chunkSizeXyz, encoding };
  if (encoding === "compressed_segmentation") {
    if (dataType !== "uint32" && dataType !== "uint64") {
      throw invalidArgument("encoding", `compressed_segmentation needs data_type uint32 or uint64, not ${dataType}`);
    }
    scale.blockSizeXyz = vec3(v.compressed_segmentation_block_size, "compressed_segmentation_block_size", positiveInt, "positive integers");
  } else if (v.compressed_segmentation_block_size !== undefined) {
    throw invalidArgument("compressed_segmentation_block_size", `only allowed with encoding compressed_segmentation, not ${encoding}`);
  }
  if (encoding === "jpeg" && dataType !== "uint8") {
    throw invalidArgument("encoding", `jpeg needs data_type uint8, not ${dataType}`);
  }
  if (v.sharding !== undefined && v.sharding !== null) {
    if (chunkSizes.length !== 1) throw invalidArgument("chunk_sizes", "a sharded scale must list exactly one chunk size");
    scale.sharding = parseShardingSpec(v.sharding);
  }
  return scale;
}

/** Validates a parsed info JSON value. Errors name the offending member, e.g. `scales[0].size`. */
export function parsePrecomputedInfo(json: unknown, options: ParseInfoOptions = {}): PrecomputedInfo {
  const maxVoxels = options.maxVoxels ?? DEFAULT_MAX_VOXELS;
  if (!isObject(json)) throw invalidArgument("info", "expected a JSON object");
  if (json["@type"] !== undefined && json["@type"] !== "neuroglancer_multiscale_volume") {
    throw invalidArgument("@type", `expected "neuroglancer_multiscale_volume", got ${JSON.stringify(json["@type"])}`);
  }
  const type = oneOf(json.type, "type", ["image", "segmentation"] as const);
  const dt = typeof json.data_type === "string" ? json.data_type.toLowerCase() : json.data_type;
  if (!isDataType(dt) || !PRECOMPUTED_DATA_TYPES.has(dt)) {
    throw invalidArgument("data_type", `expected one of ${[...PRECOMPUTED_DATA_TYPES].join(", ")}, got ${JSON.stringify(json.data_type)}`);
  }
  if (json.num_channels !== 1) {
    throw invalidArgument("num_channels", `only single-channel volumes are supported, got ${JSON.stringify(json.num_channels)}`);
  }
  if (!Array.isArray(json.scales) || json.scales.length === 0) {
    throw invalidArgument("scales", "expected a non-empty array");
  }
  const scales = json.scales.map((s: unknown, i) => {
    if (!isObject(s)) throw invalidArgument(`scales[${i}]`, "expected an object");
    return withPath(`scales[${i}]`, () => parseScale(s, dt, maxVoxels));
  });
  return { type, dataType: dt, numChannels: 1, scales };
}

/**
 * Parses the text of an info file. Invalid JSON is an InvalidArgument naming `file`; validation
 * errors name `<file>: <member>` (e.g. `file:///d/vol/info: scales[0].size`), as other drivers do.
 */
export function parsePrecomputedInfoText(text: string, file: string, options: ParseInfoOptions = {}): PrecomputedInfo {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw invalidArgument(file, `is not valid JSON (${e instanceof Error ? e.message : String(e)})`, e);
  }
  try {
    return parsePrecomputedInfo(json, options);
  } catch (e) {
    if (e instanceof SpatialSamError && e._tag === "InvalidArgument" && e.field !== undefined) {
      throw invalidArgument(`${file}: ${e.field}`, e.message.slice(e.field.length + 2), e.cause);
    }
    throw e;
  }
}

/** The info JSON value for `info` (what `parsePrecomputedInfo` accepts back). */
export function precomputedInfoToJson(info: PrecomputedInfo): Record<string, unknown> {
  return {
    "@type": "neuroglancer_multiscale_volume",
    type: info.type,
    data_type: info.dataType,
    num_channels: info.numChannels,
    scales: info.scales.map((s) => ({
      key: s.key,
      size: s.sizeXyz,
      resolution: s.resolutionXyz,
      voxel_offset: s.voxelOffsetXyz,
      chunk_sizes: [s.chunkSizeXyz],
      encoding: s.encoding,
      ...(s.blockSizeXyz ? { compressed_segmentation_block_size: s.blockSizeXyz } : {}),
      ...(s.sharding
        ? {
            sharding: {
              "@type": "neuroglancer_uint64_sharded_v1",
              preshift_bits: s.sharding.preshiftBits,
              hash: s.sharding.hash,
              minishard_bits: s.sharding.minishardBits,
              shard_bits: s.sharding.shardBits,
              minishard_index_encoding: s.sharding.minishardIndexEncoding,
              data_encoding: s.sharding.dataEncoding,
            },
          }
        : {}),
    })),
  };
}

const zyx = (v: Vec3): Vec3 => [v[2], v[1], v[0]];

export function toVolumeMetadata(info: PrecomputedInfo): VolumeMetadata {
  return {
    format: "precomputed",
    dtype: info.dataType,
    kind: info.type,
    fillValue: info.dataType === "uint64" ? 0n : 0,
    scales: info.scales.map((s, index) => ({
      index,
      key: s.key,
      shapeZyx: zyx(s.sizeXyz),
      voxelSizeNm: zyx(s.resolutionXyz),
      chunkShapeZyx: zyx(s.chunkSizeXyz),
      offsetZyx: zyx(s.voxelOffsetXyz),
    })),
  };
}

/** Number of chunks along x, y, z. */
export function gridShapeXyz(scale: PrecomputedScale): Vec3 {
  return [0, 1, 2].map((d) => Math.ceil(scale.sizeXyz[d]! / scale.chunkSizeXyz[d]!)) as Vec3;
}

/**
 * The voxel box of grid cell `gridXyz` in volume coordinates (voxel_offset included), truncated at
 * the volume's upper bound. Throws InvalidArgument for a cell outside the grid.
 */
export function chunkBoundsXyz(scale: PrecomputedScale, gridXyz: Vec3): { beginXyz: Vec3; endXyz: Vec3 } {
  const grid = gridShapeXyz(scale);
  for (let d = 0; d < 3; d++) {
    const g = gridXyz[d]!;
    if (!Number.isInteger(g) || g < 0 || g >= grid[d]!) {
      throw invalidArgument("chunkIndex", `${gridXyz.join(",")} (xyz) is outside the ${grid.join("x")} chunk grid`);
    }
  }
  const beginXyz = [0, 1, 2].map((d) => scale.voxelOffsetXyz[d]! + gridXyz[d]! * scale.chunkSizeXyz[d]!) as Vec3;
  const endXyz = [0, 1, 2].map(
    (d) => scale.voxelOffsetXyz[d]! + Math.min((gridXyz[d]! + 1) * scale.chunkSizeXyz[d]!, scale.sizeXyz[d]!),
  ) as Vec3;
  return { beginXyz, endXyz };
}

/** The unsharded chunk file name `x0-x1_y0-y1_z0-z1` (relative to the scale's key). */
export function chunkName(scale: PrecomputedScale, gridXyz: Vec3): string {
  const { beginXyz: b, endXyz: e } = chunkBoundsXyz(scale, gridXyz);
  return `${b[0]}-${e[0]}_${b[1]}-${e[1]}_${b[2]}-${e[2]}`;
}
