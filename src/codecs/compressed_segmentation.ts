// Neuroglancer's compressed_segmentation codec (uint32/uint64 labels), written from the format
// description in neuroglancer's sliceview/compressed_segmentation/README.md, single-channel form.
//
// Layout: a chunk starts with one uint32 per channel giving the channel's start in 32-bit words;
// all offsets inside a channel are in words from that start. The channel holds gx*gy*gz 64-bit block
// headers (x fastest), then per block its packed indices and its lookup table of distinct values.
// Arrays here are C-order zyx, i.e. x fastest, which is exactly the order the format indexes by, so
// no transposition is needed. uint64 labels are handled as pairs of uint32 words (lo, hi), never
// as doubles or bigints, so ids above 2^53 survive and the hot loops stay on small integers.

import { dataCorruption, invalidArgument } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";

export type LabelArray = Uint32Array | BigUint64Array;

const ALLOWED_BITS = new Set([0, 1, 2, 4, 8, 16, 32]);
// lookupTableOffset is a 24-bit field of the block header.
const MAX_TABLE_OFFSET = 0xffffff;

/** Bits per index for `n` distinct values: 0, 1, 2, 4, 8, 16 or 32. */
export function encodedBitsFor(n: number): number {
  if (n <= 1) return 0;
  let bits = 1;
  while (2 ** bits < n) bits *= 2;
  return bits;
}

function wordsOf(data: LabelArray): { words: Uint32Array; wordsPerValue: 1 | 2 } {
  const words = new Uint32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  return { words, wordsPerValue: data instanceof BigUint64Array ? 2 : 1 };
}

function checkShape(shapeZyx: Vec3, blockSizeXyz: Vec3, length: number): void {
  for (const [i, v] of shapeZyx.entries()) {
    if (!Number.isInteger(v) || v < 0) throw invalidArgument(`shapeZyx[${i}]`, `expected a non-negative integer, got ${v}`);
  }
  for (const [i, v] of blockSizeXyz.entries()) {
    if (!Number.isInteger(v) || v < 1) throw invalidArgument(`blockSizeXyz[${i}]`, `expected a positive integer, got ${v}`);
  }
  const n = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
  if (n !== length) throw invalidArgument("data", `has ${length} elements but shape ${shapeZyx.join("x")} needs ${n}`);
}

/**
 * Open-addressing hash set of (lo, hi) word pairs mapping each distinct value to its insertion
 * index. Reused across blocks; `clear` only touches the slots the last block used.
 */
class PairTable {
  private keysLo: Uint32Array;
  private keysHi: Uint32Array;
  private slots: Int32Array; // insertion index, -1 = empty
  private used: Int32Array;
  private mask: number;
  size = 0;
  readonly valuesLo: Uint32Array;
  readonly valuesHi: Uint32Array;

  constructor(maxDistinct: number) {
    let cap = 16;
    while (cap < maxDistinct * 2) cap *= 2;
    this.mask = cap - 1;
    this.keysLo = new Uint32Array(cap);
    this.keysHi = new Uint32Array(cap);
    this.slots = new Int32Array(cap).fill(-1);
    this.used = new Int32Array(maxDistinct);
    this.valuesLo = new Uint32Array(maxDistinct);
    this.valuesHi = new Uint32Array(maxDistinct);
  }

  indexOf(lo: number, hi: number): number {
    let h = (Math.imul(lo, 0x9e3779b1) ^ Math.imul(hi, 0x85ebca77)) >>> 0;
    h = (h ^ (h >>> 15)) & this.mask;
    for (;;) {
      const s = this.slots[h]!;
      if (s < 0) {
        const idx = this.size++;
        this.slots[h] = idx;
        this.keysLo[h] = lo;
        this.keysHi[h] = hi;
        this.used[idx] = h;
        this.valuesLo[idx] = lo;
        this.valuesHi[idx] = hi;
        return idx;
      }
      if (this.keysLo[h] === lo && this.keysHi[h] === hi) return s;
      h = (h + 1) & this.mask;
    }
  }

  clear(): void {
    for (let i = 0; i < this.size; i++) this.slots[this.used[i]!] = -1;
    this.size = 0;
  }
}

/** A growable Uint32Array for the encoder's output. */
class WordBuffer {
  words = new Uint32Array(1024);
  length = 0;
  reserve(n: number): void {
    if (this.length + n <= this.words.length) return;
    let cap = this.words.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint32Array(cap);
    next.set(this.words.subarray(0, this.length));
    this.words = next;
  }
}

/**
 * Encodes a C-order zyx label array of `shapeZyx` into the one-channel precomputed
 * compressed_segmentation form (channel offset header included). Lookup tables are sorted
 * ascending and identical tables are shared between blocks; padding positions of partial blocks
 * hold index 0.
 */
export function encodeCompressedSegmentation(data: LabelArray, shapeZyx: Vec3, blockSizeXyz: Vec3): Uint8Array {
  checkShape(shapeZyx, blockSizeXyz, data.length);
  const { words: input, wordsPerValue } = wordsOf(data);
  const [sz, sy, sx] = shapeZyx;
  const [bx, by, bz] = blockSizeXyz;
  const gx = Math.ceil(sx / bx);
  const gy = Math.ceil(sy / by);
  const gz = Math.ceil(sz / bz);
  const blockVoxels = bx * by * bz;
  const numBlocks = gx * gy * gz;

  const out = new WordBuffer();
  // Word 0: the channel offset; the channel starts at word 1 and all offsets below are relative to it.
  const base = 1;
  out.reserve(base + numBlocks * 2);
  out.words[0] = base;
  out.length = base + numBlocks * 2;

  const table = new PairTable(Math.min(blockVoxels, Math.max(1, sx * sy * sz)));
  const insertionIndex = new Uint32Array(blockVoxels);
  const tableCache = new Map<string, number>();
  let order = new Uint32Array(0);
  let rank = new Uint32Array(0);

  let block = 0;
  for (let gzi = 0; gzi < gz; gzi++) {
    const z0 = gzi * bz;
    const ez = Math.min(bz, sz - z0);
    for (let gyi = 0; gyi < gy; gyi++) {
      const y0 = gyi * by;
      const ey = Math.min(by, sy - y0);
      for (let gxi = 0; gxi < gx; gxi++, block++) {
        const x0 = gxi * bx;
        const ex = Math.min(bx, sx - x0);

        // Pass 1: distinct values in insertion order, and each voxel's insertion index.
        table.clear();
        let lastLo = -1;
        let lastHi = -1;
        let lastIdx = -1;
        for (let z = 0; z < ez; z++) {
          for (let y = 0; y < ey; y++) {
            const rowIn = ((z0 + z) * sy + (y0 + y)) * sx + x0;
            const rowBlock = (z * by + y) * bx;
            for (let x = 0; x < ex; x++) {
              const w = (rowIn + x) * wordsPerValue;
              const lo = input[w]!;
              const hi = wordsPerValue === 2 ? input[w + 1]! : 0;
              if (lo !== lastLo || hi !== lastHi) {
                lastIdx = table.indexOf(lo, hi);
                lastLo = lo;
                lastHi = hi;
              }
              insertionIndex[rowBlock + x] = lastIdx;
            }
          }
        }

        // Sort the table ascending (hi, lo) and map insertion index -> rank.
        const n = table.size;
        if (order.length < n) {
          order = new Uint32Array(n);
          rank = new Uint32Array(n);
        }
        const ord = order.subarray(0, n);
        for (let i = 0; i < n; i++) ord[i] = i;
        const vLo = table.valuesLo;
        const vHi = table.valuesHi;
        ord.sort((a, b) => vHi[a]! - vHi[b]! || vLo[a]! - vLo[b]!);
        for (let i = 0; i < n; i++) rank[ord[i]!] = i;

        // Encoded values, padded to the whole block (positions outside the chunk stay 0).
        const bits = encodedBitsFor(n);
        const valuesOffset = out.length - base;
        if (bits > 0) {
          const nWords = Math.ceil((bits * blockVoxels) / 32);
          out.reserve(nWords);
          const w = out.words;
          const start = out.length;
          w.fill(0, start, start + nWords);
          for (let z = 0; z < ez; z++) {
            for (let y = 0; y < ey; y++) {
              const rowBlock = (z * by + y) * bx;
              for (let x = 0; x < ex; x++) {
                const p = rowBlock + x;
                const bitOffset = p * bits;
                w[start + (bitOffset >>> 5)]! |= rank[insertionIndex[p]!]! << (bitOffset & 31);
              }
            }
          }
          out.length += nWords;
        }

        // Lookup table, shared with an earlier block when identical.
        let key = "";
        for (let i = 0; i < n; i++) {
          const j = ord[i]!;
          key += wordsPerValue === 2 ? `${vLo[j]},${vHi[j]};` : `${vLo[j]};`;
        }
        let tableOffset = tableCache.get(key);
        if (tableOffset === undefined) {
          tableOffset = out.length - base;
          out.reserve(n * wordsPerValue);
          const w = out.words;
          for (let i = 0; i < n; i++) {
            const j = ord[i]!;
            w[out.length++] = vLo[j]!;
            if (wordsPerValue === 2) w[out.length++] = vHi[j]!;
          }
          tableCache.set(key, tableOffset);
        }
        if (tableOffset > MAX_TABLE_OFFSET) {
          throw invalidArgument("shapeZyx", "chunk too large for compressed_segmentation (lookup table offset exceeds 24 bits)");
        }
        out.words[base + 2 * block] = tableOffset | (bits << 24);
        out.words[base + 2 * block + 1] = valuesOffset;
      }
    }
  }
  return new Uint8Array(out.words.buffer, 0, out.length * 4).slice();
}

/**
 * Copies one block's values to `out` (C-order zyx, `wordsPerValue` words per voxel, the block's
 * first voxel at element `outStart`) and returns the largest lookup-table index it used.
 * Specialised per index width and value size: this loop is the decoder's whole cost.
 */
function decodeBlock(
  words: Uint32Array,
  valuesStart: number,
  tableStart: number,
  bits: number,
  wordsPerValue: 1 | 2,
  out: Uint32Array,
  bx: number,
  by: number,
  ex: number,
  ey: number,
  ez: number,
  outStart: number,
  sy: number,
  sx: number,
): number {
  if (bits === 0) {
    const lo = words[tableStart]!;
    const hi = wordsPerValue === 2 ? words[tableStart + 1]! : 0;
    for (let z = 0; z < ez; z++) {
      for (let y = 0; y < ey; y++) {
        const o = outStart + (z * sy + y) * sx;
        if (wordsPerValue === 1) {
          out.fill(lo, o, o + ex);
        } else {
          for (let x = 0, d = 2 * o; x < ex; x++, d += 2) {
            out[d] = lo;
            out[d + 1] = hi;
          }
        }
      }
    }
    return 0;
  }
  const mask = bits === 32 ? 0xffffffff : (1 << bits) - 1;
  let maxIndex = 0;
  for (let z = 0; z < ez; z++) {
    for (let y = 0; y < ey; y++) {
      let bitOffset = (z * by + y) * bx * bits;
      const o = outStart + (z * sy + y) * sx;
      if (wordsPerValue === 1) {
        for (let x = 0; x < ex; x++, bitOffset += bits) {
          const idx = ((words[valuesStart + (bitOffset >>> 5)]! >>> (bitOffset & 31)) & mask) >>> 0;
          if (idx > maxIndex) maxIndex = idx;
          out[o + x] = words[tableStart + idx]!;
        }
      } else {
        for (let x = 0, d = 2 * o; x < ex; x++, bitOffset += bits, d += 2) {
          const idx = ((words[valuesStart + (bitOffset >>> 5)]! >>> (bitOffset & 31)) & mask) >>> 0;
          if (idx > maxIndex) maxIndex = idx;
          const src = tableStart + 2 * idx;
          out[d] = words[src]!;
          out[d + 1] = words[src + 1]!;
        }
      }
    }
  }
  return maxIndex;
}

/**
 * Decodes one-channel precomputed compressed_segmentation bytes into a C-order zyx array of
 * `shapeZyx`. Every offset is bounds-checked; corrupt input throws DataCorruption naming `field`
 * (the chunk key or file).
 */
export function decodeCompressedSegmentation(
  bytes: Uint8Array,
  dtype: "uint32" | "uint64",
  shapeZyx: Vec3,
  blockSizeXyz: Vec3,
  field: string,
): LabelArray {
  const wordsPerValue = dtype === "uint64" ? 2 : 1;
  const [sz, sy, sx] = shapeZyx;
  const numVoxels = sx * sy * sz;
  checkShape(shapeZyx, blockSizeXyz, numVoxels);
  const outWords = new Uint32Array(numVoxels * wordsPerValue);
  if (bytes.byteLength % 4 !== 0) throw dataCorruption(field, `compressed_segmentation length ${bytes.byteLength} is not a multiple of 4`);
  const words =
    bytes.byteOffset % 4 === 0
      ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
      : new Uint32Array(bytes.slice().buffer);
  const total = words.length;
  if (total < 1) throw dataCorruption(field, "compressed_segmentation data is empty");
  const base = words[0]!;
  const [bx, by, bz] = blockSizeXyz;
  const gx = Math.ceil(sx / bx);
  const gy = Math.ceil(sy / by);
  const gz = Math.ceil(sz / bz);
  if (base < 1 || base + 2 * gx * gy * gz > total) {
    throw dataCorruption(field, `compressed_segmentation block headers (channel offset ${base}) exceed the ${total}-word data`);
  }

  let block = 0;
  for (let gzi = 0; gzi < gz; gzi++) {
    const z0 = gzi * bz;
    const ez = Math.min(bz, sz - z0);
    for (let gyi = 0; gyi < gy; gyi++) {
      const y0 = gyi * by;
      const ey = Math.min(by, sy - y0);
      for (let gxi = 0; gxi < gx; gxi++, block++) {
        const x0 = gxi * bx;
        const ex = Math.min(bx, sx - x0);
        const h0 = words[base + 2 * block]!;
        const tableStart = base + (h0 & 0xffffff);
        const bits = h0 >>> 24;
        const valuesStart = base + words[base + 2 * block + 1]!;
        if (!ALLOWED_BITS.has(bits)) throw dataCorruption(field, `block ${block} has invalid encodedBits ${bits}`);
        // Only positions inside the chunk are read, so only their words need to exist.
        const lastPos = ex - 1 + bx * (ey - 1 + by * (ez - 1));
        const valueWords = Math.ceil(((lastPos + 1) * bits) / 32);
        if (valuesStart + valueWords > total) {
          throw dataCorruption(field, `block ${block} encoded values offset ${valuesStart - base} is out of range`);
        }
        if (tableStart + wordsPerValue > total) {
          throw dataCorruption(field, `block ${block} lookup table offset ${tableStart - base} is out of range`);
        }
        // The table's length is not stored: check against the largest index actually used. Reads
        // past the end yield undefined (stored as 0) until the check below throws.
        const maxIndex = decodeBlock(words, valuesStart, tableStart, bits, wordsPerValue, outWords, bx, by, ex, ey, ez, ((z0 * sy + y0) * sx + x0), sy, sx);
        if (tableStart + (maxIndex + 1) * wordsPerValue > total) {
          throw dataCorruption(field, `block ${block} lookup table offset ${tableStart - base} (index ${maxIndex}) is out of range`);
        }
      }
    }
  }
  return wordsPerValue === 2 ? new BigUint64Array(outWords.buffer) : outWords;
}
