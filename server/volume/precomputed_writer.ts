// Writes Neuroglancer precomputed volumes through a Store whose `put` is atomic (temp + rename).
// Unsharded scales are written chunk by chunk (a live layer rewrites one chunk without touching
// the others, and readers see the old chunk or the new one); sharded scales are written one whole
// shard file at a time, for final exports. The info file is written by `create`, before any chunk,
// so a reader that opens early sees missing chunks as fill (0), never an unreadable volume.

import { compressedMortonCode, shardFileName, shardLocation } from "#src/codecs/sharding.ts";
import { allocate, asBytes, DATA_TYPES } from "#src/dtype.ts";
import type { TypedArray } from "#src/dtype.ts";
import { failedPrecondition, invalidArgument, throwIfAborted } from "#src/errors.ts";
import { copyBox } from "#src/geometry.ts";
import { chunkName, gridShapeXyz, parsePrecomputedInfo, precomputedInfoToJson } from "#src/volume/precomputed_info.ts";
import type { PrecomputedInfo, PrecomputedScale } from "#src/volume/precomputed_info.ts";
import type { ReadOptions, Store, Vec3 } from "#src/volume/types.ts";
import { chunkShapeZyx, encodePrecomputedChunk, INFO_KEY, readPrecomputedInfo, scaleDir } from "./precomputed.ts";
import { encodeShardFile } from "./precomputed_sharded.ts";

type WritableStore = Store & { put: NonNullable<Store["put"]> };

function writable(store: Store): WritableStore {
  if (store.put === undefined) throw failedPrecondition(`store ${store.url} is read-only`, store.url);
  return store as WritableStore;
}

function isAllZero(a: TypedArray): boolean {
  const bytes = asBytes(a);
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

export class PrecomputedWriter {
  readonly info: PrecomputedInfo;
  readonly #store: WritableStore;

  private constructor(store: WritableStore, info: PrecomputedInfo) {
    this.#store = store;
    this.info = info;
  }

  /** Validates `info` and writes it (atomically) as the volume's info file, replacing any old one. */
  static async create(store: Store, info: PrecomputedInfo): Promise<PrecomputedWriter> {
    const w = writable(store);
    const json = precomputedInfoToJson(info);
    const checked = parsePrecomputedInfo(json);
    await w.put(INFO_KEY, new TextEncoder().encode(JSON.stringify(json, null, 1)));
    return new PrecomputedWriter(w, checked);
  }

  /** Opens an existing volume for (re)writing chunks. */
  static async open(store: Store, options: ReadOptions = {}): Promise<PrecomputedWriter> {
    const w = writable(store);
    return new PrecomputedWriter(w, await readPrecomputedInfo(w, options));
  }

  #scale(index: number): PrecomputedScale {
    const scale = this.info.scales[index];
    if (!Number.isInteger(index) || scale === undefined) {
      throw invalidArgument("scale", `expected an integer in [0, ${this.info.scales.length - 1}], got ${index}`);
    }
    return scale;
  }

  /**
   * Writes (or rewrites) chunk `chunkIndexZyx` of an unsharded scale. `data` is C-order zyx with
   * the chunk's shape, truncated at the volume's upper bounds. Touches only that chunk's file.
   */
  async writeChunk(scaleIndex: number, chunkIndexZyx: Vec3, data: TypedArray): Promise<void> {
    const scale = this.#scale(scaleIndex);
    if (scale.sharding) {
      throw failedPrecondition(`scale ${scaleIndex} is sharded: write it whole with writeShardedScale`, "scale");
    }
    const gridXyz: Vec3 = [chunkIndexZyx[2], chunkIndexZyx[1], chunkIndexZyx[0]];
    const shape = chunkShapeZyx(scale, gridXyz);
    const bytes = encodePrecomputedChunk(data, this.info, scale, shape);
    await this.#store.put(`${scaleDir(scale)}/${chunkName(scale, gridXyz)}`, bytes);
  }

  /**
   * Writes every shard file of a sharded scale from the level's full C-order zyx array. Chunks
   * whose voxels are all 0 (the fill value) are left out, as they read back as 0 anyway; a shard
   * left with no chunks is still written (empty), so no stale shard from an earlier export survives.
   */
  async writeShardedScale(scaleIndex: number, data: TypedArray, options: ReadOptions = {}): Promise<void> {
    const scale = this.#scale(scaleIndex);
    const spec = scale.sharding;
    if (spec === undefined) throw failedPrecondition(`scale ${scaleIndex} is not sharded: use writeChunk`, "scale");
    const levelZyx: Vec3 = [scale.sizeXyz[2], scale.sizeXyz[1], scale.sizeXyz[0]];
    if (!(data instanceof DATA_TYPES[this.info.dataType].array)) {
      throw invalidArgument("data", `expected ${this.info.dataType} data, got ${data.constructor.name}`);
    }
    if (data.length !== levelZyx[0] * levelZyx[1] * levelZyx[2]) {
      throw invalidArgument("data", `has ${data.length} elements, scale ${scaleIndex} is ${levelZyx.join("x")} (zyx)`);
    }
    const grid = gridShapeXyz(scale);
    const chunkZyx: Vec3 = [scale.chunkSizeXyz[2], scale.chunkSizeXyz[1], scale.chunkSizeXyz[0]];
    // Group grid cells by shard first, then encode and write one shard at a time, so only one
    // shard's encoded chunks are held in memory.
    const shards = new Map<number, { id: bigint; gridXyz: Vec3 }[]>();
    for (let gz = 0; gz < grid[2]; gz++) {
      for (let gy = 0; gy < grid[1]; gy++) {
        for (let gx = 0; gx < grid[0]; gx++) {
          const id = compressedMortonCode([gx, gy, gz], grid);
          const { shard } = shardLocation(spec, id);
          let cells = shards.get(shard);
          if (cells === undefined) shards.set(shard, (cells = []));
          cells.push({ id, gridXyz: [gx, gy, gz] });
        }
      }
    }
    const dir = scaleDir(scale);
    for (const [shard, cells] of shards) {
      const chunks = new Map<bigint, Uint8Array>();
      for (const { id, gridXyz } of cells) {
        throwIfAborted(options.signal);
        const shape = chunkShapeZyx(scale, gridXyz);
        const chunk = allocate(this.info.dataType, shape[0] * shape[1] * shape[2]);
        copyBox(data, levelZyx, [gridXyz[2] * chunkZyx[0], gridXyz[1] * chunkZyx[1], gridXyz[0] * chunkZyx[2]], chunk, shape, [0, 0, 0], shape);
        if (!isAllZero(chunk)) chunks.set(id, encodePrecomputedChunk(chunk, this.info, scale, shape));
      }
      await this.#store.put(`${dir}/${shardFileName(spec, shard)}`, encodeShardFile(spec, chunks));
    }
  }
}
