// Reads chunks of a neuroglancer_uint64_sharded_v1 scale with range requests: the shard index
// (fixed size, at the start of `<shard>.shard`), then the minishard index, then the chunk bytes.
// Both index levels are cached per reader, since every chunk of a minishard shares them.

import { gunzipSync, gzipSync } from "node:zlib";
import { buildShardFile, decodeMinishardIndex, minishardIndexRange, shardFileName, shardIndexBytes, shardLocation } from "#src/codecs/sharding.ts";
import { dataCorruption, throwIfAborted } from "#src/errors.ts";
import type { ShardingSpec } from "#src/volume/precomputed_info.ts";
import type { ReadOptions, Store } from "#src/volume/types.ts";

/** Index entries kept per reader; each is at most a few KiB, so this bounds memory to a few MiB. */
const MAX_CACHED_INDICES = 1024;

export function gunzipOrThrow(bytes: Uint8Array, field: string): Uint8Array {
  try {
    return new Uint8Array(gunzipSync(bytes));
  } catch (e) {
    throw dataCorruption(field, `gzip data cannot be decompressed (${(e as Error).message})`, e);
  }
}

export function gzip(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(gzipSync(bytes));
}

/** A small insertion-ordered cache of promises; failed loads are dropped so they can be retried. */
class PromiseCache<V> {
  readonly #map = new Map<string, Promise<V>>();
  get(key: string, load: () => Promise<V>): Promise<V> {
    let p = this.#map.get(key);
    if (p === undefined) {
      p = load();
      this.#map.set(key, p);
      const loading = p;
      loading.catch(() => {
        if (this.#map.get(key) === loading) this.#map.delete(key);
      });
      if (this.#map.size > MAX_CACHED_INDICES) this.#map.delete(this.#map.keys().next().value!);
    }
    return p;
  }
  clear(): void {
    this.#map.clear();
  }
}

export class ShardedChunkReader {
  readonly #store: Store;
  readonly #dir: string;
  readonly #spec: ShardingSpec;
  readonly #shardIndices = new PromiseCache<Uint8Array | undefined>();
  readonly #minishards = new PromiseCache<Map<bigint, [number, number]>>();

  /** `dir` is the scale's key (folder of the shard files) within `store`. */
  constructor(store: Store, dir: string, spec: ShardingSpec) {
    this.#store = store;
    this.#dir = dir;
    this.#spec = spec;
  }

  /** Forgets cached indices (after shard files were rewritten). */
  invalidate(): void {
    this.#shardIndices.clear();
    this.#minishards.clear();
  }

  shardKey(shard: number): string {
    return `${this.#dir}/${shardFileName(this.#spec, shard)}`;
  }

  /** The stored (decoded from data_encoding) bytes of chunk `chunkId`, or undefined when absent. */
  async get(chunkId: bigint, options: ReadOptions = {}): Promise<Uint8Array | undefined> {
    const { shard, minishard } = shardLocation(this.#spec, chunkId);
    const key = this.shardKey(shard);
    // Index reads are shared between callers, so they run without any one caller's signal.
    const entries = await this.#minishards.get(`${shard}/${minishard}`, () => this.#loadMinishard(key, shard, minishard));
    throwIfAborted(options.signal);
    const range = entries.get(chunkId);
    if (range === undefined) return undefined;
    const field = `${key}#${chunkId}`;
    const bytes = await this.#store.get(key, { range, signal: options.signal });
    if (bytes === undefined || bytes.byteLength !== range[1] - range[0]) {
      throw dataCorruption(field, `chunk data [${range[0]}, ${range[1]}) extends past the end of the shard file`);
    }
    return this.#spec.dataEncoding === "gzip" ? gunzipOrThrow(bytes, field) : bytes;
  }

  async #loadMinishard(key: string, shard: number, minishard: number): Promise<Map<bigint, [number, number]>> {
    const entries = new Map<bigint, [number, number]>();
    const index = await this.#shardIndices.get(String(shard), async () => {
      const n = shardIndexBytes(this.#spec);
      const bytes = await this.#store.get(key, { range: [0, n] });
      if (bytes !== undefined && bytes.byteLength !== n) {
        throw dataCorruption(key, `shard file is ${bytes.byteLength} bytes, shorter than its ${n}-byte shard index`);
      }
      return bytes;
    });
    if (index === undefined) return entries;
    const range = minishardIndexRange(this.#spec, index, minishard, key);
    if (range === undefined) return entries;
    const raw = await this.#store.get(key, { range });
    if (raw === undefined || raw.byteLength !== range[1] - range[0]) {
      throw dataCorruption(key, `minishard ${minishard} index [${range[0]}, ${range[1]}) extends past the end of the shard file`);
    }
    const field = `${key}#minishard${minishard}`;
    const decoded = this.#spec.minishardIndexEncoding === "gzip" ? gunzipOrThrow(raw, field) : raw;
    for (const e of decodeMinishardIndex(this.#spec, decoded, field)) entries.set(e.chunkId, [e.start, e.end]);
    return entries;
  }
}

/** A whole shard file for `chunks` (encoded chunk bytes by chunk id), gzip applied per the spec. */
export function encodeShardFile(spec: ShardingSpec, chunks: ReadonlyMap<bigint, Uint8Array>): Uint8Array {
  return buildShardFile(spec, chunks, gzip);
}
