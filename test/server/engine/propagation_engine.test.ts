// The session table and the shared embedding cache: idle eviction (never of a session in use), the
// byte bound of the LRU, and embeddings shared between sessions on the same slices. Real volumes
// (precomputed files) and the fixture propagator's graphs in a worker.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { VolumeSource } from "#src/volume/types.ts";
import { silentLogger } from "#server/log.ts";
import { EmbeddingCache } from "#server/engine/propagation/embedding_cache.ts";
import { PropagationEngine, type StartRequest } from "#server/engine/propagation/engine.ts";
import { loadPropagator } from "#server/engine/propagation/propagator.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { readNpy } from "#test/helpers/npy.ts";

const golden = join(import.meta.dirname, "..", "..", "fixtures", "propagator");
let dir: string;
let engine: PropagationEngine;
let image: VolumeSource;
let sdf: VolumeSource;

async function write(name: string, file: string, dtype: "uint8" | "float32"): Promise<VolumeSource> {
  const a = readNpy(join(golden, file));
  const [z, y, x] = a.shape as [number, number, number];
  const w = await PrecomputedWriter.create(await FileStore.open(join(dir, name), [dir]), {
    type: "image",
    dataType: dtype,
    numChannels: 1,
    scales: [{ key: "s0", sizeXyz: [x, y, z], resolutionXyz: [5, 5, 5], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [x, y, z], encoding: "raw" }],
  });
  await w.writeChunk(0, [0, 0, 0], a.data);
  return openVolume(`precomputed://file://${join(dir, name)}`, { roots: [dir] });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "propagation-engine-"));
  image = await write("image", "image.npy", "uint8");
  sdf = await write("sdf", "sdf.npy", "float32");
  const propagator = await loadPropagator(join(golden, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
  engine = new PropagationEngine({ propagator, log: silentLogger(), idleTimeoutMs: 60_000 });
});
afterAll(async () => {
  await engine?.shutdown();
  await image?.close();
  await sdf?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const request = (): StartRequest => ({
  volume: image,
  volumeKey: "image",
  box: { offsetZyx: [0, 0, 0], shapeZyx: [12, 64, 64] },
  scale: 0,
  sdf: { kind: "volume", volume: sdf },
});
const click = { points: [{ x: 20, y: 20, label: 1 as const }] };

describe("session table", () => {
  it("evicts a session idle past the timeout, never one in use", async () => {
    const idle = await engine.start(request());
    const busy = await engine.start(request());
    await engine.use(busy, (s) => s.addPrompts(1n, 3, click));
    const later = Date.now() + 61_000;
    // `busy` is streaming a propagation while the sweep runs.
    await engine.use(busy, async () => {
      await engine.evictIdle(later);
    });
    await expect(engine.use(idle, async () => 0)).rejects.toMatchObject({ _tag: "NotFound", field: "session_id" });
    expect(await engine.use(busy, async (s) => s.objectIds())).toEqual([1n]);
    await engine.close(busy);
    expect(engine.sessionCount).toBe(0);
  });

  it("sessions on the same slices share image embeddings", async () => {
    const a = await engine.start(request());
    const b = await engine.start(request());
    await engine.use(a, (s) => s.addPrompts(1n, 5, click));
    const before = engine.embeddings.stats();
    await engine.use(b, (s) => s.addPrompts(9n, 5, click));
    const after = engine.embeddings.stats();
    expect(after.misses).toBe(before.misses);
    expect(after.hits).toBeGreaterThan(before.hits);
    await engine.close(a);
    await engine.close(b);
  });
});

describe("limits", () => {
  it("refuses a session box whose slices exceed the configured size, naming box.shape", async () => {
    const propagator = await loadPropagator(join(golden, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
    const small = new PropagationEngine({ propagator, log: silentLogger(), maxSliceVoxels: 32 * 32 });
    try {
      await expect(small.start(request())).rejects.toMatchObject({ _tag: "InvalidArgument", field: "box.shape" });
    } finally {
      await small.shutdown();
    }
  });
});

describe("EmbeddingCache", () => {
  const entry = (n: number) => ({ t: { dtype: "float32" as const, dims: [n], data: new Float32Array(n) } });
  it("keeps at most maxBytes, dropping the least recently used first", async () => {
    const cache = new EmbeddingCache(3 * 400);
    for (const k of ["a", "b", "c"]) await cache.get(k, async () => entry(100));
    await cache.get("a", async () => entry(100)); // a is now the most recent
    await cache.get("d", async () => entry(100)); // evicts b
    expect(cache.stats()).toMatchObject({ bytes: 1200, entries: 3 });
    let computed = 0;
    await cache.get("b", async () => (computed++, entry(100)));
    await cache.get("a", async () => (computed++, entry(100)));
    expect(computed).toBe(1);
    // An entry larger than the budget is returned but not kept.
    await cache.get("huge", async () => entry(1000));
    expect(cache.stats().bytes).toBeLessThanOrEqual(1200);
  });

  it("a failed computation is not cached and its waiters see the error", async () => {
    const cache = new EmbeddingCache(1 << 20);
    const fail = cache.get("k", async () => {
      throw new Error("boom");
    });
    const joined = cache.get("k", async () => entry(1));
    await expect(fail).rejects.toThrow("boom");
    await expect(joined).rejects.toThrow("boom");
    await expect(cache.get("k", async () => entry(1))).resolves.toBeDefined();
  });
});
