// The `precomputed://` driver: Neuroglancer precomputed volumes (raw, jpeg, compressed_segmentation
// chunks; unsharded or neuroglancer_uint64_sharded_v1), decoded chunk by chunk into C-order zyx.
// Precomputed stores x fastest, so a chunk's bytes already are a C-order [z][y][x] array.

import jpeg from "jpeg-js";
import { decodeCompressedSegmentation, encodeCompressedSegmentation } from "#src/codecs/compressed_segmentation.ts";
import { compressedMortonCode } from "#src/codecs/sharding.ts";
import { asBytes, DATA_TYPES, viewBytes } from "#src/dtype.ts";
import type { TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, notFound, throwIfAborted, unimplemented } from "#src/errors.ts";
import { chunkBoundsXyz, chunkName, gridShapeXyz, parsePrecomputedInfoText, toVolumeMetadata } from "#src/volume/precomputed_info.ts";
import type { PrecomputedInfo, PrecomputedScale } from "#src/volume/precomputed_info.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, Store, Vec3, VolumeMetadata } from "#src/volume/types.ts";
import { registerFormat } from "./format_registry.ts";
import { ShardedChunkReader } from "./precomputed_sharded.ts";

export const INFO_KEY = "info";

/** Reads and validates `<store>/info`; NotFound when there is none. */
export async function readPrecomputedInfo(store: Store, options: ReadOptions = {}): Promise<PrecomputedInfo> {
  const bytes = await store.get(INFO_KEY, options);
  const file = `${store.url.replace(/\/+$/, "")}/${INFO_KEY}`;
  if (bytes === undefined) throw notFound(file, "no precomputed info file");
  return parsePrecomputedInfoText(new TextDecoder().decode(bytes), file);
}

/** The store key of a scale's folder: `key` with `.` and empty segments removed. */
export function scaleDir(scale: PrecomputedScale): string {
  const out: string[] = [];
  for (const part of scale.key.split("/")) {
    if (part === "..") out.pop();
    else if (part !== "." && part !== "") out.push(part);
  }
  return out.join("/");
}

const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];

/** The (edge-truncated) zyx shape of chunk `gridXyz`. */
export function chunkShapeZyx(scale: PrecomputedScale, gridXyz: Vec3): Vec3 {
  const { beginXyz, endXyz } = chunkBoundsXyz(scale, gridXyz);
  return [endXyz[2] - beginXyz[2], endXyz[1] - beginXyz[1], endXyz[0] - beginXyz[0]];
}

/** Decodes one stored chunk of `shapeZyx`; DataCorruption names `field` (the chunk key). */
export function decodePrecomputedChunk(
  bytes: Uint8Array,
  info: PrecomputedInfo,
  scale: PrecomputedScale,
  shapeZyx: Vec3,
  field: string,
): TypedArray {
  const n = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
  const dtype = info.dataType;
  switch (scale.encoding) {
    case "raw": {
      const want = n * DATA_TYPES[dtype].bytes;
      if (bytes.byteLength !== want) {
        throw dataCorruption(field, `raw chunk is ${bytes.byteLength} bytes, expected ${want} for ${xyz(shapeZyx).join("x")} (xyz) ${dtype} voxels`);
      }
      return viewBytes(dtype, bytes);
    }
    case "compressed_segmentation": {
      if (dtype !== "uint32" && dtype !== "uint64") throw dataCorruption(field, `compressed_segmentation cannot hold ${dtype}`);
      return decodeCompressedSegmentation(bytes, dtype, shapeZyx, scale.blockSizeXyz!, field);
    }
    case "jpeg": {
      let image: { width: number; height: number; data: Uint8Array };
      try {
        image = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false });
      } catch (e) {
        throw dataCorruption(field, `JPEG cannot be decoded (${(e as Error).message})`, e);
      }
      // Any width x height with the chunk's voxel count is allowed; rows concatenate x-fastest.
      if (image.width * image.height !== n) {
        throw dataCorruption(field, `JPEG is ${image.width}x${image.height} pixels, expected ${n} for ${xyz(shapeZyx).join("x")} (xyz) voxels`);
      }
      // jpeg-js expands grayscale to 3 equal components per pixel.
      const out = new Uint8Array(n);
      const stride = image.data.length / n;
      for (let i = 0; i < n; i++) out[i] = image.data[i * stride]!;
      return out;
    }
  }
}

/** Encodes one chunk (C-order zyx `data` of `shapeZyx`) in the scale's encoding. */
export function encodePrecomputedChunk(data: TypedArray, info: PrecomputedInfo, scale: PrecomputedScale, shapeZyx: Vec3): Uint8Array {
  const n = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
  if (!(data instanceof DATA_TYPES[info.dataType].array)) {
    throw invalidArgument("data", `expected ${info.dataType} data, got ${data.constructor.name}`);
  }
  if (data.length !== n) throw invalidArgument("data", `has ${data.length} elements, the chunk needs ${n} (${shapeZyx.join("x")} zyx)`);
  switch (scale.encoding) {
    case "raw":
      return asBytes(data);
    case "compressed_segmentation":
      return encodeCompressedSegmentation(data as Uint32Array | BigUint64Array, shapeZyx, scale.blockSizeXyz!);
    case "jpeg":
      throw unimplemented("writing jpeg-encoded precomputed chunks is not supported (lossy; use raw)");
  }
}

export class PrecomputedChunkSource implements ChunkSource {
  readonly metadata: VolumeMetadata;
  readonly cacheKey: string;
  readonly info: PrecomputedInfo;
  readonly #store: Store;
  readonly #sharded: (ShardedChunkReader | undefined)[];

  constructor(store: Store, info: PrecomputedInfo) {
    this.#store = store;
    this.info = info;
    this.metadata = toVolumeMetadata(info);
    this.cacheKey = `precomputed:${store.url}`;
    this.#sharded = info.scales.map((s) => (s.sharding ? new ShardedChunkReader(store, scaleDir(s), s.sharding) : undefined));
  }

  static async open(store: Store, options: ReadOptions = {}): Promise<PrecomputedChunkSource> {
    return new PrecomputedChunkSource(store, await readPrecomputedInfo(store, options));
  }

  async readChunk(scaleIndex: number, chunkIndexZyx: Vec3, options: ReadOptions = {}): Promise<DecodedChunk | undefined> {
    throwIfAborted(options.signal);
    const scale = this.#scale(scaleIndex);
    const gridXyz = xyz(chunkIndexZyx);
    const shapeZyx = chunkShapeZyx(scale, gridXyz);
    const reader = this.#sharded[scaleIndex];
    let bytes: Uint8Array | undefined;
    let field: string;
    if (reader !== undefined) {
      const id = compressedMortonCode(gridXyz, gridShapeXyz(scale));
      field = `${scaleDir(scale)}#chunk${id}`;
      bytes = await reader.get(id, options);
    } else {
      field = `${scaleDir(scale)}/${chunkName(scale, gridXyz)}`;
      bytes = await this.#store.get(field, { signal: options.signal });
    }
    if (bytes === undefined) return undefined;
    return { data: decodePrecomputedChunk(bytes, this.info, scale, shapeZyx, field), shapeZyx };
  }

  /** Drops cached shard indices (call after shards were rewritten). */
  invalidate(): void {
    for (const r of this.#sharded) r?.invalidate();
  }

  #scale(index: number): PrecomputedScale {
    const scale = this.info.scales[index];
    if (!Number.isInteger(index) || scale === undefined) {
      throw invalidArgument("scale", `expected an integer in [0, ${this.info.scales.length - 1}], got ${index}`);
    }
    return scale;
  }
}

registerFormat("precomputed", (store) => PrecomputedChunkSource.open(store));
