// The viewer's session box on a volume over the bridge's session limit: the visible xy extent
// clamped to the volume, as many slices around the current one as fit, never over the limit.
import { describe, expect, it } from "vitest";
import { inSessionBox, sessionBox } from "#layer/session_box.ts";

// An OpenOrganelle-scale level: 10^4 x 10^4 x 10^3 voxels from offset (z 100, y 0, x 50).
const level = { offsetZyx: [100, 0, 50], shapeZyx: [1000, 10_000, 10_000] };
const LIMIT = 512 ** 3;
const voxels = (b: { x0: number; y0: number; z0: number; x1: number; y1: number; z1: number }) => (b.x1 - b.x0) * (b.y1 - b.y0) * (b.z1 - b.z0);

describe("sessionBox", () => {
  it("is undefined (the whole level) when the level fits the limit", () => {
    expect(sessionBox({ offsetZyx: [0, 0, 0], shapeZyx: [512, 512, 512] }, LIMIT, [3, 4, 5])).toBeUndefined();
  });

  it("takes the view's xy extent clamped to the level and fits the slices around the current one to the limit", () => {
    // A 1024 x 512 view reaching 20 voxels past the level's left edge.
    const b = sessionBox(level, LIMIT, [500.5, 300.2, 600.7], { x0: 30, y0: 100.5, x1: 1054, y1: 612.5 })!;
    expect(b).toMatchObject({ x0: 50, y0: 100, x1: 1054, y1: 613 });
    // 512^3 / (1004 * 513) = 260.6 slices: 260, centred on slice 600.
    expect(b.z1 - b.z0).toBe(260);
    expect(b.z0).toBe(600 - 130);
    expect(voxels(b)).toBeLessThanOrEqual(LIMIT);
  });

  it("keeps the z range inside the level and caps its depth at the limit's cube root", () => {
    const b = sessionBox(level, LIMIT, [60, 10, 101], { x0: 50, y0: 0, x1: 100, y1: 40 })!;
    expect([b.z0, b.z1]).toEqual([100, 612]);
    expect(inSessionBox({ offsetZyx: [b.z0, b.y0, b.x0], shapeZyx: [b.z1 - b.z0, b.y1 - b.y0, b.x1 - b.x0] }, [60, 10, 101])).toBe(true);
  });

  it("falls back to a square around the point when the view holds more than the limit per slice", () => {
    const b = sessionBox(level, 1000 * 1000, [9_990, 5_000, 700], { x0: 0, y0: 0, x1: 20_000, y1: 20_000 })!;
    expect(b).toEqual({ x0: 10_050 - 1000, x1: 10_050, y0: 4_500, y1: 5_500, z0: 700, z1: 701 });
    expect(voxels(b)).toBeLessThanOrEqual(1000 * 1000);
  });
});

describe("inSessionBox", () => {
  it("holds the voxels of the half-open box only", () => {
    const box = { offsetZyx: [10, 20, 30], shapeZyx: [5, 5, 5] };
    expect(inSessionBox(box, [30, 20, 10])).toBe(true);
    expect(inSessionBox(box, [34.99, 24.5, 14.2])).toBe(true);
    expect(inSessionBox(box, [35, 22, 12])).toBe(false);
    expect(inSessionBox(box, [31, 22, 9.9])).toBe(false);
  });
});
