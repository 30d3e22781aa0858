// Box validation, chunk ranges, intersection and the strided copy, against brute-force references.

import { describe, expect, it } from "vitest";
import { chunkIndices, chunkRange, copyBox, fillBox, intersectBoxes, validateBox } from "#src/geometry.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";

const box = (offsetZyx: Vec3, shapeZyx: Vec3): Box3 => ({ offsetZyx, shapeZyx });

describe("validateBox", () => {
  const level: Vec3 = [10, 20, 30];
  it("accepts boxes inside the level, including empty ones and the far edge", () => {
    expect(() => validateBox(box([0, 0, 0], [10, 20, 30]), level)).not.toThrow();
    expect(() => validateBox(box([10, 20, 30], [0, 0, 0]), level)).not.toThrow();
    expect(() => validateBox(box([5, 5, 5], [5, 15, 25]), level)).not.toThrow();
  });
  it.each([
    ["negative offset", box([-1, 0, 0], [1, 1, 1]), "box.offset"],
    ["fractional offset", box([0.5, 0, 0], [1, 1, 1]), "box.offset"],
    ["offset past the end", box([11, 0, 0], [0, 1, 1]), "box.offset"],
    ["negative (inverted) shape", box([5, 5, 5], [-2, 1, 1]), "box.shape"],
    ["shape past the end", box([5, 0, 0], [6, 1, 1]), "box.shape"],
    ["two-element shape", { offsetZyx: [0, 0, 0], shapeZyx: [1, 1] } as unknown as Box3, "box.shape"],
    ["NaN", box([0, 0, 0], [Number.NaN, 1, 1]), "box.shape"],
  ])("refuses a %s, naming %s", (_, b, field) => {
    expect(() => validateBox(b, level)).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field }));
  });
  it("honours the level offset", () => {
    expect(() => validateBox(box([100, 100, 100], [10, 20, 30]), level, [100, 100, 100])).not.toThrow();
    expect(() => validateBox(box([99, 100, 100], [1, 1, 1]), level, [100, 100, 100])).toThrow(expect.objectContaining({ field: "box.offset" }));
  });
  it("refuses boxes over the voxel limit", () => {
    const big: Vec3 = [2 ** 14, 2 ** 13, 2 ** 13];
    expect(() => validateBox(box([0, 0, 0], big), big)).toThrow(expect.objectContaining({ field: "box.shape", message: expect.stringMatching(/exceeds the limit/) }));
    expect(() => validateBox(box([0, 0, 0], [4, 4, 4]), [4, 4, 4], [0, 0, 0], 63)).toThrow(expect.objectContaining({ field: "box.shape" }));
  });
});

describe("chunkRange / intersectBoxes", () => {
  it("matches brute force over many boxes and grid origins", () => {
    const chunk: Vec3 = [3, 4, 5];
    for (let t = 0; t < 200; t++) {
      const origin = [0, 1, 2].map(() => Math.floor(Math.random() * 7) - 3) as Vec3;
      const off = [0, 1, 2].map((d) => origin[d]! + Math.floor(Math.random() * 20)) as Vec3;
      const shp = [0, 1, 2].map(() => Math.floor(Math.random() * 12)) as Vec3;
      const b = box(off, shp);
      const { startZyx, endZyx } = chunkRange(b, chunk, origin);
      const got = new Set([...chunkIndices(startZyx, endZyx)].map((i) => i.join()));
      const want = new Set<string>();
      for (let z = -2; z < 15; z++)
        for (let y = -2; y < 15; y++)
          for (let x = -2; x < 15; x++) {
            const cb = box([origin[0] + z * chunk[0], origin[1] + y * chunk[1], origin[2] + x * chunk[2]], chunk);
            if (intersectBoxes(cb, b) !== undefined) want.add([z, y, x].join());
          }
      expect(got).toEqual(want);
    }
  });
  it("intersects", () => {
    expect(intersectBoxes(box([0, 0, 0], [4, 4, 4]), box([2, 3, 1], [5, 5, 5]))).toEqual(box([2, 3, 1], [2, 1, 3]));
    expect(intersectBoxes(box([0, 0, 0], [4, 4, 4]), box([4, 0, 0], [1, 1, 1]))).toBeUndefined();
  });
});

describe("copyBox", () => {
  const reference = (src: Float64Array, ss: Vec3, s0: Vec3, dst: Float64Array, ds: Vec3, d0: Vec3, n: Vec3) => {
    for (let z = 0; z < n[0]; z++)
      for (let y = 0; y < n[1]; y++)
        for (let x = 0; x < n[2]; x++) {
          dst[((d0[0] + z) * ds[1] + d0[1] + y) * ds[2] + d0[2] + x] = src[((s0[0] + z) * ss[1] + s0[1] + y) * ss[2] + s0[2] + x]!;
        }
  };
  it("matches element-wise copying for random sub-boxes (including whole planes and rows)", () => {
    for (let t = 0; t < 300; t++) {
      const ss = [0, 1, 2].map(() => 1 + Math.floor(Math.random() * 6)) as Vec3;
      const ds = [0, 1, 2].map(() => 1 + Math.floor(Math.random() * 6)) as Vec3;
      const full = t % 3 === 0;
      const n = full ? ([Math.min(ss[0], ds[0]), ...(ss.slice(1) as [number, number])] as Vec3) : ([0, 1, 2].map((d) => Math.floor(Math.random() * (Math.min(ss[d]!, ds[d]!) + 1))) as Vec3);
      if (full) {
        ds[1] = ss[1];
        ds[2] = ss[2];
      }
      const s0 = [0, 1, 2].map((d) => Math.floor(Math.random() * (ss[d]! - n[d]! + 1))) as Vec3;
      const d0 = [0, 1, 2].map((d) => Math.floor(Math.random() * (ds[d]! - n[d]! + 1))) as Vec3;
      const src = Float64Array.from({ length: ss[0] * ss[1] * ss[2] }, (_, i) => i + 0.5);
      const a = new Float64Array(ds[0] * ds[1] * ds[2]).fill(-1);
      const b = a.slice();
      copyBox(src, ss, s0, a, ds, d0, n);
      reference(src, ss, s0, b, ds, d0, n);
      expect(a).toEqual(b);
    }
  });
  it.each([
    ["uint8 (byte words)", (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7) % 256)],
    ["uint16 (offset views)", (n: number) => new Uint16Array(n + 3).map((_, i) => i * 3).subarray(3)],
    ["float32", (n: number) => Float32Array.from({ length: n }, (_, i) => i / 3)],
    // 0xFFF4... is a signalling-NaN bit pattern as a double: it must survive bit for bit.
    ["uint64 NaN-like ids", (n: number) => BigUint64Array.from({ length: n }, (_, i) => 0xfff4_0000_0000_0000n + BigInt(i) * 0x1_0000_0001n)],
  ])("matches element-wise copying for %s, short and long runs", (_, make) => {
    for (let t = 0; t < 100; t++) {
      const long = t % 2 === 0;
      const ss = [1 + (t % 3), 1 + ((t * 5) % 7), long ? 300 + (t % 5) : 1 + ((t * 3) % 9)] as Vec3;
      const ds = [2 + (t % 2), 2 + ((t * 3) % 6), ss[2] + (t % 4)] as Vec3;
      const n = [0, 1, 2].map((d) => 1 + Math.floor(Math.random() * Math.min(ss[d]!, ds[d]!))) as Vec3;
      const s0 = [0, 1, 2].map((d) => Math.floor(Math.random() * (ss[d]! - n[d]! + 1))) as Vec3;
      const d0 = [0, 1, 2].map((d) => Math.floor(Math.random() * (ds[d]! - n[d]! + 1))) as Vec3;
      const src = make(ss[0] * ss[1] * ss[2]);
      const a = make(ds[0] * ds[1] * ds[2]);
      const b = a.slice() as typeof a;
      copyBox(src, ss, s0, a, ds, d0, n);
      for (let z = 0; z < n[0]; z++)
        for (let y = 0; y < n[1]; y++)
          for (let x = 0; x < n[2]; x++) b[((d0[0] + z) * ds[1] + d0[1] + y) * ds[2] + d0[2] + x] = src[((s0[0] + z) * ss[1] + s0[1] + y) * ss[2] + s0[2] + x]!;
      expect(a).toEqual(b);
    }
  });
  it("copies uint64 values above 2^53 exactly", () => {
    const src = BigUint64Array.from([2n ** 64n - 1n, 2n ** 53n + 1n, 3n, 4n]);
    const dst = new BigUint64Array(8);
    copyBox(src, [1, 2, 2], [0, 0, 0], dst, [2, 2, 2], [1, 0, 0], [1, 2, 2]);
    expect([...dst.subarray(4)]).toEqual([...src]);
  });
  it("refuses out-of-range boxes", () => {
    expect(() => copyBox(new Uint8Array(8), [2, 2, 2], [1, 0, 0], new Uint8Array(8), [2, 2, 2], [0, 0, 0], [2, 1, 1])).toThrow(RangeError);
  });
  it("fillBox fills only the sub-box", () => {
    const a = new Uint16Array(27);
    fillBox(a, [3, 3, 3], [1, 1, 1], [2, 1, 2], 9);
    const want = new Uint16Array(27);
    for (const [z, y, x] of [[1, 1, 1], [1, 1, 2], [2, 1, 1], [2, 1, 2]]) want[z! * 9 + y! * 3 + x!] = 9;
    expect(a).toEqual(want);
  });
});
