// The contract every volume format implements. Format drivers decode single chunks; one shared
// assembler (server/volume) turns chunk reads into box reads through a byte-bounded, coalescing
// chunk cache, so caching and bounds checks are written once for all formats.
//
// Axis order is zyx (C order) everywhere here; voxel sizes are nanometres.

import type { DataType, TypedArray } from "#src/dtype.ts";

export type Vec3 = [number, number, number];

/** A half-open voxel box [offsetZyx, offsetZyx + shapeZyx) at one scale. */
export interface Box3 {
  offsetZyx: Vec3;
  shapeZyx: Vec3;
}

/** One level of a (possibly single-level) multiscale pyramid. */
export interface ScaleLevel {
  index: number;
  /** Storage key or path of this level inside the volume (e.g. "s0", "4_4_40"). */
  key: string;
  shapeZyx: Vec3;
  voxelSizeNm: Vec3;
  chunkShapeZyx: Vec3;
  /** Voxel coordinate of the first stored voxel, in voxels of this level (precomputed voxel_offset). */
  offsetZyx: Vec3;
}

export interface VolumeMetadata {
  /** e.g. "zarr-v2", "zarr-v3", "n5", "precomputed", "tiff", "png-stack", "hdf5". */
  format: string;
  dtype: DataType;
  scales: ScaleLevel[];
  /** Value of voxels in chunks that are not stored. */
  fillValue: number | bigint;
  /** Precomputed "image" vs "segmentation", OME-NGFF labels, etc.; "image" when unknown. */
  kind: "image" | "segmentation";
}

/** A decoded chunk. `shapeZyx` may be smaller than the grid's chunk shape at volume edges. */
export interface DecodedChunk {
  data: TypedArray;
  shapeZyx: Vec3;
}

export interface ReadOptions {
  signal?: AbortSignal;
}

/** What a format driver implements: metadata plus single-chunk decoding. */
export interface ChunkSource {
  readonly metadata: VolumeMetadata;
  /** Stable identity for cache keys (e.g. the resolved URL). */
  readonly cacheKey: string;
  /**
   * Decodes chunk `chunkIndexZyx` (grid coordinates, chunk (0,0,0) starts at the level's
   * offsetZyx) of level `scale`. Resolves undefined when the chunk is not stored (fill value).
   */
  readChunk(scale: number, chunkIndexZyx: Vec3, options?: ReadOptions): Promise<DecodedChunk | undefined>;
  close?(): Promise<void>;
}

/** What the rest of the project reads volumes through. */
export interface VolumeSource {
  readonly metadata: VolumeMetadata;
  /** Reads a box (coordinates include the level's offsetZyx) as a dense C-order array. */
  read(box: Box3, scale: number, options?: ReadOptions): Promise<TypedArray>;
  close(): Promise<void>;
}

export interface StoreGetOptions extends ReadOptions {
  range?: [number, number];
  suffixLength?: number;
}

/** Byte storage under a root (file system, HTTP, S3). Absence is a value, not an error. */
export interface Store {
  readonly url: string;
  /**
   * Resolves undefined when the key does not exist. `range` is [start, end) in bytes (clipped to
   * the object's size); `suffixLength` asks for the last N bytes (sharded formats read their index
   * this way). Give at most one of them.
   */
  get(key: string, options?: StoreGetOptions): Promise<Uint8Array | undefined>;
  /** Keys directly under a prefix (for folder-of-slices formats); optional for stores that cannot list. */
  list?(prefix: string, options?: ReadOptions): Promise<string[]>;
  /** Atomic write (temp file then rename); only for writable stores. */
  put?(key: string, bytes: Uint8Array): Promise<void>;
}
