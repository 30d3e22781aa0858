// Every metric of the blockwise evaluator against the Python references (scikit-image, scipy,
// a COCO-style AP in Python) on the golden cases, for several block shapes: the results must not
// depend on how the volume is cut.

import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockwiseEvaluator } from "#src/metrics/evaluator.ts";
import type { EvaluationMetrics } from "#src/metrics/evaluator.ts";
import { AREA_LABELS } from "#src/metrics/instance_ap.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { cutBox, generateGolden, loadGolden } from "./golden.ts";
import type { GoldenCase } from "./golden.ts";

let cases: GoldenCase[] = [];
let dir = "";
beforeAll(() => {
  dir = generateGolden();
  cases = loadGolden(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(c: GoldenCase, block: Vec3): EvaluationMetrics {
  const bs = block.map((b, i) => Math.min(b, c.shape[i]!)) as Vec3;
  const ev = new BlockwiseEvaluator(c.shape, bs, { connectivity: c.connectivity });
  for (let z = 0; z < c.shape[0]; z += bs[0])
    for (let y = 0; y < c.shape[1]; y += bs[1])
      for (let x = 0; x < c.shape[2]; x += bs[2]) {
        const o: Vec3 = [z, y, x];
        const s = o.map((v, i) => Math.min(bs[i]!, c.shape[i]! - v)) as Vec3;
        const box = { offsetZyx: o, shapeZyx: s };
        ev.addBlock(box, cutBox(c.gt, c.shape, o, s), cutBox(c.pred, c.shape, o, s), c.mask && cutBox(c.mask, c.shape, o, s));
      }
  return ev.finish();
}

const BLOCKS: Vec3[] = [
  [1000, 1000, 1000], // the whole volume in one block
  [5, 7, 9], // odd sizes: every object crosses borders on all three axes
  [1, 13, 1000], // single slices, y split
  [8, 1, 3], // single rows
];
const NAMES = ["identical", "shifted", "split", "merged", "missing_fp_masked", "flicker_instances", "diagonal_26", "diagonal_6", "sizes_random", "uint64_ids", "noise_6", "noise_26"];

describe.each(NAMES)("golden case %s", (name) => {
  const get = () => cases.find((c) => c.name === name)!;

  it.each(BLOCKS)("matches the Python references with %i x %i x %i blocks", (...block) => {
    const c = get();
    const e = c.expected;
    const m = run(c, block as Vec3);

    expect(m.voxels).toBe(e.voxels);
    expect({ tp: m.semantic.tp, fp: m.semantic.fp, fn: m.semantic.fn, tn: m.semantic.tn }).toEqual(e.semantic);
    const { tp, fp, fn } = e.semantic;
    expect(m.semantic.iou).toBeCloseTo(tp / (tp + fp + fn), 12);
    expect(m.semantic.dice).toBeCloseTo((2 * tp) / (2 * tp + fp + fn), 12);

    expect(m.instances.gt.source).toBe(c.gtInstances);
    expect(m.instances.pred.source).toBe(c.predInstances);
    expect(m.instances.gt.count).toBe(e.gtCount);
    expect(m.instances.pred.count).toBe(e.predCount);
    if (e.gtComponentSizes !== null) {
      // Component ids follow scipy.ndimage.label's numbering (raster order of first voxel).
      expect(m.objects.map((o) => o.gtVoxels)).toEqual(e.gtComponentSizes);
    }

    expect(Math.abs(m.connectomics.vi!.split - e.vi.split)).toBeLessThan(1e-9);
    expect(Math.abs(m.connectomics.vi!.merge - e.vi.merge)).toBeLessThan(1e-9);
    expect(Math.abs(m.connectomics.adaptedRand!.error - e.adaptedRand.error)).toBeLessThan(1e-9);
    expect(Math.abs(m.connectomics.adaptedRand!.precision - e.adaptedRand.precision)).toBeLessThan(1e-9);
    expect(Math.abs(m.connectomics.adaptedRand!.recall - e.adaptedRand.recall)).toBeLessThan(1e-9);

    for (const label of AREA_LABELS) {
      const got = m.instance.ap[label];
      const want = e.ap[label];
      expect(got.gtObjects).toBe(want.gtObjects);
      for (const k of ["ap", "ap50", "ap75"] as const) {
        if (want[k] === null) expect(got[k]).toBeNull();
        else expect(Math.abs(got[k]! - want[k])).toBeLessThan(1e-9);
      }
    }

    expect(m.instance.matched).toBe(e.matched);
    if (e.oneComponentShare === null) expect(m.consistency.oneComponentShare).toBeNull();
    else expect(m.consistency.oneComponentShare).toBeCloseTo(e.oneComponentShare, 12);
    expect(m.consistency.flickerObjects).toBe(e.flickerObjects);
    expect(m.consistency.flickerSlices).toBe(e.flickerSlices);

    const rows = new Map(m.objects.map((o) => [String(o.gtId), o]));
    for (const want of e.objects) {
      // uint64 ids above 2^53 arrive as decimal strings in reports; compare through BigInt.
      const got = c.gtInstances === "labels" && c.gtDtype === "uint64" ? m.objects[e.objects.indexOf(want)]! : rows.get(String(want.gtId))!;
      expect(got.gtVoxels).toBe(want.gtVoxels);
      expect(Math.abs(got.iou - want.iou)).toBeLessThan(1e-12);
      expect(got.matched).toBe(want.matched);
      expect([got.zFirst, got.zLast]).toEqual([want.zFirst, want.zLast]);
      expect(got.flickerSlices).toBe(want.flickerSlices);
      if (want.matched) expect(got.predComponents).toBe(want.predComponents);
    }
  });
});

describe("analytic cases", () => {
  it("an identical prediction scores perfectly", () => {
    const m = run(cases.find((c) => c.name === "identical")!, [5, 7, 9]);
    expect(m.semantic.iou).toBe(1);
    expect(m.instance.ap.all.ap).toBe(1);
    expect(m.connectomics.vi).toEqual({ split: 0, merge: 0, total: 0 });
    expect(m.connectomics.adaptedRand!.error).toBe(0);
    expect(m.consistency.oneComponentShare).toBe(1);
  });

  it("a tube cut by a 2-slice gap: VI and matching in closed form", () => {
    // gt: one 20x6x8 tube (960 voxels); pred: the same minus 2 slices (96 voxels) in the middle,
    // so two 432-voxel components. Only the gt row of the tube and the pred background column
    // carry entropy.
    const m = run(cases.find((c) => c.name === "split")!, [5, 7, 9]);
    const N = 24 * 40 * 48;
    const bg = N - 960;
    const split = ((2 * 432) / N) * Math.log2(960 / 432) + (96 / N) * Math.log2(960 / 96);
    const merge = (bg / N) * Math.log2((bg + 96) / bg) + (96 / N) * Math.log2((bg + 96) / 96);
    expect([m.instances.gt.count, m.instances.pred.count]).toEqual([1, 2]);
    expect(m.connectomics.vi!.split).toBeCloseTo(split, 12);
    expect(m.connectomics.vi!.merge).toBeCloseTo(merge, 12);
    expect(m.objects[0]!.iou).toBeCloseTo(432 / 960, 12); // below 0.5: nothing matched
    expect(m.instance.matched).toBe(0);
    expect(m.instance.ap.all.ap).toBe(0);
  });

  it("a bridge merges two gt objects into one prediction", () => {
    const m = run(cases.find((c) => c.name === "merged")!, [5, 7, 9]);
    expect([m.instances.gt.count, m.instances.pred.count]).toEqual([2, 1]);
    expect(m.instance.matched).toBe(1);
  });

  it("26-connectivity joins diagonal contacts that 6-connectivity keeps apart", () => {
    const c26 = cases.find((c) => c.name === "diagonal_26")!;
    const m26 = run(c26, [3, 4, 5]);
    const m6 = run({ ...c26, connectivity: 6 }, [3, 4, 5]);
    expect(m26.instances.gt.count).toBe(3);
    expect(m6.instances.gt.count).toBeGreaterThan(m26.instances.gt.count);
  });

  it("keeps uint64 ids above 2^53 exact", () => {
    const m = run(cases.find((c) => c.name === "uint64_ids")!, [5, 7, 9]);
    const ids = m.objects.map((o) => BigInt(o.gtId));
    expect(ids).toEqual([7n, 9n, 12n].map((i) => i * 2n ** 40n + 2n ** 61n));
    expect(typeof m.objects[0]!.gtId).toBe("string");
  });

  it("an all-background ground truth has no AP, and every predicted voxel is a false positive", () => {
    const shape: Vec3 = [2, 3, 4];
    const pred = new Uint8Array(24);
    pred.fill(1, 5, 9);
    const box = { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: shape };
    const ev = new BlockwiseEvaluator(shape, shape);
    ev.addBlock(box, new Uint8Array(24), pred);
    const m = ev.finish();
    expect(m.instances.gt.count).toBe(0);
    expect(m.instances.pred.count).toBe(2); // x 1..3 of row 1 and x 0 of row 2 do not touch (6-conn)
    expect(m.semantic).toMatchObject({ tp: 0, fp: 4, fn: 0, tn: 20, iou: 0, precision: 0, recall: null });
    expect(m.instance.ap.all.ap).toBeNull();
    expect(m.consistency.oneComponentShare).toBeNull();
    expect(m.connectomics.adaptedRand).toBeNull();
    expect(m.falsePositives.length).toBe(2);
  });

  it("ranks predictions by given scores: a confident false positive halves the precision", () => {
    // gt: objects 1 and 2; pred 5 equals gt 1, pred 9 is a false positive, gt 2 is missed.
    const shape: Vec3 = [1, 4, 8];
    const gt = new Uint8Array(32);
    const pred = new Uint8Array(32);
    gt.fill(1, 0, 3);
    gt.fill(2, 16, 19);
    pred.fill(5, 0, 3);
    pred.fill(9, 28, 32);
    const ap = (scores: Map<bigint, number>) => {
      const ev = new BlockwiseEvaluator(shape, [1, 2, 8], { predScores: scores });
      ev.addBlock({ offsetZyx: [0, 0, 0], shapeZyx: [1, 2, 8] }, gt.subarray(0, 16), pred.subarray(0, 16));
      ev.addBlock({ offsetZyx: [0, 2, 0], shapeZyx: [1, 2, 8] }, gt.subarray(16), pred.subarray(16));
      return ev.finish().instance;
    };
    // Recall reaches 0.5: 51 of the 101 recall points count, at precision 1 or 0.5.
    const good = ap(new Map([[5n, 0.9], [9n, 0.1]]));
    expect(good.scores).toBe("given");
    expect(good.ap.all.ap).toBeCloseTo(51 / 101, 12);
    expect(ap(new Map([[5n, 0.1], [9n, 0.9]])).ap.all.ap).toBeCloseTo(25.5 / 101, 12);
  });

  it("rejects floating-point labels naming the side", () => {
    const ev = new BlockwiseEvaluator([1, 1, 2], [1, 1, 2]);
    const box = { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: [1, 1, 2] as Vec3 };
    expect(() => ev.addBlock(box, new Uint8Array(2), new Float32Array(2))).toThrow(/^pred: labels must be integers/);
  });
});
