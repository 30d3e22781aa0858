// compressed_segmentation: round trips on random and structured labels, the bit-width rule,
// uint64 ids above 2^53, corrupt input, and agreement with the compressed-segmentation package.

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCompressedSegmentation, encodeCompressedSegmentation, encodedBitsFor } from "#src/codecs/compressed_segmentation.ts";
import type { LabelArray } from "#src/codecs/compressed_segmentation.ts";
import { asBytes } from "#src/dtype.ts";
import { SpatialSamError } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { blobLabels, randomU64, readArray, readJson, rng, runGenerator, tempDir } from "#test/server/volume/precomputed_helpers.ts";

function roundTrip(data: LabelArray, shapeZyx: Vec3, blockXyz: Vec3): LabelArray {
  const enc = encodeCompressedSegmentation(data, shapeZyx, blockXyz);
  return decodeCompressedSegmentation(enc, data instanceof BigUint64Array ? "uint64" : "uint32", shapeZyx, blockXyz, "chunk");
}

function expectCorrupt(fn: () => unknown, field: string, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SpatialSamError);
    expect((e as SpatialSamError)._tag).toBe("DataCorruption");
    expect((e as SpatialSamError).field).toBe(field);
    expect((e as SpatialSamError).message).toMatch(message);
    return;
  }
  throw new Error("expected DataCorruption");
}

describe("encodedBitsFor", () => {
  it("rounds the index width up to 0, 1, 2, 4, 8, 16 or 32 bits", () => {
    const cases: [number, number][] = [[1, 0], [2, 1], [3, 2], [4, 2], [5, 4], [16, 4], [17, 8], [256, 8], [257, 16], [65536, 16], [65537, 32], [2 ** 20, 32]];
    for (const [n, bits] of cases) expect(encodedBitsFor(n), `n=${n}`).toBe(bits);
  });
});

describe("round trip", () => {
  const shapes: [Vec3, Vec3][] = [
    [[1, 1, 1], [8, 8, 8]],
    [[13, 17, 19], [8, 8, 8]],
    [[9, 10, 11], [4, 5, 3]],
    [[5, 33, 31], [16, 16, 16]],
    [[7, 6, 9], [1, 1, 1]],
    [[4, 4, 64], [64, 1, 2]],
  ];

  it.each(shapes)("uint32 random labels, shape %j block %j", (shape, block) => {
    const next = rng(1);
    const n = shape[0] * shape[1] * shape[2];
    for (const distinct of [1, 2, 3, 5, 300, 70000]) {
      const data = new Uint32Array(n).map(() => Math.floor(next() * distinct) * 2654435761);
      expect(roundTrip(data, shape, block)).toEqual(data);
    }
  });

  it.each(shapes)("uint64 blob labels with ids above 2^53, shape %j block %j", (shape, block) => {
    const next = rng(2);
    const ids = [0n, 2n ** 53n + 1n, 2n ** 64n - 1n, 2n ** 63n, 12345678901234567n, ...Array.from({ length: 20 }, () => randomU64(next))];
    const data = blobLabels(shape, 12, ids, 3);
    const back = roundTrip(data, shape, block);
    expect(back).toBeInstanceOf(BigUint64Array);
    expect(Buffer.from(asBytes(back)).equals(Buffer.from(asBytes(data)))).toBe(true);
  });

  it("keeps 2^20 distinct uint64 values in a single block (32-bit indices)", () => {
    const shape: Vec3 = [64, 128, 128];
    const next = rng(4);
    const base = 2n ** 60n;
    const data = new BigUint64Array(2 ** 20);
    // Distinct by construction: a shuffled permutation of base + i.
    const perm = Uint32Array.from({ length: data.length }, (_, i) => i);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    for (let i = 0; i < data.length; i++) data[i] = base + BigInt(perm[i]!);
    const enc = encodeCompressedSegmentation(data, shape, [128, 128, 64]);
    const words = new Uint32Array(enc.buffer, enc.byteOffset, enc.byteLength / 4);
    expect(words[1]! >>> 24).toBe(32); // block 0's encodedBits
    const back = decodeCompressedSegmentation(enc, "uint64", shape, [128, 128, 64], "chunk");
    expect(Buffer.from(asBytes(back)).equals(Buffer.from(asBytes(data)))).toBe(true);
  });

  it("compresses uniform blocks to a header and one table entry and shares identical tables", () => {
    const data = new Uint32Array(16 * 16 * 16).fill(7);
    const enc = encodeCompressedSegmentation(data, [16, 16, 16], [8, 8, 8]);
    // channel offset + 8 block headers (2 words each) + one shared 1-entry table.
    expect(enc.byteLength).toBe(4 * (1 + 16 + 1));
  });
});

describe("corrupt input", () => {
  const shape: Vec3 = [8, 8, 8];
  const block: Vec3 = [4, 4, 4];
  const data = new Uint32Array(512).map((_, i) => i % 5);
  const good = encodeCompressedSegmentation(data, shape, block);
  const mutate = (f: (w: Uint32Array) => void): Uint8Array => {
    const copy = good.slice();
    f(new Uint32Array(copy.buffer));
    return copy;
  };

  it("rejects an encoded-values offset past the end", () => {
    const bad = mutate((w) => (w[1 + 2 * 3 + 1] = 1_000_000));
    expectCorrupt(() => decodeCompressedSegmentation(bad, "uint32", shape, block, "s0/0-8_0-8_0-8"), "s0/0-8_0-8_0-8", /block 3 encoded values offset 1000000 is out of range/);
  });

  it("rejects a lookup-table offset past the end", () => {
    const bad = mutate((w) => (w[1 + 2 * 5] = (w[1 + 2 * 5]! & 0xff000000) | 0xfffff0));
    expectCorrupt(() => decodeCompressedSegmentation(bad, "uint32", shape, block, "k"), "k", /block 5 lookup table offset \d+ .*out of range/);
  });

  it("rejects a lookup table too short for the indices used", () => {
    // Point block 0's table at the last word: index 0 fits, indices 1..4 do not.
    const bad = mutate((w) => (w[1] = (w[1]! & 0xff000000) | (w.length - 2)));
    expectCorrupt(() => decodeCompressedSegmentation(bad, "uint32", shape, block, "k"), "k", /block 0 lookup table offset \d+ \(index \d\) is out of range/);
  });

  it("rejects invalid encodedBits, truncated headers, and ragged lengths", () => {
    const badBits = mutate((w) => (w[1] = (w[1]! & 0xffffff) | (3 << 24)));
    expectCorrupt(() => decodeCompressedSegmentation(badBits, "uint32", shape, block, "k"), "k", /invalid encodedBits 3/);
    expectCorrupt(() => decodeCompressedSegmentation(good.subarray(0, 20), "uint32", shape, block, "k"), "k", /block headers/);
    expectCorrupt(() => decodeCompressedSegmentation(good.subarray(0, 21), "uint32", shape, block, "k"), "k", /not a multiple of 4/);
    expectCorrupt(() => decodeCompressedSegmentation(new Uint8Array(0), "uint32", shape, block, "k"), "k", /empty/);
    const badChannel = mutate((w) => (w[0] = 0));
    expectCorrupt(() => decodeCompressedSegmentation(badChannel, "uint32", shape, block, "k"), "k", /channel offset 0/);
  });
});

interface CsegCase {
  name: string;
  dtype: "uint32" | "uint64";
  shapeZyx: Vec3;
  blockXyz: Vec3;
  data: string;
  encoded: string;
}

describe("against the compressed-segmentation package", () => {
  let dir: string;
  let cases: CsegCase[];
  beforeAll(() => {
    dir = tempDir("cseg");
    runGenerator("cseg", dir);
    cases = readJson<CsegCase[]>(path.join(dir, "manifest.json"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("decodes the package's encodings exactly", () => {
    expect(cases.length).toBeGreaterThanOrEqual(6);
    for (const c of cases) {
      const want = readArray(path.join(dir, c.data), c.dtype);
      const got = decodeCompressedSegmentation(new Uint8Array(readFileSync(path.join(dir, c.encoded))), c.dtype, c.shapeZyx, c.blockXyz, c.name);
      expect(Buffer.from(asBytes(got)).equals(Buffer.from(asBytes(want))), c.name).toBe(true);
    }
  });

  it("encodes byte-identically to the package, and the package decodes our encodings", () => {
    const request = [];
    for (const c of cases) {
      const data = readArray(path.join(dir, c.data), c.dtype) as LabelArray;
      const ours = encodeCompressedSegmentation(data, c.shapeZyx, c.blockXyz);
      const theirs = new Uint8Array(readFileSync(path.join(dir, c.encoded)));
      expect(Buffer.from(ours).equals(Buffer.from(theirs)), `${c.name} encoding`).toBe(true);
      writeFileSync(path.join(dir, `${c.name}.ours`), ours);
      request.push({ dtype: c.dtype, shapeZyx: c.shapeZyx, blockXyz: c.blockXyz, encoded: `${c.name}.ours`, decoded: `${c.name}.decoded` });
    }
    writeFileSync(path.join(dir, "request.json"), JSON.stringify(request));
    runGenerator("cseg-decode", path.join(dir, "request.json"));
    for (const c of cases) {
      const decoded = readFileSync(path.join(dir, `${c.name}.decoded`));
      expect(decoded.equals(readFileSync(path.join(dir, c.data))), c.name).toBe(true);
    }
  });
});
