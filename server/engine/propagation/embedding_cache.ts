// Image embeddings per slice (the image encoder's outputs), in one byte-bounded LRU shared by all
// sessions: a slice two sessions (or two prompts) look at is encoded once. Concurrent requests
// for the same key share one computation. Slices can be encoded speculatively ahead of a click
// (`prefetch`, at the pool's background priority); a click that needs one still waiting is not held
// behind it: the speculative run is cancelled and the slice encoded at once.
import type { TensorData } from "#server/onnx/model_registry.ts";

export type Embedding = Record<string, TensorData>;

export interface CacheStats {
  hits: number;
  misses: number;
  /** Speculative computations started, and those a request then used (finished or running). */
  prefetched: number;
  prefetchUsed: number;
  bytes: number;
  entries: number;
}

function sizeOf(e: Embedding): number {
  let n = 0;
  for (const t of Object.values(e)) n += t.data.byteLength;
  return n;
}

interface Pending {
  promise: Promise<Embedding>;
  /** Only for speculative computations: cancels it; `started` once a worker has taken its run. */
  speculative?: { controller: AbortController; started: boolean };
}

export class EmbeddingCache {
  private readonly entries = new Map<string, { value: Embedding; bytes: number; prefetched: boolean }>();
  private readonly pending = new Map<string, Pending>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private prefetched = 0;
  private prefetchUsed = 0;

  constructor(readonly maxBytes: number) {}

  /**
   * The embedding under `key`, computing it with `compute` on a miss. A computation that fails
   * (or is cancelled) is not cached, and a waiter that joined it gets the same error.
   */
  async get(key: string, compute: () => Promise<Embedding>): Promise<Embedding> {
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      // Map order is the LRU order: re-insert to mark most recently used.
      this.entries.delete(key);
      this.entries.set(key, hit);
      this.hits++;
      if (hit.prefetched) {
        hit.prefetched = false;
        this.prefetchUsed++;
      }
      return hit.value;
    }
    const running = this.pending.get(key);
    if (running !== undefined) {
      if (running.speculative === undefined || running.speculative.started) {
        this.hits++;
        if (running.speculative !== undefined) this.prefetchUsed++;
        return running.promise;
      }
      // Still waiting at the lowest priority: drop it and compute now.
      running.speculative.controller.abort();
      this.pending.delete(key);
    }
    this.misses++;
    return this.track(key, compute(), undefined);
  }

  /**
   * Computes `key` speculatively unless it is cached or being computed: `compute` gets a signal
   * (fired by `signal`, or when a request for the key overtakes it) and an `onStart` to call when a
   * worker takes its run. Failures are dropped. Returns a promise that settles (never rejects) when
   * the computation ends, or undefined when nothing was started.
   */
  prefetch(key: string, compute: (signal: AbortSignal, onStart: () => void) => Promise<Embedding>, signal?: AbortSignal): Promise<void> | undefined {
    if (this.entries.has(key) || this.pending.has(key) || signal?.aborted) return undefined;
    const controller = new AbortController();
    const speculative = { controller, started: false };
    // A listener removed when done, not AbortSignal.any: `signal` (a session's) outlives many prefetches.
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    this.prefetched++;
    return this.track(key, compute(controller.signal, () => (speculative.started = true)), speculative).then(
      () => signal?.removeEventListener("abort", onAbort),
      () => signal?.removeEventListener("abort", onAbort),
    );
  }

  private async track(key: string, computing: Promise<Embedding>, speculative: Pending["speculative"]): Promise<Embedding> {
    const entry: Pending = {
      promise: computing.then((value) => {
        // A speculative result overtaken by a request is not kept: that request's result is.
        if (this.pending.get(key) === entry) this.put(key, value, speculative !== undefined);
        return value;
      }),
      ...(speculative === undefined ? {} : { speculative }),
    };
    this.pending.set(key, entry);
    try {
      return await entry.promise;
    } finally {
      if (this.pending.get(key) === entry) this.pending.delete(key);
    }
  }

  private put(key: string, value: Embedding, prefetched = false): void {
    const bytes = sizeOf(value);
    // An entry larger than the whole budget is handed out but not kept.
    if (bytes > this.maxBytes) return;
    const old = this.entries.get(key);
    if (old !== undefined) {
      this.entries.delete(key);
      this.bytes -= old.bytes;
    }
    this.entries.set(key, { value, bytes, prefetched });
    this.bytes += bytes;
    for (const [k, e] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= e.bytes;
    }
  }

  /** Drops every entry whose key starts with `prefix` (a closed volume's slices, say). */
  dropPrefix(prefix: string): void {
    for (const [k, e] of this.entries) {
      if (k.startsWith(prefix)) {
        this.entries.delete(k);
        this.bytes -= e.bytes;
      }
    }
  }

  stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, prefetched: this.prefetched, prefetchUsed: this.prefetchUsed, bytes: this.bytes, entries: this.entries.size };
  }
}
