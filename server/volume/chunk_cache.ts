// A byte-bounded LRU of decoded chunks, shared by every VolumeSource of the process, that also
// coalesces concurrent loads of the same chunk into one fetch-and-decode.

import { cancelled, throwIfAborted } from "#src/errors.ts";
import type { DecodedChunk } from "#src/volume/types.ts";

/** What a chunk not stored (fill value) costs in the cache: it is remembered, not materialised. */
const ABSENT_CHUNK_BYTES = 64;
const ENTRY_OVERHEAD_BYTES = 128;

export type ChunkLoader = (signal: AbortSignal) => Promise<DecodedChunk | undefined>;

interface InFlight {
  promise: Promise<DecodedChunk | undefined>;
  controller: AbortController;
  waiters: number;
}

export interface ChunkCacheStats {
  bytes: number;
  entries: number;
  hits: number;
  misses: number;
  /** Requests that joined a load already in flight instead of starting one. */
  coalesced: number;
  evictions: number;
}

export class ChunkCache {
  readonly maxBytes: number;
  // Map iteration order is insertion order: re-inserting on hit makes the first key the LRU one.
  readonly #entries = new Map<string, { chunk: DecodedChunk | undefined; bytes: number }>();
  readonly #inFlight = new Map<string, InFlight>();
  #bytes = 0;
  #stats = { hits: 0, misses: 0, coalesced: 0, evictions: 0 };

  constructor(options: { maxBytes: number }) {
    if (!Number.isFinite(options.maxBytes) || options.maxBytes < 0) throw new RangeError("maxBytes must be a non-negative number");
    this.maxBytes = options.maxBytes;
  }

  /**
   * The chunk under `key`, from the cache, from a load already in flight, or by calling `load`.
   * `load` gets its own signal, aborted only when every caller waiting on it has aborted, so one
   * caller going away never fails the others. A caller whose `signal` fires gets Cancelled.
   */
  async get(key: string, load: ChunkLoader, signal?: AbortSignal): Promise<DecodedChunk | undefined> {
    throwIfAborted(signal);
    const hit = this.#entries.get(key);
    if (hit !== undefined) {
      this.#entries.delete(key);
      this.#entries.set(key, hit);
      this.#stats.hits++;
      return hit.chunk;
    }
    let flight = this.#inFlight.get(key);
    if (flight === undefined) {
      this.#stats.misses++;
      flight = this.#start(key, load);
    } else {
      this.#stats.coalesced++;
    }
    return this.#wait(key, flight, signal);
  }

  #start(key: string, load: ChunkLoader): InFlight {
    const controller = new AbortController();
    const flight: InFlight = { controller, waiters: 0, promise: Promise.resolve(undefined) };
    flight.promise = (async () => {
      try {
        const chunk = await load(controller.signal);
        if (!controller.signal.aborted) this.#insert(key, chunk);
        return chunk;
      } finally {
        if (this.#inFlight.get(key) === flight) this.#inFlight.delete(key);
      }
    })();
    // Nobody may be left waiting when it settles (all aborted): never an unhandled rejection.
    flight.promise.catch(() => {});
    this.#inFlight.set(key, flight);
    return flight;
  }

  async #wait(key: string, flight: InFlight, signal: AbortSignal | undefined): Promise<DecodedChunk | undefined> {
    flight.waiters++;
    if (signal === undefined) {
      try {
        return await flight.promise;
      } finally {
        flight.waiters--;
      }
    }
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(cancelled());
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([flight.promise, aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort!);
      flight.waiters--;
      if (flight.waiters === 0 && signal.aborted && this.#inFlight.get(key) === flight) {
        // The last interested caller left: stop the shared load and let the next caller start afresh.
        this.#inFlight.delete(key);
        flight.controller.abort(cancelled());
      }
    }
  }

  #insert(key: string, chunk: DecodedChunk | undefined): void {
    const bytes = ENTRY_OVERHEAD_BYTES + (chunk === undefined ? ABSENT_CHUNK_BYTES : chunk.data.byteLength);
    if (bytes > this.maxBytes) return;
    const old = this.#entries.get(key);
    if (old !== undefined) {
      this.#bytes -= old.bytes;
      this.#entries.delete(key);
    }
    this.#entries.set(key, { chunk, bytes });
    this.#bytes += bytes;
    for (const [k, e] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(k);
      this.#bytes -= e.bytes;
      this.#stats.evictions++;
    }
  }

  /** Drops every cached chunk whose key starts with `prefix` (e.g. after a writer replaced them). */
  invalidate(prefix = ""): void {
    for (const [k, e] of this.#entries) {
      if (k.startsWith(prefix)) {
        this.#entries.delete(k);
        this.#bytes -= e.bytes;
      }
    }
  }

  stats(): ChunkCacheStats {
    return { bytes: this.#bytes, entries: this.#entries.size, ...this.#stats };
  }
}

let shared: ChunkCache | undefined;

/** The process-wide cache (SPATIAL_SAM_CHUNK_CACHE_MB, default 512 MiB) used when none is given. */
export function defaultChunkCache(): ChunkCache {
  if (shared === undefined) {
    const mb = Number(process.env.SPATIAL_SAM_CHUNK_CACHE_MB ?? "512");
    shared = new ChunkCache({ maxBytes: (Number.isFinite(mb) && mb >= 0 ? mb : 512) * 2 ** 20 });
  }
  return shared;
}
