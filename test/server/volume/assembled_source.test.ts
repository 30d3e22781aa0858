// The assembler over an analytic driver (voxel value = f(z, y, x), some chunks absent, edge chunks
// both padded and clipped): random boxes against the formula, offsets, fill, errors and aborts.

import { describe, expect, it } from "vitest";
import { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, Vec3, VolumeMetadata } from "#src/volume/types.ts";

const value = (z: number, y: number, x: number) => (z * 10007 + y * 101 + x) % 65521;

/** Level 0: 23x17x29 at offset (100, 50, 0), chunks 4x8x8 (padded edge chunks); level 1: clipped edge chunks. */
class AnalyticSource implements ChunkSource {
  readonly cacheKey = `analytic-${Math.random()}`;
  readonly metadata: VolumeMetadata = {
    format: "analytic",
    dtype: "uint16",
    fillValue: 65535,
    kind: "image",
    scales: [
      { index: 0, key: "s0", shapeZyx: [23, 17, 29], chunkShapeZyx: [4, 8, 8], voxelSizeNm: [8, 4, 4], offsetZyx: [100, 50, 0] },
      { index: 1, key: "s1", shapeZyx: [12, 9, 15], chunkShapeZyx: [5, 5, 5], voxelSizeNm: [16, 8, 8], offsetZyx: [0, 0, 0] },
    ],
  };
  reads = 0;
  delayMs = 0;
  corrupt = false;

  absent(idx: Vec3): boolean {
    return (idx[0] + idx[1] + idx[2]) % 5 === 2;
  }

  async readChunk(scale: number, idx: Vec3, options: ReadOptions = {}): Promise<DecodedChunk | undefined> {
    this.reads++;
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    if (options.signal?.aborted) throw options.signal.reason;
    if (this.absent(idx)) return undefined;
    const level = this.metadata.scales[scale]!;
    const c = level.chunkShapeZyx;
    // Level 0 returns whole (padded) chunks like Zarr; level 1 clipped ones like N5.
    const shape = (scale === 0 ? c : c.map((n, d) => Math.min(n, level.shapeZyx[d]! - idx[d]! * n))) as Vec3;
    const data = new Uint16Array(this.corrupt ? 3 : shape[0] * shape[1] * shape[2]);
    let o = 0;
    for (let z = 0; z < shape[0] && !this.corrupt; z++)
      for (let y = 0; y < shape[1]; y++)
        for (let x = 0; x < shape[2]; x++) {
          const g = [idx[0] * c[0] + z, idx[1] * c[1] + y, idx[2] * c[2] + x];
          data[o++] = value(g[0]!, g[1]!, g[2]!);
        }
    return { data, shapeZyx: shape };
  }
}

function expected(src: AnalyticSource, scale: number, off: Vec3, shape: Vec3): Uint16Array {
  const level = src.metadata.scales[scale]!;
  const out = new Uint16Array(shape[0] * shape[1] * shape[2]);
  let o = 0;
  for (let z = 0; z < shape[0]; z++)
    for (let y = 0; y < shape[1]; y++)
      for (let x = 0; x < shape[2]; x++) {
        const g = [off[0] + z - level.offsetZyx[0], off[1] + y - level.offsetZyx[1], off[2] + x - level.offsetZyx[2]] as Vec3;
        const idx = g.map((v, d) => Math.floor(v / level.chunkShapeZyx[d]!)) as Vec3;
        out[o++] = src.absent(idx) ? 65535 : value(...g);
      }
  return out;
}

describe("AssembledVolumeSource", () => {
  it("reads random boxes at both levels exactly like the formula, with fill where chunks are absent", async () => {
    const src = new AnalyticSource();
    const vol = new AssembledVolumeSource(src, { cache: new ChunkCache({ maxBytes: 1 << 16 }), concurrency: 3 });
    for (let t = 0; t < 60; t++) {
      const scale = t % 2;
      const level = src.metadata.scales[scale]!;
      const shape = level.shapeZyx.map((n) => Math.floor(Math.random() * (n + 1))) as Vec3;
      const off = level.shapeZyx.map((n, d) => level.offsetZyx[d]! + Math.floor(Math.random() * (n - shape[d]! + 1))) as Vec3;
      const got = await vol.read({ offsetZyx: off, shapeZyx: shape }, scale);
      expect(got).toEqual(expected(src, scale, off, shape));
    }
  });

  it("reuses cached chunks across reads and sources sharing a cache", async () => {
    const src = new AnalyticSource();
    const cache = new ChunkCache({ maxBytes: 1 << 22 });
    const a = new AssembledVolumeSource(src, { cache });
    const b = new AssembledVolumeSource(src, { cache });
    const whole = { offsetZyx: [100, 50, 0] as Vec3, shapeZyx: [23, 17, 29] as Vec3 };
    await a.read(whole, 0);
    const reads = src.reads;
    expect(reads).toBe(6 * 3 * 4);
    await b.read(whole, 0);
    expect(src.reads).toBe(reads);
  });

  it("refuses bad scales and boxes with the field named", async () => {
    const vol = new AssembledVolumeSource(new AnalyticSource(), { cache: new ChunkCache({ maxBytes: 0 }) });
    await expect(vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [1, 1, 1] }, 2)).rejects.toMatchObject({ _tag: "InvalidArgument", field: "scale" });
    await expect(vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [1, 1, 1] }, 0.5)).rejects.toMatchObject({ field: "scale" });
    await expect(vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [1, 1, 1] }, 0)).rejects.toMatchObject({ field: "box.offset" });
    await expect(vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [24, 1, 1] }, 0)).rejects.toMatchObject({ field: "box.shape" });
    await expect(vol.read({ offsetZyx: [110, 60, 10], shapeZyx: [-3, 2, 2] }, 0)).rejects.toMatchObject({ field: "box.shape" });
    const small = new AssembledVolumeSource(new AnalyticSource(), { maxVoxels: 100, cache: new ChunkCache({ maxBytes: 0 }) });
    await expect(small.read({ offsetZyx: [100, 50, 0], shapeZyx: [5, 5, 5] }, 0)).rejects.toMatchObject({ field: "box.shape" });
  });

  it("reports a chunk whose decoded length does not match its shape as DataCorruption naming the chunk", async () => {
    const src = new AnalyticSource();
    src.corrupt = true;
    const vol = new AssembledVolumeSource(src, { cache: new ChunkCache({ maxBytes: 0 }) });
    await expect(vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [1, 1, 1] }, 0)).rejects.toMatchObject({
      _tag: "DataCorruption",
      field: `${src.cacheKey}/0/0,0,0`,
    });
  });

  it("stops with Cancelled when the caller aborts", async () => {
    const src = new AnalyticSource();
    src.delayMs = 20;
    const vol = new AssembledVolumeSource(src, { cache: new ChunkCache({ maxBytes: 1 << 20 }), concurrency: 2 });
    const ac = new AbortController();
    const p = vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [23, 17, 29] }, 0, { signal: ac.signal });
    setTimeout(() => ac.abort(), 5);
    await expect(p).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(src.reads).toBeLessThan(6 * 3 * 4);
    const pre = new AbortController();
    pre.abort();
    await expect(vol.read({ offsetZyx: [100, 50, 0], shapeZyx: [1, 1, 1] }, 0, { signal: pre.signal })).rejects.toMatchObject({ _tag: "Cancelled" });
  });

  it("refuses metadata with absurd chunk shapes before reading anything", () => {
    const src = new AnalyticSource();
    src.metadata.scales[0]!.chunkShapeZyx = [1024, 1024, 1024 * 1024];
    expect(() => new AssembledVolumeSource(src)).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field: `${src.cacheKey}: scales[0].chunk_shape` }));
  });
});
