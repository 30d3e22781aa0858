// The neuroglancer_uint64_sharded_v1 layout, written from neuroglancer's sharded.md and volume.md:
// compressed Morton chunk ids, the identity / murmurhash3_x86_128 hashes that pick shard and
// minishard, the delta-encoded minishard index, and assembly of a whole shard file.
// Pure byte logic; compression (gzip) is passed in by the caller so this stays environment-neutral.

import { dataCorruption, invalidArgument } from "#src/errors.ts";
import type { ShardingSpec } from "#src/volume/precomputed_info.ts";
import type { Vec3 } from "#src/volume/types.ts";

const U64_MASK = (1n << 64n) - 1n;

/**
 * The "compressed Morton code" of grid cell `gridXyz` in a grid of `gridShapeXyz` cells: bits are
 * interleaved x, y, z from the least significant up, skipping a dimension once its coordinates
 * have no more bits.
 */
export function compressedMortonCode(gridXyz: Vec3, gridShapeXyz: Vec3): bigint {
  let code = 0n;
  let j = 0n;
  for (let i = 0; i < 64; i++) {
    let any = false;
    for (let d = 0; d < 3; d++) {
      if (2 ** i < gridShapeXyz[d]!) {
        any = true;
        if (Math.floor(gridXyz[d]! / 2 ** i) % 2 === 1) code |= 1n << j;
        j++;
      }
    }
    if (!any) break;
  }
  if (j > 64n) throw invalidArgument("chunk_sizes", `a ${gridShapeXyz.join("x")} chunk grid needs ${j} > 64 Morton bits`);
  return code;
}

const rotl32 = (x: number, r: number) => (x << r) | (x >>> (32 - r));

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/**
 * MurmurHash3_x86_128 with seed 0 of the 8-byte little-endian encoding of `value`, returning the
 * low 64 bits of the hash as sharded.md specifies. Eight bytes are all tail (no 16-byte body).
 */
export function murmurHash3X86_128Low64(value: bigint): bigint {
  const c1 = 0x239b961b;
  const c2 = 0xab0e9789;
  const c3 = 0x38b34ae5;
  let h1 = 0;
  let h2 = 0;
  let h3 = 0;
  let h4 = 0;
  let k2 = Number((value >> 32n) & 0xffffffffn);
  k2 = Math.imul(k2, c2);
  k2 = rotl32(k2, 16);
  k2 = Math.imul(k2, c3);
  h2 ^= k2;
  let k1 = Number(value & 0xffffffffn);
  k1 = Math.imul(k1, c1);
  k1 = rotl32(k1, 15);
  k1 = Math.imul(k1, c2);
  h1 ^= k1;

  const len = 8;
  h1 ^= len;
  h2 ^= len;
  h3 ^= len;
  h4 ^= len;
  h1 = (h1 + h2 + h3 + h4) | 0;
  h2 = (h2 + h1) | 0;
  h3 = (h3 + h1) | 0;
  h4 = (h4 + h1) | 0;
  h1 = fmix32(h1);
  h2 = fmix32(h2);
  h3 = fmix32(h3);
  h4 = fmix32(h4);
  h1 = (h1 + h2 + h3 + h4) | 0;
  h2 = (h2 + h1) | 0;
  return (BigInt(h2 >>> 0) << 32n) | BigInt(h1 >>> 0);
}

export interface ShardLocation {
  shard: number;
  minishard: number;
}

/** Which shard and minishard hold chunk `chunkId`. */
export function shardLocation(spec: ShardingSpec, chunkId: bigint): ShardLocation {
  const shifted = (chunkId & U64_MASK) >> BigInt(spec.preshiftBits);
  const hashed = spec.hash === "identity" ? shifted : murmurHash3X86_128Low64(shifted);
  const minishard = Number(hashed & ((1n << BigInt(spec.minishardBits)) - 1n));
  const shard = Number((hashed >> BigInt(spec.minishardBits)) & ((1n << BigInt(spec.shardBits)) - 1n));
  return { shard, minishard };
}

/** `<shard>.shard`: lowercase hex, zero-padded to ceil(shard_bits / 4) digits. */
export function shardFileName(spec: ShardingSpec, shard: number): string {
  return `${shard.toString(16).padStart(Math.ceil(spec.shardBits / 4), "0")}.shard`;
}

/** Bytes of the fixed-size shard index at the start of every shard file. */
export function shardIndexBytes(spec: ShardingSpec): number {
  return 2 ** spec.minishardBits * 16;
}

function safeNumber(v: bigint, field: string, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw dataCorruption(field, `${what} ${v} is out of range`);
  return Number(v);
}

/**
 * The [start, end) byte range, within the shard file, of minishard `minishard`'s index, read from
 * the shard index bytes; undefined when the minishard is empty.
 */
export function minishardIndexRange(spec: ShardingSpec, shardIndex: Uint8Array, minishard: number, field: string): [number, number] | undefined {
  if (shardIndex.byteLength !== shardIndexBytes(spec)) {
    throw dataCorruption(field, `shard index is ${shardIndex.byteLength} bytes, expected ${shardIndexBytes(spec)}`);
  }
  const view = new DataView(shardIndex.buffer, shardIndex.byteOffset, shardIndex.byteLength);
  const start = view.getBigUint64(minishard * 16, true);
  const end = view.getBigUint64(minishard * 16 + 8, true);
  if (end < start) throw dataCorruption(field, `minishard ${minishard} index range [${start}, ${end}) is reversed`);
  if (end === start) return undefined;
  const base = shardIndexBytes(spec);
  return [base + safeNumber(start, field, "minishard index start"), base + safeNumber(end, field, "minishard index end")];
}

export interface MinishardEntry {
  chunkId: bigint;
  /** Absolute [start, end) byte range of the chunk's (encoded) data in the shard file. */
  start: number;
  end: number;
}

/** Decodes a (decompressed) minishard index: a C-order [3, n] uint64le array, delta encoded. */
export function decodeMinishardIndex(spec: ShardingSpec, bytes: Uint8Array, field: string): MinishardEntry[] {
  if (bytes.byteLength % 24 !== 0) throw dataCorruption(field, `minishard index is ${bytes.byteLength} bytes, not a multiple of 24`);
  const n = bytes.byteLength / 24;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const entries: MinishardEntry[] = [];
  let chunkId = 0n;
  let offset = BigInt(shardIndexBytes(spec));
  for (let i = 0; i < n; i++) {
    chunkId = (chunkId + view.getBigUint64(i * 8, true)) & U64_MASK;
    const start = offset + view.getBigUint64((n + i) * 8, true);
    const size = view.getBigUint64((2 * n + i) * 8, true);
    offset = start + size;
    entries.push({ chunkId, start: safeNumber(start, field, "chunk start"), end: safeNumber(offset, field, "chunk end") });
  }
  return entries;
}

/** Encodes a minishard index for entries sorted by chunk id, with absolute offsets. */
export function encodeMinishardIndex(spec: ShardingSpec, entries: readonly MinishardEntry[]): Uint8Array {
  const n = entries.length;
  const out = new Uint8Array(24 * n);
  const view = new DataView(out.buffer);
  let prevId = 0n;
  let prevEnd = shardIndexBytes(spec);
  for (const [i, e] of entries.entries()) {
    view.setBigUint64(i * 8, e.chunkId - prevId, true);
    view.setBigUint64((n + i) * 8, BigInt(e.start - prevEnd), true);
    view.setBigUint64((2 * n + i) * 8, BigInt(e.end - e.start), true);
    prevId = e.chunkId;
    prevEnd = e.end;
  }
  return out;
}

/**
 * Assembles one complete shard file from its chunks (already encoded, e.g. raw or
 * compressed_segmentation bytes) keyed by chunk id. `compress` applies the spec's gzip encodings.
 * Layout: shard index, then per minishard its chunks' data in id order followed by its index.
 */
export function buildShardFile(
  spec: ShardingSpec,
  chunks: ReadonlyMap<bigint, Uint8Array>,
  compress: (bytes: Uint8Array) => Uint8Array,
): Uint8Array {
  const numMinishards = 2 ** spec.minishardBits;
  const byMinishard: bigint[][] = Array.from({ length: numMinishards }, () => []);
  let shard: number | undefined;
  for (const id of chunks.keys()) {
    const loc = shardLocation(spec, id);
    if (shard !== undefined && loc.shard !== shard) {
      throw invalidArgument("chunks", `chunk ids ${id} and others fall in different shards (${loc.shard} vs ${shard})`);
    }
    shard = loc.shard;
    byMinishard[loc.minishard]!.push(id);
  }
  const indexBytes = shardIndexBytes(spec);
  const parts: Uint8Array[] = [];
  const shardIndex = new Uint8Array(indexBytes);
  const indexView = new DataView(shardIndex.buffer);
  parts.push(shardIndex);
  let offset = indexBytes;
  for (let m = 0; m < numMinishards; m++) {
    const ids = byMinishard[m]!.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const entries: MinishardEntry[] = [];
    for (const id of ids) {
      const raw = chunks.get(id)!;
      const data = spec.dataEncoding === "gzip" ? compress(raw) : raw;
      entries.push({ chunkId: id, start: offset, end: offset + data.byteLength });
      parts.push(data);
      offset += data.byteLength;
    }
    if (entries.length > 0) {
      const index = encodeMinishardIndex(spec, entries);
      const encoded = spec.minishardIndexEncoding === "gzip" ? compress(index) : index;
      indexView.setBigUint64(m * 16, BigInt(offset - indexBytes), true);
      indexView.setBigUint64(m * 16 + 8, BigInt(offset - indexBytes + encoded.byteLength), true);
      parts.push(encoded);
      offset += encoded.byteLength;
    }
  }
  const out = new Uint8Array(offset);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
