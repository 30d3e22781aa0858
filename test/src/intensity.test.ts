// The raw value -> model intensity map against analytic cases; models/tests/test_volume_io.py has
// the same cases for the Python side (to_uint8), so both map a window alike.
import { describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { checkIntensityWindow, intensityKey, modelImage, modelIntensity, parseIntensityWindow } from "#src/intensity.ts";

function fieldOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SpatialSamError);
    return (e as SpatialSamError).field;
  }
  return undefined;
}

describe("modelIntensity", () => {
  it("maps the window's ends to 0 and 255, clips outside it and rounds half up", () => {
    const f = modelIntensity("uint16", { low: 1000, high: 5080 });
    expect([-5, 1000, 1001, 3040, 5080, 9000].map(f)).toEqual([0, 0, 0, 128, 255, 255]);
    for (let n = 0; n < 256; n++) expect(f(n * 16 + 1000)).toBe(n); // 8-bit data stored as 16-bit comes back exactly
    const half = modelIntensity("float64", { low: 0, high: 510 });
    expect([1, 3, 5, 2].map(half)).toEqual([1, 2, 3, 1]);
    const unit = modelIntensity("float32", { low: 0, high: 1 });
    expect([Number.NaN, -Infinity, Infinity, 0.25].map(unit)).toEqual([0, 0, 255, 64]);
  });

  it("passes uint8 as stored without a window and windows it with one", () => {
    const raw = Uint8Array.from([0, 7, 255]);
    const asStored = modelIntensity("uint8", undefined);
    expect(modelImage(raw, asStored)).toBe(raw);
    const stretched = modelImage(raw, modelIntensity("uint8", { low: 0, high: 127.5 }));
    expect(Array.from(stretched)).toEqual([0, 14, 255]);
  });

  it("refuses other types without a window, naming the field", () => {
    for (const dtype of ["uint16", "int16", "float32", "uint32"] as const) {
      expect(() => modelIntensity(dtype, undefined)).toThrow(/intensity window/);
      expect(fieldOf(() => modelIntensity(dtype, undefined, "--intensity-window"))).toBe("--intensity-window");
    }
  });
});

describe("intensity windows", () => {
  it("are checked wherever they come from", () => {
    expect(checkIntensityWindow({ low: -1, high: 2 })).toEqual({ low: -1, high: 2 });
    expect(fieldOf(() => checkIntensityWindow({ low: 5, high: 5 }))).toBe("intensity_window");
    expect(fieldOf(() => checkIntensityWindow({ low: 9, high: 1 }, "intensityWindow"))).toBe("intensityWindow");
    expect(fieldOf(() => checkIntensityWindow({ low: "0", high: 1 }))).toBe("intensity_window.low");
    expect(fieldOf(() => checkIntensityWindow({ low: 0, high: Number.NaN }))).toBe("intensity_window.high");
    expect(fieldOf(() => checkIntensityWindow(null))).toBe("intensity_window");
    expect(fieldOf(() => checkIntensityWindow([0, 1]))).toBe("intensity_window.low");
    expect(parseIntensityWindow("1000, 5080")).toEqual({ low: 1000, high: 5080 });
    for (const bad of ["1", "a,b", "0,", "1,2,3", "0,Infinity", "3,1"]) expect(fieldOf(() => parseIntensityWindow(bad))).toBe("--intensity-window");
  });

  it("give distinct cache keys (and none without a window)", () => {
    expect(intensityKey(undefined)).toBe("");
    expect(intensityKey({ low: 0, high: 4095 })).not.toBe(intensityKey({ low: 0, high: 4096 }));
  });
});
