// encodeNpy: files NumPy itself reads back (spawned models/.venv Python) with the same dtype, shape
// and values, and field-named refusals of inconsistent input.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { encodeNpy } from "#src/npy.ts";
import { expectError } from "#test/helpers/expect_error.ts";

const python = join(import.meta.dirname, "..", "..", "models", ".venv", "bin", "python");
const dir = mkdtempSync(join(tmpdir(), "npy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("encodeNpy", () => {
  it("writes files numpy loads with the same dtype, shape and values", () => {
    const cases = [
      { name: "u8", dtype: "uint8", shape: [2, 3, 4], data: Uint8Array.from({ length: 24 }, (_, i) => (i * 37) % 256) },
      { name: "u64", dtype: "uint64", shape: [3, 5], data: BigUint64Array.from({ length: 15 }, (_, i) => BigInt(i) * 0x1_0000_0001n) },
      { name: "f32", dtype: "float32", shape: [7], data: Float32Array.from({ length: 7 }, (_, i) => i / 3 - 1) },
      { name: "empty", dtype: "int16", shape: [0, 4], data: new Int16Array(0) },
    ] as const;
    for (const c of cases) writeFileSync(join(dir, `${c.name}.npy`), encodeNpy(c.dtype, c.shape, c.data));
    const script = `
import json, sys, numpy as np
out = {}
for n in ["u8", "u64", "f32", "empty"]:
    a = np.load(f"{sys.argv[1]}/{n}.npy")
    out[n] = {"dtype": a.dtype.str, "shape": list(a.shape), "values": [str(v) for v in a.ravel().tolist()]}
print(json.dumps(out))
`;
    const got = JSON.parse(execFileSync(python, ["-c", script, dir], { encoding: "utf8" })) as Record<string, { dtype: string; shape: number[]; values: string[] }>;
    const numpyDtype = { uint8: "|u1", uint64: "<u8", float32: "<f4", int16: "<i2" };
    for (const c of cases) {
      expect(got[c.name]!.dtype).toBe(numpyDtype[c.dtype]);
      expect(got[c.name]!.shape).toEqual([...c.shape]);
      const values = Array.from(c.data as ArrayLike<number | bigint>, (v) => (c.dtype === "float32" ? String(Math.fround(Number(v))) : String(v)));
      expect(got[c.name]!.values.map((v) => (c.dtype === "float32" ? String(Math.fround(Number(v))) : v))).toEqual(values);
    }
  });

  it("pads the header so the data starts at a multiple of 64 bytes", () => {
    const bytes = encodeNpy("uint8", [5, 6], new Uint8Array(30));
    const headerLen = bytes[8]! | (bytes[9]! << 8);
    expect((10 + headerLen) % 64).toBe(0);
    expect(bytes.length).toBe(10 + headerLen + 30);
  });

  it("refuses data that does not fill the shape, naming the field", async () => {
    await expectError(Promise.resolve().then(() => encodeNpy("uint8", [2, 2], new Uint8Array(3))), "InvalidArgument", "data");
    await expectError(Promise.resolve().then(() => encodeNpy("uint8", [-1, 2], new Uint8Array(0))), "InvalidArgument", "shape");
  });
});
