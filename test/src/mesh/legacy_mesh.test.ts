// The legacy mesh fragment codec and segment id parsing: byte layout as Neuroglancer decodes it
// (little-endian uint32 count, float32 xyz, uint32 indices), and every malformed input refused by field.
import { describe, expect, it } from "vitest";
import { decodeLegacyFragment, encodeLegacyFragment, parseSegmentId } from "#src/mesh/legacy_mesh.ts";

describe("legacy mesh fragments", () => {
  it("lays out count, vertices and triangles little-endian, and decodes back", () => {
    const mesh = { positionsXyz: Float32Array.of(0, 0, 0, 1.5, 0, 0, 0, 2.25, 0, 0, 0, -3), indices: Uint32Array.of(0, 1, 2, 0, 2, 3) };
    const bytes = encodeLegacyFragment(mesh);
    expect(bytes.byteLength).toBe(4 + 12 * 4 + 6 * 4);
    const dv = new DataView(bytes.buffer);
    expect(dv.getUint32(0, true)).toBe(4);
    expect(dv.getFloat32(4 + 3 * 4, true)).toBe(1.5);
    expect(dv.getUint32(4 + 12 * 4 + 5 * 4, true)).toBe(3);
    expect(decodeLegacyFragment(bytes)).toEqual(mesh);
    expect(decodeLegacyFragment(encodeLegacyFragment({ positionsXyz: new Float32Array(0), indices: new Uint32Array(0) })).indices).toHaveLength(0);
  });

  it("refuses truncated fragments and out-of-range indices, naming fragment", () => {
    const good = encodeLegacyFragment({ positionsXyz: Float32Array.of(0, 0, 0, 1, 0, 0, 0, 1, 0), indices: Uint32Array.of(0, 1, 2) });
    expect(() => decodeLegacyFragment(good.subarray(0, 3))).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field: "fragment" }));
    expect(() => decodeLegacyFragment(good.subarray(0, good.byteLength - 4))).toThrow(expect.objectContaining({ field: "fragment" }));
    const bad = encodeLegacyFragment({ positionsXyz: Float32Array.of(0, 0, 0, 1, 0, 0, 0, 1, 0), indices: Uint32Array.of(0, 1, 3) });
    expect(() => decodeLegacyFragment(bad)).toThrow(expect.objectContaining({ field: "fragment" }));
  });
});

describe("parseSegmentId", () => {
  it("reads decimal uint64 ids exactly, beyond 2^53", () => {
    expect(parseSegmentId("0")).toBe(0n);
    expect(parseSegmentId("9007199254740993")).toBe(2n ** 53n + 1n);
    expect(parseSegmentId("18446744073709551615")).toBe(2n ** 64n - 1n);
  });

  it.each(["", "abc", "-1", "1.5", "1e3", " 1", "0x10", "18446744073709551616", "123456789012345678901"])("refuses %j naming the field", (text) => {
    expect(() => parseSegmentId(text, "segments[0]")).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field: "segments[0]" }));
  });
});
