// Sharding primitives: compressed Morton codes (analytic cases from volume.md's definition), shard
// placement, and the minishard index / shard file layout read back through the public decoders.
// Agreement with tensorstore (both hashes, gzip) is checked in test/server/volume/precomputed*.test.ts.

import { describe, expect, it } from "vitest";
import {
  buildShardFile,
  compressedMortonCode,
  decodeMinishardIndex,
  encodeMinishardIndex,
  minishardIndexRange,
  murmurHash3X86_128Low64,
  shardFileName,
  shardIndexBytes,
  shardLocation,
} from "#src/codecs/sharding.ts";
import { SpatialSamError } from "#src/errors.ts";
import type { ShardingSpec } from "#src/volume/precomputed_info.ts";

const spec = (over: Partial<ShardingSpec> = {}): ShardingSpec => ({
  preshiftBits: 0,
  hash: "identity",
  minishardBits: 2,
  shardBits: 3,
  minishardIndexEncoding: "raw",
  dataEncoding: "raw",
  ...over,
});

describe("compressedMortonCode", () => {
  it("is the ordinary Morton code on a cubic power-of-two grid", () => {
    // x bit i -> 3i, y bit i -> 3i+1, z bit i -> 3i+2.
    expect(compressedMortonCode([1, 0, 0], [8, 8, 8])).toBe(1n);
    expect(compressedMortonCode([0, 1, 0], [8, 8, 8])).toBe(2n);
    expect(compressedMortonCode([0, 0, 1], [8, 8, 8])).toBe(4n);
    expect(compressedMortonCode([5, 3, 6], [8, 8, 8])).toBe(0b101_110_011n);
  });

  it("skips the bits of dimensions that have run out", () => {
    // grid x=4 (2 bits), y=1 (0 bits), z=16 (4 bits): x0 z0 x1 z1 z2 z3.
    expect(compressedMortonCode([3, 0, 0], [4, 1, 16])).toBe(0b000101n);
    expect(compressedMortonCode([0, 0, 15], [4, 1, 16])).toBe(0b111010n);
    expect(compressedMortonCode([2, 0, 9], [4, 1, 16])).toBe(0b100110n);
    // A grid cell count that is not a power of two still needs ceil(log2) bits: 5 cells -> 3 bits.
    expect(compressedMortonCode([4, 0, 0], [5, 1, 1])).toBe(4n);
  });

  it("is a bijection on the grid", () => {
    const grid: [number, number, number] = [3, 5, 2];
    const seen = new Set<bigint>();
    for (let z = 0; z < 2; z++) for (let y = 0; y < 5; y++) for (let x = 0; x < 3; x++) seen.add(compressedMortonCode([x, y, z], grid));
    expect(seen.size).toBe(30);
  });
});

describe("shard placement", () => {
  it("splits the (preshifted) identity hash into minishard and shard bits", () => {
    const s = spec({ preshiftBits: 1 });
    // id 0b1_011_10 >> 1 = 0b1_011_1: minishard = low 2 bits (0b11), shard = next 3 bits (0b101).
    expect(shardLocation(s, 0b101110n)).toEqual({ minishard: 0b11, shard: 0b101 & 0b111 });
    expect(shardFileName(s, 5)).toBe("5.shard");
    expect(shardFileName(spec({ shardBits: 9 }), 10)).toBe("00a.shard");
    expect(shardFileName(spec({ shardBits: 0 }), 0)).toBe("0.shard");
  });

  it("murmurhash3_x86_128 depends on every input bit and is deterministic", () => {
    const a = murmurHash3X86_128Low64(0n);
    expect(murmurHash3X86_128Low64(0n)).toBe(a);
    const hashes = new Set<bigint>();
    for (let b = 0n; b < 64n; b++) hashes.add(murmurHash3X86_128Low64(1n << b));
    expect(hashes.size).toBe(64);
    expect(hashes.has(a)).toBe(false);
  });
});

describe("minishard index and shard files", () => {
  it("round-trips a delta-encoded minishard index", () => {
    const s = spec();
    const base = shardIndexBytes(s);
    const entries = [
      { chunkId: 3n, start: base + 10, end: base + 30 },
      { chunkId: 7n, start: base + 30, end: base + 31 },
      { chunkId: 2n ** 63n + 5n, start: base + 100, end: base + 164 },
    ];
    const bytes = encodeMinishardIndex(s, entries);
    expect(bytes.byteLength).toBe(72);
    // Ids are deltas; offsets are relative to the previous chunk's end.
    const v = new DataView(bytes.buffer);
    expect(v.getBigUint64(8, true)).toBe(4n);
    expect(v.getBigUint64(24 + 8 * 2, true)).toBe(69n);
    expect(decodeMinishardIndex(s, bytes, "k")).toEqual(entries);
  });

  it("builds a shard file whose indices locate every chunk", () => {
    const s = spec({ minishardBits: 1, shardBits: 0 });
    const chunks = new Map<bigint, Uint8Array>([
      [4n, new Uint8Array([1, 2, 3])],
      [1n, new Uint8Array([9])],
      [2n, new Uint8Array([7, 7])],
    ]);
    const file = buildShardFile(s, chunks, (b) => b);
    const index = file.subarray(0, shardIndexBytes(s));
    for (const m of [0, 1]) {
      const range = minishardIndexRange(s, index, m, "k")!;
      for (const e of decodeMinishardIndex(s, file.subarray(range[0], range[1]), "k")) {
        expect(shardLocation(s, e.chunkId).minishard).toBe(m);
        expect(file.subarray(e.start, e.end)).toEqual(chunks.get(e.chunkId));
      }
    }
    expect(() => buildShardFile(spec({ minishardBits: 0, shardBits: 1 }), new Map([[0n, new Uint8Array(1)], [1n, new Uint8Array(1)]]), (b) => b)).toThrow(
      SpatialSamError,
    );
  });

  it("reports malformed indices as DataCorruption", () => {
    const s = spec();
    expect(() => decodeMinishardIndex(s, new Uint8Array(25), "x.shard")).toThrow(/not a multiple of 24/);
    const index = new Uint8Array(shardIndexBytes(s));
    new DataView(index.buffer).setBigUint64(0, 10n, true);
    expect(() => minishardIndexRange(s, index, 0, "x.shard")).toThrow(/reversed/);
    expect(() => minishardIndexRange(s, index.subarray(1), 0, "x.shard")).toThrow(/shard index is 63 bytes/);
  });
});
