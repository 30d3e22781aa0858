// Image embeddings per slice (the image encoder's outputs), in one byte-bounded LRU shared by all
// sessions: a slice two sessions (or two prompts) look at is encoded once. Concurrent requests
// for the same key share one computation.
import type { TensorData } from "#server/onnx/model_registry.ts";

export type Embedding = Record<string, TensorData>;

export interface CacheStats {
  hits: number;
  misses: number;
  bytes: number;
  entries: number;
}

function sizeOf(e: Embedding): number {
  let n = 0;
  for (const t of Object.values(e)) n += t.data.byteLength;
  return n;
}

export class EmbeddingCache {
  private readonly entries = new Map<string, { value: Embedding; bytes: number }>();
  private readonly pending = new Map<string, Promise<Embedding>>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;

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
      return hit.value;
    }
    const running = this.pending.get(key);
    if (running !== undefined) {
      this.hits++;
      return running;
    }
    this.misses++;
    const p = compute().then((value) => {
      this.put(key, value);
      return value;
    });
    this.pending.set(key, p);
    try {
      return await p;
    } finally {
      this.pending.delete(key);
    }
  }

  private put(key: string, value: Embedding): void {
    const bytes = sizeOf(value);
    // An entry larger than the whole budget is handed out but not kept.
    if (bytes > this.maxBytes) return;
    this.entries.set(key, { value, bytes });
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
    return { hits: this.hits, misses: this.misses, bytes: this.bytes, entries: this.entries.size };
  }
}
