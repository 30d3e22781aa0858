// Writes volumes as OME-NGFF multiscale Zarr (v2 + OME 0.4, or v3 + OME 0.5): a group with levels
// s0, s1, ... (axes z, y, x in nanometres), chunk by chunk, every file through the atomic Store.put.

import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { allocate, asBytes, DATA_TYPES } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import { copyBox, product } from "#src/geometry.ts";
import type { ScaleLevel, Store, Vec3, VolumeMetadata } from "#src/volume/types.ts";
import { validateMetadata } from "#src/volume/validate.ts";

const gzipAsync = promisify(gzip);

export interface ZarrLevelSpec {
  shapeZyx: Vec3;
  chunkShapeZyx: Vec3;
  voxelSizeNm: Vec3;
  /** First voxel's coordinate in voxels of this level (written as an OME translation); default 0. */
  offsetZyx?: Vec3;
}

export interface ZarrWriterOptions {
  zarrFormat: 2 | 3;
  dtype: DataType;
  levels: ZarrLevelSpec[];
  /** Chunk compression; default "gzip". */
  compression?: "raw" | "gzip";
  gzipLevel?: number;
  /** Value of chunks never written; default 0. Must be exact in JSON (|v| <= 2^53 for 64-bit types). */
  fillValue?: number | bigint;
  /** The multiscale's name in the OME metadata. */
  name?: string;
}

const AXES = ["z", "y", "x"].map((name) => ({ name, type: "space", unit: "nanometer" }));

function jsonBytes(v: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(v, null, 1));
}

export class ZarrWriter {
  readonly store: Store;
  readonly options: Required<Omit<ZarrWriterOptions, "name">> & { name: string };
  readonly #put: (key: string, bytes: Uint8Array) => Promise<void>;

  private constructor(store: Store, options: ZarrWriter["options"], put: (key: string, bytes: Uint8Array) => Promise<void>) {
    this.store = store;
    this.options = options;
    this.#put = put;
  }

  /**
   * Validates the layout and writes all metadata documents (level arrays first, the group last).
   * Chunks not written afterwards read as the fill value.
   */
  static async create(store: Store, options: ZarrWriterOptions): Promise<ZarrWriter> {
    const put = store.put?.bind(store);
    if (put === undefined) throw invalidArgument("store", `${store.url} is read-only`);
    if (options.zarrFormat !== 2 && options.zarrFormat !== 3) throw invalidArgument("zarrFormat", `expected 2 or 3, got ${String(options.zarrFormat)}`);
    const compression = options.compression ?? "gzip";
    if (compression !== "raw" && compression !== "gzip") throw invalidArgument("compression", `expected "raw" or "gzip", got ${JSON.stringify(compression)}`);
    const gzipLevel = options.gzipLevel ?? 5;
    if (!Number.isInteger(gzipLevel) || gzipLevel < 0 || gzipLevel > 9) throw invalidArgument("gzipLevel", `expected 0..9, got ${gzipLevel}`);
    const info = DATA_TYPES[options.dtype];
    if (info === undefined) throw invalidArgument("dtype", `unsupported data type ${JSON.stringify(options.dtype)}`);
    const fillValue = options.fillValue ?? (info.isBigInt ? 0n : 0);
    if (typeof fillValue === "bigint" ? fillValue > BigInt(Number.MAX_SAFE_INTEGER) || fillValue < -BigInt(Number.MAX_SAFE_INTEGER) : !Number.isFinite(fillValue)) {
      throw invalidArgument("fillValue", `${String(fillValue)} cannot be stored exactly in JSON`);
    }
    const normalized = { ...options, compression, gzipLevel, fillValue: info.isBigInt ? BigInt(fillValue) : Number(fillValue), name: options.name ?? "volume" };
    const meta: VolumeMetadata = {
      format: `zarr-v${options.zarrFormat}`,
      dtype: options.dtype,
      fillValue: normalized.fillValue,
      kind: "image",
      scales: (options.levels ?? []).map(
        (l, index): ScaleLevel => ({ index, key: `s${index}`, shapeZyx: l.shapeZyx, chunkShapeZyx: l.chunkShapeZyx, voxelSizeNm: l.voxelSizeNm, offsetZyx: l.offsetZyx ?? [0, 0, 0] }),
      ),
    };
    validateMetadata(meta, "levels");
    const writer = new ZarrWriter(store, normalized, put);
    for (const [i, level] of meta.scales.entries()) await writer.#writeArrayMeta(i, level);
    await writer.#writeGroupMeta(meta.scales);
    return writer;
  }

  #level(scale: number): ZarrLevelSpec {
    const level = this.options.levels[scale];
    if (!Number.isInteger(scale) || level === undefined) throw invalidArgument("scale", `expected an integer in [0, ${this.options.levels.length - 1}], got ${scale}`);
    return level;
  }

  #fillJson(): number {
    return Number(this.options.fillValue);
  }

  async #writeArrayMeta(i: number, level: ScaleLevel): Promise<void> {
    const { dtype, zarrFormat, compression, gzipLevel } = this.options;
    if (zarrFormat === 2) {
      await this.#put(`s${i}/.zarray`, jsonBytes({
        zarr_format: 2,
        shape: level.shapeZyx,
        chunks: level.chunkShapeZyx,
        dtype: DATA_TYPES[dtype].numpy,
        compressor: compression === "gzip" ? { id: "gzip", level: gzipLevel } : null,
        fill_value: this.#fillJson(),
        order: "C",
        filters: null,
        dimension_separator: "/",
      }));
      await this.#put(`s${i}/.zattrs`, jsonBytes({ _ARRAY_DIMENSIONS: ["z", "y", "x"] }));
      return;
    }
    await this.#put(`s${i}/zarr.json`, jsonBytes({
      zarr_format: 3,
      node_type: "array",
      shape: level.shapeZyx,
      data_type: dtype,
      chunk_grid: { name: "regular", configuration: { chunk_shape: level.chunkShapeZyx } },
      chunk_key_encoding: { name: "default", configuration: { separator: "/" } },
      fill_value: this.#fillJson(),
      codecs: [{ name: "bytes", configuration: { endian: "little" } }, ...(compression === "gzip" ? [{ name: "gzip", configuration: { level: gzipLevel } }] : [])],
      attributes: {},
      dimension_names: ["z", "y", "x"],
    }));
  }

  async #writeGroupMeta(levels: ScaleLevel[]): Promise<void> {
    const multiscale = {
      name: this.options.name,
      axes: AXES,
      datasets: levels.map((l) => ({
        path: l.key,
        coordinateTransformations: [
          { type: "scale", scale: l.voxelSizeNm },
          { type: "translation", translation: l.offsetZyx.map((o, d) => o * l.voxelSizeNm[d]!) },
        ],
      })),
    };
    if (this.options.zarrFormat === 2) {
      await this.#put(".zattrs", jsonBytes({ multiscales: [{ version: "0.4", ...multiscale }] }));
      await this.#put(".zgroup", jsonBytes({ zarr_format: 2 }));
    } else {
      await this.#put("zarr.json", jsonBytes({ zarr_format: 3, node_type: "group", attributes: { ome: { version: "0.5", multiscales: [multiscale] } } }));
    }
  }

  /** The store key of a chunk. */
  chunkKey(scale: number, chunkIndexZyx: Vec3): string {
    const sep = this.options.zarrFormat === 2 ? "/" : "/c/";
    return `s${scale}${sep}${chunkIndexZyx.join("/")}`;
  }

  /**
   * Writes chunk `chunkIndexZyx` of level `scale`. `data` is C-order zyx, shaped as the chunk
   * clipped to the level's extent (edge chunks are padded with the fill value on disk, as Zarr
   * stores whole chunks), or as the full chunk shape.
   */
  async writeChunk(scale: number, chunkIndexZyx: Vec3, data: TypedArray): Promise<void> {
    const level = this.#level(scale);
    const { dtype } = this.options;
    const chunk = level.chunkShapeZyx;
    if (!Array.isArray(chunkIndexZyx) || chunkIndexZyx.length !== 3 || chunkIndexZyx.some((c, d) => !Number.isInteger(c) || c < 0 || c * chunk[d]! >= level.shapeZyx[d]!)) {
      throw invalidArgument("chunkIndexZyx", `[${String(chunkIndexZyx)}] is outside the chunk grid of level ${scale}`);
    }
    if (!(data instanceof DATA_TYPES[dtype].array)) throw invalidArgument("data", `expected a ${dtype} array, got ${data?.constructor?.name}`);
    const clipped = chunk.map((c, d) => Math.min(c, level.shapeZyx[d]! - chunkIndexZyx[d]! * c)) as Vec3;
    let full: TypedArray;
    if (data.length === product(chunk)) {
      full = data;
    } else if (data.length === product(clipped)) {
      full = allocate(dtype, product(chunk));
      const fill = this.options.fillValue;
      if (fill !== 0 && fill !== 0n) (full as Uint8Array).fill(fill as number);
      copyBox(data, clipped, [0, 0, 0], full, chunk, [0, 0, 0], clipped);
    } else {
      throw invalidArgument("data", `expected ${product(clipped)} (clipped [${clipped.join(", ")}]) or ${product(chunk)} elements, got ${data.length}`);
    }
    const raw = asBytes(full);
    const bytes = this.options.compression === "gzip" ? new Uint8Array(await gzipAsync(raw, { level: this.options.gzipLevel })) : raw;
    await this.#put(this.chunkKey(scale, chunkIndexZyx), bytes);
  }

  /** Writes a whole level from a dense C-order zyx array of the level's shape, chunk by chunk. */
  async writeLevel(scale: number, data: TypedArray): Promise<void> {
    const level = this.#level(scale);
    if (data.length !== product(level.shapeZyx)) throw invalidArgument("data", `expected ${product(level.shapeZyx)} elements for level ${scale}, got ${data.length}`);
    const chunk = level.chunkShapeZyx;
    const grid = level.shapeZyx.map((s, d) => Math.ceil(s / chunk[d]!)) as Vec3;
    for (let z = 0; z < grid[0]; z++) {
      for (let y = 0; y < grid[1]; y++) {
        for (let x = 0; x < grid[2]; x++) {
          const idx: Vec3 = [z, y, x];
          const start = idx.map((c, d) => c * chunk[d]!) as Vec3;
          const clipped = chunk.map((c, d) => Math.min(c, level.shapeZyx[d]! - start[d]!)) as Vec3;
          const part = allocate(this.options.dtype, product(clipped));
          copyBox(data, level.shapeZyx, start, part, clipped, [0, 0, 0], clipped);
          await this.writeChunk(scale, idx, part);
        }
      }
    }
  }
}
