// Turns a format driver's chunk reads into box reads: validates the request, fetches the
// intersecting chunks through the shared cache with bounded concurrency, and copies them out.

import { allocate, DATA_TYPES } from "#src/dtype.ts";
import type { TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, throwIfAborted } from "#src/errors.ts";
import { chunkIndices, chunkRange, copyBox, DEFAULT_MAX_VOXELS, intersectBoxes, product, validateBox } from "#src/geometry.ts";
import type { Box3, ChunkSource, DecodedChunk, ReadOptions, Vec3, VolumeMetadata, VolumeSource } from "#src/volume/types.ts";
import { validateMetadata } from "#src/volume/validate.ts";
import { defaultChunkCache } from "./chunk_cache.ts";
import type { ChunkCache } from "./chunk_cache.ts";

export interface AssembledSourceOptions {
  cache?: ChunkCache;
  /** Largest box one read may request (default 2^30 voxels). */
  maxVoxels?: number;
  /** Chunks fetched at once per read (default 16). */
  concurrency?: number;
}

export class AssembledVolumeSource implements VolumeSource {
  readonly metadata: VolumeMetadata;
  readonly source: ChunkSource;
  readonly #cache: ChunkCache;
  readonly #maxVoxels: number;
  readonly #concurrency: number;

  constructor(source: ChunkSource, options: AssembledSourceOptions = {}) {
    validateMetadata(source.metadata, source.cacheKey);
    this.source = source;
    this.metadata = source.metadata;
    this.#cache = options.cache ?? defaultChunkCache();
    this.#maxVoxels = options.maxVoxels ?? DEFAULT_MAX_VOXELS;
    this.#concurrency = Math.max(1, options.concurrency ?? 16);
  }

  async read(box: Box3, scale: number, options: ReadOptions = {}): Promise<TypedArray> {
    const { signal } = options;
    throwIfAborted(signal);
    if (!Number.isInteger(scale) || scale < 0 || scale >= this.metadata.scales.length) {
      throw invalidArgument("scale", `expected an integer in [0, ${this.metadata.scales.length - 1}], got ${scale}`);
    }
    const level = this.metadata.scales[scale]!;
    validateBox(box, level.shapeZyx, level.offsetZyx, this.#maxVoxels);
    const dtype = this.metadata.dtype;
    const out = allocate(dtype, product(box.shapeZyx));
    const fill = this.metadata.fillValue;
    const zero = DATA_TYPES[dtype].isBigInt ? 0n : 0;
    if (fill !== zero) (out as Uint8Array).fill(fill as number);
    if (out.length === 0) return out;

    const levelBox: Box3 = { offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx };
    const { startZyx, endZyx } = chunkRange(box, level.chunkShapeZyx, level.offsetZyx);
    const pending = chunkIndices(startZyx, endZyx);
    let failed = false;
    const worker = async () => {
      for (let next = pending.next(); !next.done && !failed; next = pending.next()) {
        const idx = next.value;
        const key = `${this.source.cacheKey}/${scale}/${idx.join(",")}`;
        const chunk = await this.#cache.get(key, (s) => this.source.readChunk(scale, idx, { signal: s }), signal);
        throwIfAborted(signal);
        if (chunk === undefined) continue;
        this.#copyChunk(chunk, idx, key, level.chunkShapeZyx, level.offsetZyx, levelBox, box, out);
      }
    };
    const guarded = () =>
      worker().catch((e: unknown) => {
        failed = true;
        throw e;
      });
    const workers: Promise<void>[] = [];
    for (let i = 0; i < this.#concurrency; i++) workers.push(guarded());
    const results = await Promise.allSettled(workers);
    const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (rejected !== undefined) throw rejected.reason;
    return out;
  }

  #copyChunk(chunk: DecodedChunk, idx: Vec3, key: string, chunkShape: Vec3, origin: Vec3, levelBox: Box3, box: Box3, out: TypedArray): void {
    const n = product(chunk.shapeZyx);
    if (chunk.data.length !== n || chunk.shapeZyx.some((s, d) => s < 0 || s > chunkShape[d]!)) {
      throw dataCorruption(key, `decoded chunk has ${chunk.data.length} elements for shape [${chunk.shapeZyx.join(", ")}] (grid chunk [${chunkShape.join(", ")}])`);
    }
    if (!(chunk.data instanceof DATA_TYPES[this.metadata.dtype].array)) {
      throw dataCorruption(key, `decoded chunk is a ${chunk.data.constructor.name}, expected ${this.metadata.dtype}`);
    }
    const chunkOrigin: Vec3 = [0, 1, 2].map((d) => origin[d]! + idx[d]! * chunkShape[d]!) as Vec3;
    const within = intersectBoxes({ offsetZyx: chunkOrigin, shapeZyx: chunk.shapeZyx }, levelBox);
    const part = within === undefined ? undefined : intersectBoxes(within, box);
    if (part === undefined) return;
    copyBox(
      chunk.data,
      chunk.shapeZyx,
      [0, 1, 2].map((d) => part.offsetZyx[d]! - chunkOrigin[d]!) as Vec3,
      out,
      box.shapeZyx,
      [0, 1, 2].map((d) => part.offsetZyx[d]! - box.offsetZyx[d]!) as Vec3,
      part.shapeZyx,
    );
  }

  async close(): Promise<void> {
    await this.source.close?.();
  }
}
