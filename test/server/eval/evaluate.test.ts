// evaluate() over VolumeSources: results equal the Python references whatever the block shape,
// progress is reported, bad inputs fail with errors naming the argument, and the report files
// are written completely.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { OBJECT_CSV_COLUMNS } from "#src/metrics/object_table.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { evaluate } from "#server/eval/evaluate.ts";
import type { EvalProgress } from "#server/eval/evaluate.ts";
import { writeEvalReport } from "#server/eval/report.ts";
import { generateGolden, loadGolden } from "#test/src/metrics/golden.ts";
import type { GoldenCase } from "#test/src/metrics/golden.ts";
import { memoryVolume } from "./memory_volume.ts";

let cases: GoldenCase[] = [];
const temps: string[] = [];
beforeAll(() => {
  temps.push(generateGolden());
  cases = loadGolden(temps[0]!);
});
afterAll(() => temps.forEach((d) => rmSync(d, { recursive: true, force: true })));
const get = (name: string) => cases.find((c) => c.name === name)!;
const volumes = (c: GoldenCase) => ({
  gt: memoryVolume(c.gt, c.shape, c.gtDtype),
  pred: memoryVolume(c.pred, c.shape, c.predDtype),
});

async function rejection(p: Promise<unknown>): Promise<SpatialSamError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  return e as SpatialSamError;
}

describe("evaluate", () => {
  it("scores the random case like the Python references, with progress per block", async () => {
    const c = get("sizes_random");
    const { gt, pred } = volumes(c);
    const progress: EvalProgress[] = [];
    const r = await evaluate(pred, gt, { blockShapeZyx: [16, 24, 40], onProgress: (p) => progress.push(p) });
    expect(r.blockShapeZyx).toEqual([16, 24, 40]);
    expect(progress.length).toBe(3 * 3 * 2);
    expect(progress.at(-1)).toEqual({ blocksDone: 18, blocksTotal: 18, voxelsDone: 40 * 64 * 80, voxelsTotal: 40 * 64 * 80 });
    expect(Math.abs(r.instance.ap.all.ap! - c.expected.ap.all.ap!)).toBeLessThan(1e-9);
    expect(Math.abs(r.connectomics.vi!.split - c.expected.vi.split)).toBeLessThan(1e-9);
    expect(Math.abs(r.connectomics.adaptedRand!.error - c.expected.adaptedRand.error)).toBeLessThan(1e-9);
    expect(r.instances.gt.source).toBe("labels");
    expect(r.instanceNote).toBe("gt: instance labels as stored; pred: instance labels as stored");
  });

  it("states that semantic volumes were turned into connected components, and honours the mask", async () => {
    const c = get("missing_fp_masked");
    const { gt, pred } = volumes(c);
    const mask = memoryVolume(c.mask!, c.shape, "uint8");
    const r = await evaluate(pred, gt, { mask, blockShapeZyx: [7, 9, 11] });
    expect(r.masked).toBe(true);
    expect(r.voxels).toBe(c.expected.voxels);
    expect(r.semantic).toMatchObject(c.expected.semantic);
    expect(r.instances.gt).toEqual({ source: "connected-components", connectivity: 6, count: c.expected.gtCount });
    expect(r.instanceNote).toContain("gt: 3D connected components of the nonzero voxels (6-connectivity)");
    expect(Math.abs(r.connectomics.vi!.merge - c.expected.vi.merge)).toBeLessThan(1e-9);
  });

  it("uses a default block shape aligned to the gt chunks", async () => {
    const c = get("identical");
    const { gt, pred } = volumes(c);
    const r = await evaluate(pred, gt);
    expect(r.blockShapeZyx).toEqual([24, 40, 48]); // 4 Mi voxels would be more than the volume
    expect(r.semantic.iou).toBe(1);
  });

  describe("bad input", () => {
    const c = () => get("identical");
    it("shape mismatch names pred", async () => {
      const gt = memoryVolume(c().gt, c().shape, "uint8");
      const pred = memoryVolume(c().pred, [24, 40, 47], "uint8");
      const e = await rejection(evaluate(pred, gt));
      expect(e._tag).toBe("InvalidArgument");
      expect(e.field).toBe("pred");
      expect(e.message).toBe("pred: shape 24x40x47 does not match gt shape 24x40x48");
    });

    it("voxel size mismatch names pred", async () => {
      const gt = memoryVolume(c().gt, c().shape, "uint8", { voxelSizeNm: [5, 5, 5] });
      const pred = memoryVolume(c().pred, c().shape, "uint8", { voxelSizeNm: [40, 5, 5] });
      const e = await rejection(evaluate(pred, gt));
      expect(e._tag).toBe("InvalidArgument");
      expect(e.message).toBe("pred: voxel size 40x5x5 nm does not match gt voxel size 5x5x5 nm");
    });

    it("mask shape mismatch names mask", async () => {
      const { gt, pred } = volumes(c());
      const mask = memoryVolume(new Uint8Array(10), [1, 2, 5], "uint8");
      const e = await rejection(evaluate(pred, gt, { mask }));
      expect(e.field).toBe("mask");
    });

    it("empty volumes are refused, naming the side", async () => {
      const empty = memoryVolume(new Uint8Array(0), [0, 40, 48], "uint8");
      const { pred, gt } = volumes(c());
      expect((await rejection(evaluate(pred, empty))).message).toBe("gt: volume is empty (shape 0x40x48)");
      expect((await rejection(evaluate(empty, gt))).field).toBe("pred");
    });

    it("floating-point labels are refused, naming the side", async () => {
      const { gt, pred } = volumes(c());
      const floats = memoryVolume(Float32Array.from(c().pred as Uint8Array), c().shape, "float32");
      const e = await rejection(evaluate(floats, gt));
      expect(e._tag).toBe("InvalidArgument");
      expect(e.message).toMatch(/^pred: labels must be integers, got float32/);
      expect((await rejection(evaluate(pred, floats))).field).toBe("gt");
    });

    it("a bad block shape names blockShapeZyx", async () => {
      const { gt, pred } = volumes(c());
      expect((await rejection(evaluate(pred, gt, { blockShapeZyx: [0, 4, 4] as Vec3 }))).field).toBe("blockShapeZyx");
    });

    it("an aborted signal cancels", async () => {
      const { gt, pred } = volumes(c());
      const ac = new AbortController();
      ac.abort();
      expect((await rejection(evaluate(pred, gt, { signal: ac.signal })))._tag).toBe("Cancelled");
    });
  });
});

describe("writeEvalReport", () => {
  it("writes metrics.json and per_object.csv with one row per object and false positive", async () => {
    const c = get("flicker_instances");
    const { gt, pred } = volumes(c);
    const r = await evaluate(pred, gt, { blockShapeZyx: [5, 7, 9] });
    const tmp = mkdtempSync(join(tmpdir(), "eval-report-"));
    temps.push(tmp);
    const out = join(tmp, "nested", "out");
    const files = await writeEvalReport(r, out);
    expect(readdirSync(out).sort()).toEqual(["metrics.json", "per_object.csv"]);
    const json = JSON.parse(readFileSync(files.metricsJson, "utf8"));
    expect(json.consistency).toEqual(r.consistency);
    expect(json.instances.gt.source).toBe("labels");
    const lines = readFileSync(files.perObjectCsv, "utf8").trimEnd().split("\n");
    expect(lines[0]).toBe(OBJECT_CSV_COLUMNS.join(","));
    expect(lines.length).toBe(1 + r.objects.length + r.falsePositives.length);
    const flickering = lines.filter((l) => l.startsWith("gt,7,"))[0]!.split(",");
    expect(flickering[OBJECT_CSV_COLUMNS.indexOf("flicker_slices")]).toBe("3");
    expect(flickering[OBJECT_CSV_COLUMNS.indexOf("pred_components")]).toBe("2");
  });
});
