// How the bridge re-exposes any VolumeSource as a Neuroglancer precomputed volume: the info it
// announces (one precomputed scale per level, chunking taken from the source), the chunk names it
// accepts (validated against that info) and the bytes it serves for them (read, then encoded).

import { DATA_TYPES } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import type { PrecomputedInfo, PrecomputedScale } from "#src/volume/precomputed_info.ts";
import type { Box3, ReadOptions, Vec3, VolumeMetadata, VolumeSource } from "#src/volume/types.ts";
import { encodePrecomputedChunk } from "#server/volume/precomputed.ts";

/** Source chunks larger than this (e.g. a TIFF stored as one strip per slice) are re-chunked. */
const MAX_CHUNK_VOXELS = 2 ** 21;
const FALLBACK_CHUNK_ZYX: Vec3 = [64, 64, 64];
const SEGMENTATION_BLOCK_XYZ: Vec3 = [8, 8, 8];
const SEGMENTATION_TYPES: ReadonlySet<DataType> = new Set<DataType>(["uint8", "uint16", "uint32", "uint64"]);
/** What the bridge serves each source dtype as; int64 has no precomputed counterpart. */
const SERVED_DTYPE: Record<DataType, DataType | undefined> = {
  uint8: "uint8",
  uint16: "uint16",
  uint32: "uint32",
  uint64: "uint64",
  int8: "int8",
  int16: "int16",
  int32: "int32",
  int64: undefined,
  float32: "float32",
  // Neuroglancer has no float64: images are served as float32.
  float64: "float32",
};

/** A scale key usable as one URL path segment, else `s<index>`. */
function exposedKey(key: string, index: number, taken: Set<string>): string {
  const ok = /^[A-Za-z0-9_.-]+$/.test(key) && key !== "." && key !== ".." && key !== "info" && key !== "mesh" && !taken.has(key);
  const out = ok ? key : `s${index}`;
  taken.add(out);
  return out;
}

const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];

/** The precomputed info the bridge announces for `m`; InvalidArgument naming `url` if it cannot be served. */
export function exposedInfo(m: VolumeMetadata): PrecomputedInfo {
  const dataType = SERVED_DTYPE[m.dtype];
  if (dataType === undefined) throw invalidArgument("url", `${m.dtype} volumes cannot be served as Neuroglancer precomputed`);
  const type = m.kind === "segmentation" && SEGMENTATION_TYPES.has(dataType) ? "segmentation" : "image";
  const compressed = type === "segmentation" && (dataType === "uint32" || dataType === "uint64");
  const taken = new Set<string>();
  const scales = m.scales.map((s): PrecomputedScale => {
    const source = s.chunkShapeZyx;
    const chunkZyx =
      source[0] * source[1] * source[2] <= MAX_CHUNK_VOXELS
        ? source
        : (FALLBACK_CHUNK_ZYX.map((c, d) => Math.max(1, Math.min(c, s.shapeZyx[d]!))) as Vec3);
    return {
      key: exposedKey(s.key, s.index, taken),
      sizeXyz: xyz(s.shapeZyx),
      resolutionXyz: xyz(s.voxelSizeNm),
      voxelOffsetXyz: xyz(s.offsetZyx),
      chunkSizeXyz: xyz(chunkZyx),
      encoding: compressed ? "compressed_segmentation" : "raw",
      ...(compressed ? { blockSizeXyz: SEGMENTATION_BLOCK_XYZ } : {}),
    };
  });
  return { type, dataType, numChannels: 1, scales };
}

const AXES = ["x", "y", "z"] as const;

/**
 * Parses a chunk file name `x0-x1_y0-y1_z0-z1` of `scale` into the voxel box it names, checking
 * that it is one cell of the scale's chunk grid. InvalidArgument names `chunk` (malformed) or
 * `chunk.x` / `chunk.y` / `chunk.z` (the axis that is out of bounds or misaligned).
 */
export function parseChunkName(name: string, scale: PrecomputedScale): Box3 {
  const m = /^(-?\d{1,15})-(-?\d{1,15})_(-?\d{1,15})-(-?\d{1,15})_(-?\d{1,15})-(-?\d{1,15})$/.exec(name);
  if (m === null) throw invalidArgument("chunk", `expected x0-x1_y0-y1_z0-z1 (integers), got ${JSON.stringify(name.slice(0, 100))}`);
  const beginXyz = [0, 1, 2].map((d) => Number(m[1 + 2 * d])) as Vec3;
  const endXyz = [0, 1, 2].map((d) => Number(m[2 + 2 * d])) as Vec3;
  for (let d = 0; d < 3; d++) {
    const field = `chunk.${AXES[d]}`;
    const offset = scale.voxelOffsetXyz[d]!;
    const size = scale.sizeXyz[d]!;
    const chunk = scale.chunkSizeXyz[d]!;
    const b = beginXyz[d]!;
    const e = endXyz[d]!;
    if (b < offset || b >= offset + size) {
      throw invalidArgument(field, `begin ${b} is outside the scale's [${offset}, ${offset + size})`);
    }
    if ((b - offset) % chunk !== 0) {
      throw invalidArgument(field, `begin ${b} is not on the chunk grid (offset ${offset}, chunk size ${chunk})`);
    }
    const want = Math.min(b + chunk, offset + size);
    if (e !== want) throw invalidArgument(field, `end ${e} does not match the chunk starting at ${b} (expected ${want})`);
  }
  return { offsetZyx: xyz(beginXyz), shapeZyx: [endXyz[2] - beginXyz[2], endXyz[1] - beginXyz[1], endXyz[0] - beginXyz[0]] };
}

/** Reads `box` of level `scaleIndex` and encodes it as the bytes of that precomputed chunk. */
export async function readEncodedChunk(
  volume: VolumeSource,
  info: PrecomputedInfo,
  scaleIndex: number,
  box: Box3,
  options: ReadOptions = {},
): Promise<Uint8Array> {
  let data: TypedArray = await volume.read(box, scaleIndex, options);
  if (!(data instanceof DATA_TYPES[info.dataType].array)) data = Float32Array.from(data as Float64Array);
  return encodePrecomputedChunk(data, info, info.scales[scaleIndex]!, box.shapeZyx);
}
