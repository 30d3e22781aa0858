// The shared chunk cache: byte-bounded LRU eviction, coalescing of concurrent loads, and abort
// safety (one caller aborting never fails the others; the load stops only when all have left).

import { describe, expect, it } from "vitest";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import type { DecodedChunk } from "#src/volume/types.ts";

const chunk = (bytes: number, v = 1): DecodedChunk => ({ data: new Uint8Array(bytes).fill(v), shapeZyx: [1, 1, bytes] });

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => {
    resolve = a;
    reject = b;
  });
  return { promise, resolve, reject };
}

describe("ChunkCache", () => {
  it("serves hits without reloading and evicts least-recently-used entries beyond the byte budget", async () => {
    const cache = new ChunkCache({ maxBytes: 3 * (1000 + 128) });
    let loads = 0;
    const load = (v: number) => async () => {
      loads++;
      return chunk(1000, v);
    };
    await cache.get("a", load(1));
    await cache.get("b", load(2));
    await cache.get("c", load(3));
    expect(loads).toBe(3);
    expect((await cache.get("a", load(9)))!.data[0]).toBe(1); // hit; "a" becomes most recent
    expect(loads).toBe(3);
    await cache.get("d", load(4)); // evicts "b", the least recently used
    expect(cache.stats()).toMatchObject({ entries: 3, evictions: 1, hits: 1, misses: 4 });
    expect(cache.stats().bytes).toBeLessThanOrEqual(cache.maxBytes);
    await cache.get("b", load(5)); // order was c, a, d: "b" coming back evicts "c"
    expect(loads).toBe(5);
    await cache.get("a", load(9));
    expect(loads).toBe(5);
    await cache.get("c", load(6));
    expect(loads).toBe(6);
  });

  it("does not cache chunks larger than the whole budget, and caches absence cheaply", async () => {
    const cache = new ChunkCache({ maxBytes: 500 });
    let loads = 0;
    await cache.get("big", async () => (loads++, chunk(1000)));
    await cache.get("big", async () => (loads++, chunk(1000)));
    expect(loads).toBe(2);
    expect(await cache.get("gone", async () => (loads++, undefined))).toBeUndefined();
    expect(await cache.get("gone", async () => (loads++, undefined))).toBeUndefined();
    expect(loads).toBe(3);
    cache.invalidate("go");
    await cache.get("gone", async () => (loads++, undefined));
    expect(loads).toBe(4);
  });

  it("coalesces concurrent requests for one chunk into one load", async () => {
    const cache = new ChunkCache({ maxBytes: 1 << 20 });
    const d = deferred<DecodedChunk>();
    let loads = 0;
    const load = () => {
      loads++;
      return d.promise;
    };
    const all = Promise.all(Array.from({ length: 10 }, () => cache.get("k", load)));
    d.resolve(chunk(10, 7));
    const got = await all;
    expect(loads).toBe(1);
    expect(got.every((c) => c === got[0])).toBe(true);
    expect(cache.stats().coalesced).toBe(9);
  });

  it("a caller that aborts gets Cancelled while others still receive the chunk", async () => {
    const cache = new ChunkCache({ maxBytes: 1 << 20 });
    const d = deferred<DecodedChunk>();
    let loaderSignal: AbortSignal | undefined;
    const load = (s: AbortSignal) => {
      loaderSignal = s;
      return d.promise;
    };
    const ac = new AbortController();
    const first = cache.get("k", load, ac.signal);
    const second = cache.get("k", load);
    ac.abort();
    await expect(first).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(loaderSignal!.aborted).toBe(false);
    d.resolve(chunk(4, 3));
    expect((await second)!.data[0]).toBe(3);
    expect(cache.stats().entries).toBe(1);
  });

  it("aborts the shared load when every caller has aborted, and a later caller starts afresh", async () => {
    const cache = new ChunkCache({ maxBytes: 1 << 20 });
    let loaderSignal: AbortSignal | undefined;
    const hang = (s: AbortSignal) => {
      loaderSignal = s;
      return new Promise<DecodedChunk>((_, reject) => s.addEventListener("abort", () => reject(s.reason)));
    };
    const a = new AbortController();
    const b = new AbortController();
    const p1 = cache.get("k", hang, a.signal);
    const p2 = cache.get("k", hang, b.signal);
    a.abort();
    await expect(p1).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(loaderSignal!.aborted).toBe(false);
    b.abort();
    await expect(p2).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(loaderSignal!.aborted).toBe(true);
    expect((await cache.get("k", async () => chunk(2, 5)))!.data[0]).toBe(5);
  });

  it("a failed load is not cached and reaches every waiter", async () => {
    const cache = new ChunkCache({ maxBytes: 1 << 20 });
    const d = deferred<DecodedChunk>();
    const p = Promise.allSettled([cache.get("k", () => d.promise), cache.get("k", () => d.promise)]);
    d.reject(new Error("boom"));
    expect((await p).map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect((await cache.get("k", async () => chunk(1, 8)))!.data[0]).toBe(8);
  });
});
