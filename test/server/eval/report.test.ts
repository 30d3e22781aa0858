// `spatial-sam report` end to end on real Zarr files: the metrics in the page equal evaluate()'s
// (semantic ones also the dense counts), the per-slice IoU and the overlay pixels match the dense
// arrays (cyan TP, magenta FN, yellow FP), the budget plot appears only with results files, the
// Neuroglancer link names the bridge's ids, and bad input fails naming the argument, writing nothing.

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VolumeRegistry } from "#server/bridge/volume_registry.ts";
import { evaluate } from "#server/eval/evaluate.ts";
import type { EvalResult } from "#server/eval/evaluate.ts";
import { OVERLAY_ALPHA } from "#server/eval/overlay.ts";
import { registerReportCommand } from "#server/eval/report_command.ts";
import { parseBudget, readBudgetResults } from "#server/eval/budget_results.ts";
import { pickSlices } from "#server/eval/slice_stats.ts";
import { histogramCounts } from "#server/eval/svg_plots.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { denseSliceCounts, index, SHAPE, writeReportFixture } from "./report_fixture.ts";
import type { ReportFixture } from "./report_fixture.ts";
import { runCommand } from "#test/helpers/command_harness.ts";

let dir = "";
let fx: ReportFixture;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "report-test-"));
  fx = await writeReportFixture(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(...args: string[]) {
  return runCommand(registerReportCommand, "report", args);
}

async function evaluateDirect(mask?: string): Promise<EvalResult> {
  const open = (url: string) => openVolume(url, { roots: [dir] });
  const [pred, gt] = await Promise.all([open(fx.url.pred), open(fx.url.gt)]);
  const m = mask === undefined ? undefined : await open(mask);
  try {
    return await evaluate(pred, gt, m === undefined ? {} : { mask: m });
  } finally {
    await Promise.all([pred.close(), gt.close(), m?.close()]);
  }
}

/** data-metric -> data-value of every metric cell in the page ("" = n/a -> null). */
function pageMetrics(html: string): Map<string, number | null> {
  const out = new Map<string, number | null>();
  for (const m of html.matchAll(/data-metric="([^"]+)" data-value="([^"]*)"/g)) out.set(m[1]!, m[2] === "" ? null : Number(m[2]));
  return out;
}

function expectedMetrics(r: EvalResult): Map<string, number | null> {
  const e = new Map<string, number | null>([
    ["semantic.iou", r.semantic.iou],
    ["semantic.dice", r.semantic.dice],
    ["semantic.precision", r.semantic.precision],
    ["semantic.recall", r.semantic.recall],
    ["vi.split", r.connectomics.vi!.split],
    ["vi.merge", r.connectomics.vi!.merge],
    ["vi.total", r.connectomics.vi!.total],
    ["adaptedRand.error", r.connectomics.adaptedRand!.error],
    ["consistency.oneComponentShare", r.consistency.oneComponentShare],
    ["consistency.flickerRate", r.consistency.flickerRate],
    ["consistency.flickerObjects", r.consistency.flickerObjects],
    ["consistency.flickerSlices", r.consistency.flickerSlices],
    ["instances.gt.count", r.instances.gt.count],
  ]);
  for (const k of ["all", "small", "medium", "large"] as const) {
    e.set(`ap.${k}.ap`, r.instance.ap[k].ap);
    e.set(`ap.${k}.ap50`, r.instance.ap[k].ap50);
    e.set(`ap.${k}.ap75`, r.instance.ap[k].ap75);
    e.set(`ap.${k}.gtObjects`, r.instance.ap[k].gtObjects);
  }
  return e;
}

/** The overlay PNGs of the page by slice z, decoded. */
function overlays(html: string): Map<number, PNG> {
  const out = new Map<number, PNG>();
  for (const m of html.matchAll(/<figure data-z="(\d+)"><img src="data:image\/png;base64,([^"]+)"/g)) {
    out.set(Number(m[1]), PNG.sync.read(Buffer.from(m[2]!, "base64")));
  }
  return out;
}

const pixel = (png: PNG, y: number, x: number) => Array.from(png.data.subarray((y * png.width + x) * 4, (y * png.width + x) * 4 + 3));
const blend = (rgb: number[], grey: number) => rgb.map((c) => Math.round(OVERLAY_ALPHA * c + (1 - OVERLAY_ALPHA) * grey));
const CYAN = [0, 255, 255];
const MAGENTA = [255, 0, 255];
const YELLOW = [255, 255, 0];

function perSliceIou(html: string): number[] {
  // The per-slice chart's path: "M x y L x y ..." in SVG units; the y values are decoded back to IoU.
  const svg = /<svg[^>]*aria-label="Foreground IoU per slice along z"[\s\S]*?<\/svg>/.exec(html)![0];
  const d = /<path d="([^"]+)"/.exec(svg)![1]!;
  // Plot frame from svg_plots.ts: top 28, height 300 - 28 - 44.
  return [...d.matchAll(/[ML]([\d.]+) ([\d.]+)/g)].map((m) => (28 + 228 - Number(m[2])) / 228);
}

describe("spatial-sam report", () => {
  it("writes a page whose metrics are evaluate()'s, with slice overlays over the image", async () => {
    const out = join(dir, "out_image");
    const r = await cli("--pred", fx.url.pred, "--gt", fx.url.gt, "--image", fx.url.image, "--out", out);
    expect(r.failures).toEqual([]);
    expect(r.stdout).toContain(join(out, "report.html"));
    const html = readFileSync(join(out, "report.html"), "utf8");
    const result = await evaluateDirect();

    // Every metric, to the last digit.
    const shown = pageMetrics(html);
    const want = expectedMetrics(result);
    expect(shown.size).toBe(want.size);
    for (const [k, v] of want) expect([k, shown.get(k)]).toEqual([k, v]);
    // Semantic scores also from the dense arrays directly.
    const counts = denseSliceCounts(fx.gt, fx.pred);
    const sum = (k: "tp" | "fp" | "fn") => counts.reduce((a, c) => a + c[k], 0);
    expect(shown.get("semantic.iou")).toBeCloseTo(sum("tp") / (sum("tp") + sum("fp") + sum("fn")), 12);
    expect(html).toContain("gt: 3D connected components of the nonzero voxels (6-connectivity)");
    expect(shown.get("instances.gt.count")).toBe(3);
    expect(existsSync(join(out, "metrics.json")) && existsSync(join(out, "per_object.csv"))).toBe(true);
    expect(readFileSync(join(out, "per_object.csv"), "utf8").split("\n")[0]).toContain("gt_id");

    // Per-slice IoU along z, as drawn, against the dense counts (0.5 and 0.75 here).
    const ious = counts.map((c) => c.tp / (c.tp + c.fp + c.fn));
    expect(new Set(ious)).toEqual(new Set([0.5, 0.75]));
    perSliceIou(html).forEach((v, z) => expect(v).toBeCloseTo(ious[z]!, 2));

    // Overlays: worst, median, best and evenly spaced slices; colours at known voxels.
    const pngs = overlays(html);
    expect([...pngs.keys()]).toEqual(pickSlices({ tp: Float64Array.from(counts, (c) => c.tp), fp: Float64Array.from(counts, (c) => c.fp), fn: Float64Array.from(counts, (c) => c.fn) }).map((p) => p.z));
    expect(pngs.size).toBe(6);
    for (const [z, png] of pngs) {
      expect([png.width, png.height]).toEqual([SHAPE[2], SHAPE[1]]);
      const grey = (y: number, x: number) => fx.image[index(z, y, x)]!;
      expect(pixel(png, 5, 6)).toEqual(blend(CYAN, grey(5, 6))); // object A, found
      expect(pixel(png, 5, 2)).toEqual(blend(MAGENTA, grey(5, 2))); // object A's left edge, missed
      expect(pixel(png, 5, 11)).toEqual(blend(YELLOW, grey(5, 11))); // object A's shift, false
      expect(pixel(png, 0, 30)).toEqual([grey(0, 30), grey(0, 30), grey(0, 30)]); // background
      // Every pixel, against the dense arrays.
      for (let y = 0; y < SHAPE[1]; y++)
        for (let x = 0; x < SHAPE[2]; x++) {
          const i = index(z, y, x);
          const rgb = fx.gt[i] ? (fx.pred[i] ? CYAN : MAGENTA) : fx.pred[i] ? YELLOW : undefined;
          expect(pixel(png, y, x)).toEqual(rgb === undefined ? [grey(y, x), grey(y, x), grey(y, x)] : blend(rgb, grey(y, x)));
        }
    }
    expect(html).toContain("metric-against-budget plot is omitted");
  });

  it("without an image draws over black; a mask leaves unscored voxels uncoloured and is scored like evaluate()", async () => {
    const out = join(dir, "out_mask");
    const r = await cli("--pred", fx.url.pred, "--gt", fx.url.gt, "--mask", fx.url.mask, "--out", out);
    expect(r.failures).toEqual([]);
    const html = readFileSync(join(out, "report.html"), "utf8");
    const shown = pageMetrics(html);
    for (const [k, v] of expectedMetrics(await evaluateDirect(fx.url.mask))) expect([k, shown.get(k)]).toEqual([k, v]);
    const counts = denseSliceCounts(fx.gt, fx.pred, fx.mask);
    perSliceIou(html).forEach((v, z) => expect(v).toBeCloseTo(counts[z]!.tp / (counts[z]!.tp + counts[z]!.fp + counts[z]!.fn), 2));
    const png = overlays(html).get(0)!;
    expect(pixel(png, 5, 6)).toEqual(CYAN);
    expect(pixel(png, 5, 3)).toEqual(MAGENTA);
    expect(pixel(png, 5, 2)).toEqual([0, 0, 0]); // a miss, but outside the mask
    expect(pixel(png, 5, 11)).toEqual(YELLOW);
    expect(pixel(png, 0, 30)).toEqual([0, 0, 0]);
  });

  it("subsamples overlays of slices larger than --overlay-max-px by a whole stride", async () => {
    const out = join(dir, "out_small");
    const r = await cli("--pred", fx.url.pred, "--gt", fx.url.gt, "--out", out, "--overlay-max-px", "16", "--slices", "1");
    expect(r.failures).toEqual([]);
    const html = readFileSync(join(out, "report.html"), "utf8");
    const [z, png] = [...overlays(html)][0]!;
    expect([png.width, png.height]).toEqual([16, 12]);
    expect(html).toContain("at 1/2 resolution");
    for (let y = 0; y < 12; y++)
      for (let x = 0; x < 16; x++) {
        const i = index(z, 2 * y, 2 * x);
        expect(pixel(png, y, x)).toEqual(fx.gt[i] ? (fx.pred[i] ? CYAN : MAGENTA) : fx.pred[i] ? YELLOW : [0, 0, 0]);
      }
  });

  it("plots metric against annotation budget from results files", async () => {
    const results = join(dir, "results.json");
    const rows = ["1/64", "1/16", "1/4"].flatMap((budget, i) => [
      { method: "a", name: "(a) dual-track", budget, fg_iou: 0.5 + 0.1 * i, dice: 0.6 + 0.1 * i, ap50: 0.3 + 0.1 * i, ap75: 0.1 * i },
      { method: "b", name: "(b) 3D U-Net", budget, fg_iou: 0.4 + 0.1 * i, dice: 0.5 + 0.1 * i, ap50: 0.2 + 0.1 * i, ap75: 0.05 * i },
    ]);
    writeFileSync(results, JSON.stringify({ quick: false, rows }));
    const out = join(dir, "out_budget");
    const r = await cli("--pred", fx.url.pred, "--gt", fx.url.gt, "--out", out, "--budget-results", results);
    expect(r.failures).toEqual([]);
    const html = readFileSync(join(out, "report.html"), "utf8");
    expect(html).not.toContain("plot is omitted");
    for (const title of ["foreground IoU", "Dice", "AP@0.5", "AP@0.75"]) {
      const svg = new RegExp(`<svg[^>]*aria-label="${title.replace(/[.@]/g, "\\$&")} against annotation budget"[\\s\\S]*?</svg>`).exec(html);
      expect(svg, title).not.toBeNull();
      // Two series, three budgets each, with their tick labels.
      expect(svg![0].match(/<circle/g)).toHaveLength(6);
      expect(svg![0]).toContain("(a) dual-track");
      for (const b of ["1/64", "1/16", "1/4"]) expect(svg![0]).toContain(`>${b}</text>`);
    }
    expect(html).not.toContain('aria-label="AP@[0.5:0.95] against annotation budget"');
  });

  it("links Neuroglancer to prediction and ground truth side by side, served by the bridge", async () => {
    const out = join(dir, "out_link");
    const r = await cli("--pred", fx.url.pred, "--gt", fx.url.gt, "--image", fx.url.image, "--out", out, "--bridge", "http://127.0.0.1:9123");
    expect(r.failures).toEqual([]);
    const html = readFileSync(join(out, "report.html"), "utf8");
    const href = /<a id="neuroglancer-link" href="([^"]+)"/.exec(html)![1]!.replace(/&amp;/g, "&");
    expect(href.startsWith("http://127.0.0.1:9123/#!")).toBe(true);
    const state = JSON.parse(decodeURIComponent(href.slice(href.indexOf("#!") + 2)));
    const source = (url: string) => `precomputed://http://127.0.0.1:9123/volumes/${VolumeRegistry.idFor(url)}`;
    expect(state.layers).toEqual([
      { type: "image", source: source(fx.url.image), name: "image" },
      { type: "segmentation", source: source(fx.url.gt), name: "ground truth", selectedAlpha: 0.5 },
      { type: "segmentation", source: source(fx.url.pred), name: "prediction", selectedAlpha: 0.5 },
    ]);
    expect(state.layout).toEqual({
      type: "row",
      children: [
        { type: "viewer", layers: ["image", "prediction"], layout: "xy" },
        { type: "viewer", layers: ["image", "ground truth"], layout: "xy" },
      ],
    });
    expect(state.dimensions).toEqual({ x: [5e-9, "m"], y: [5e-9, "m"], z: [1e-8, "m"] });
    // Opens at the worst slice (z 0 here), zoomed so the 32-voxel-wide slice fills a panel.
    expect(state.position).toEqual([16, 12, 0.5]);
    expect(state.crossSectionScale).toBeCloseTo(32 / 450, 12);
    // How to serve them: the registration the bridge's POST /api/volumes takes, one per volume.
    expect(html).toContain("spatial-sam serve --http-port 9123");
    expect(html).toContain(`curl -X POST http://127.0.0.1:9123/api/volumes`);
    expect(html).toContain(VolumeRegistry.idFor(fx.url.pred));
  });

  it("names the argument that is wrong and writes nothing", async () => {
    const out = join(dir, "out_bad");
    const cases: [string[], RegExp, object][] = [
      [["--pred", fx.url.predCropped, "--gt", fx.url.gt], /^pred: shape 8x24x28 does not match gt shape 8x24x32$/, { field: "pred", _tag: "InvalidArgument" }],
      [["--pred", `zarr://${join(dir, "nothing.zarr")}`, "--gt", fx.url.gt], /^pred: .*nothing\.zarr/, { field: "pred", _tag: "NotFound" }],
      [["--pred", fx.url.pred, "--gt", fx.url.gt, "--image", fx.url.imageCropped], /^image: shape 8x24x28 does not match gt shape 8x24x32$/, { field: "image" }],
      [["--pred", fx.url.pred, "--gt", fx.url.gt, "--budget-results", join(dir, "missing.json")], /^budgetResults\[0\]: .*missing\.json: no such file$/, { _tag: "NotFound" }],
    ];
    for (const [args, message, error] of cases) {
      const r = await cli(...args, "--out", out);
      expect(r.failures).toEqual([expect.stringMatching(message)]);
      expect(r.errors[0]).toMatchObject(error);
      expect(existsSync(join(out, "report.html"))).toBe(false);
    }
  });
});

describe("report helpers", () => {
  it("reads budgets as fractions and eval metrics.json files with a budget added", async () => {
    expect([parseBudget("1/64"), parseBudget("0.25"), parseBudget(1), parseBudget("2"), parseBudget("a/b"), parseBudget(0)]).toEqual([1 / 64, 0.25, 1, undefined, undefined, undefined]);
    const evalFile = join(dir, "eval_quarter.json");
    const result = await evaluateDirect();
    writeFileSync(evalFile, JSON.stringify({ ...result, budget: "1/4" }));
    const [p] = await readBudgetResults([evalFile]);
    expect(p).toEqual({
      series: "eval_quarter.json",
      budget: 0.25,
      budgetLabel: "1/4",
      file: evalFile,
      metrics: { iou: result.semantic.iou, dice: result.semantic.dice, ap: result.instance.ap.all.ap, ap50: result.instance.ap.all.ap50, ap75: result.instance.ap.all.ap75 },
    });
    const noBudget = join(dir, "no_budget.json");
    writeFileSync(noBudget, JSON.stringify({ rows: [{ name: "x", fg_iou: 0.5 }] }));
    await expect(readBudgetResults([evalFile, noBudget])).rejects.toMatchObject({
      _tag: "DataCorruption",
      field: "budgetResults[1]",
      message: expect.stringContaining("row 0 has no budget in (0, 1]"),
    });
    writeFileSync(noBudget, "{not json");
    await expect(readBudgetResults([noBudget])).rejects.toMatchObject({ _tag: "DataCorruption", message: expect.stringContaining("not JSON") });
  });

  it("bins the per-object histogram with the last bin closed", () => {
    expect(histogramCounts([0, 0.05, 0.5, 0.99, 1, 1.5, -0.1], 4, [0, 1])).toEqual([2, 0, 1, 2]);
  });

  it("picks worst, median and best IoU slices, then evenly spaced ones, without repeats", () => {
    const tp = Float64Array.from([1, 0, 3, 5, 2, 0, 4, 9, 0, 0]);
    const zero = new Float64Array(10);
    const fp = Float64Array.from([9, 0, 7, 5, 8, 1, 6, 1, 0, 0]);
    // IoU: z0 0.1, z2 0.3, z3 0.5, z4 0.2, z5 0, z6 0.4, z7 0.9; z1, z8, z9 have no foreground.
    expect(pickSlices({ tp, fp, fn: zero }, 3)).toEqual([
      { z: 2, why: "median IoU" },
      { z: 5, why: "worst IoU" },
      { z: 7, why: "best IoU" },
    ]);
    // Spacing 2 lands on z2 and z7 (taken), so spacing 3 adds z1 and z8.
    expect(pickSlices({ tp, fp, fn: zero }, 5)).toContainEqual({ z: 1, why: "evenly spaced" });
    expect(pickSlices({ tp, fp, fn: zero }, 5).map((p) => p.z)).toEqual([1, 2, 5, 7, 8]);
    expect(pickSlices({ tp, fp, fn: zero }, 64)).toHaveLength(10);
  });
});
