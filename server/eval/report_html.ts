// The evaluation report as one self-contained HTML page: metrics tables, inline-SVG plots, overlay
// PNGs as data: URIs and a Neuroglancer link. No script, no external file: it works offline.
// Every metric cell carries data-metric/data-value (the exact number) so tests and tools can read it.

import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { EvalResult } from "./evaluate.ts";
import { BUDGET_METRICS } from "./budget_results.ts";
import type { BudgetPoint } from "./budget_results.ts";
import type { NeuroglancerLink } from "./neuroglancer_link.ts";
import { OVERLAY_ALPHA, OVERLAY_COLOURS } from "./overlay.ts";
import { sliceIou } from "./slice_stats.ts";
import type { SliceCounts } from "./slice_stats.ts";
import { escapeXml as esc, histogram, lineChart } from "./svg_plots.ts";

export interface ReportOverlay {
  z: number;
  why: string;
  png: Buffer;
  width: number;
  height: number;
  /** The PNG shows every stride-th voxel along y and x (1 = full resolution). */
  stride: number;
}

export interface ReportData {
  result: EvalResult;
  urls: { pred: string; gt: string; mask?: string; image?: string };
  slices: SliceCounts;
  overlays: ReportOverlay[];
  budget: BudgetPoint[];
  link: NeuroglancerLink;
  /** ISO time the report was made. */
  generatedAt: string;
  /** Files written beside the page (relative names), linked from it. */
  companions?: string[];
}

const fmt = (v: number | null | undefined, digits = 4) => (v === null || v === undefined ? "n/a" : v.toFixed(digits));

function cell(metric: string, v: number | null | undefined, digits = 4): string {
  return `<td class="num" data-metric="${esc(metric)}" data-value="${v === null || v === undefined ? "" : String(v)}">${fmt(v, digits)}</td>`;
}

function countCell(metric: string, v: number): string {
  return `<td class="num" data-metric="${esc(metric)}" data-value="${v}">${v}</td>`;
}

function metricsTables(r: EvalResult): string {
  const s = r.semantic;
  const ap = r.instance.ap;
  const vi = r.connectomics.vi;
  const ar = r.connectomics.adaptedRand;
  const c = r.consistency;
  const rows = (items: [string, string, string][]) =>
    items.map(([name, value, note]) => `<tr><th scope="row">${esc(name)}</th>${value}<td class="note">${esc(note)}</td></tr>`).join("\n");
  const semantic = rows([
    ["IoU (Jaccard)", cell("semantic.iou", s.iou), "tp / (tp + fp + fn), foreground = nonzero"],
    ["Dice", cell("semantic.dice", s.dice), "2tp / (2tp + fp + fn)"],
    ["precision", cell("semantic.precision", s.precision), "tp / (tp + fp)"],
    ["recall", cell("semantic.recall", s.recall), "tp / (tp + fn)"],
  ]);
  const apRows = (["all", "small", "medium", "large"] as const)
    .map(
      (k) =>
        `<tr><th scope="row">${k}</th>${cell(`ap.${k}.ap`, ap[k].ap)}${cell(`ap.${k}.ap50`, ap[k].ap50)}${cell(`ap.${k}.ap75`, ap[k].ap75)}${countCell(`ap.${k}.gtObjects`, ap[k].gtObjects)}</tr>`,
    )
    .join("\n");
  const { small, medium, large } = r.instance.areaRangesVoxels;
  const other = rows([
    ["VI split", cell("vi.split", vi?.split), "H(pred | gt) in bits: false splits"],
    ["VI merge", cell("vi.merge", vi?.merge), "H(gt | pred) in bits: false merges"],
    ["VI total", cell("vi.total", vi?.total), "split + merge"],
    ["adapted Rand error", cell("adaptedRand.error", ar?.error), "1 - F-score of pair precision and recall (gt background ignored)"],
    ["one-component matches", cell("consistency.oneComponentShare", c.oneComponentShare), "share of gt objects matched by a prediction that is one 3D component"],
    ["flicker rate", cell("consistency.flickerRate", c.flickerRate), "matched objects whose prediction vanishes and reappears along z"],
    ["flicker objects", countCell("consistency.flickerObjects", c.flickerObjects), "matched objects with at least one flicker slice"],
    ["flicker slices", countCell("consistency.flickerSlices", c.flickerSlices), "slices where a matched object's prediction is missing, summed"],
  ]);
  return `
<h2>Semantic (voxel-wise)</h2>
<table class="metrics">${semantic}</table>
<h2>Instances (3D, MitoEM protocol)</h2>
<p>Instances: ${esc(r.instanceNote)}.</p>
<p><span data-metric="instances.gt.count" data-value="${r.instances.gt.count}">${r.instances.gt.count}</span> ground-truth objects,
${r.instances.pred.count} predicted, ${r.instance.matched} matched one-to-one at IoU &ge; 0.5
(${r.instance.falseNegatives} missed, ${r.instance.falsePositives} false positives). Predictions ranked by
${r.instance.scores === "given" ? "the given scores" : "voxel count"}. Size classes by ground-truth voxels:
small (${small[0]}, ${small[1]}], medium (${medium[0]}, ${medium[1]}], large &gt; ${large[0]} voxels.</p>
<table class="metrics"><tr><th></th><th>AP@[0.5:0.95]</th><th>AP@0.5</th><th>AP@0.75</th><th>gt objects</th></tr>
${apRows}</table>
<h2>Connectomics and 3D consistency</h2>
<table class="metrics">${other}</table>`;
}

function budgetSection(points: readonly BudgetPoint[]): string {
  if (points.length === 0) {
    return `<p class="missing">No annotation-budget results were given (<code>--budget-results</code>), so the metric-against-budget plot is omitted.</p>`;
  }
  const budgets = [...new Map(points.map((p) => [p.budget, p.budgetLabel])).entries()].sort((a, b) => a[0] - b[0]);
  const charts = BUDGET_METRICS.filter((m) => points.some((p) => p.metrics[m.key] !== undefined)).map((m) => {
    const names = [...new Set(points.filter((p) => p.metrics[m.key] !== undefined).map((p) => p.series))];
    return lineChart({
      title: `${m.label} against annotation budget`,
      xLabel: "share of slices annotated",
      yLabel: m.label,
      xLog: true,
      dots: true,
      xTicks: budgets.map(([value, label]) => ({ value, label })),
      series: names.map((name) => ({
        name,
        points: points.filter((p) => p.series === name && p.metrics[m.key] !== undefined).map((p) => [p.budget, p.metrics[m.key]!]),
      })),
    });
  });
  const files = [...new Set(points.map((p) => p.file))];
  return `<div class="plots">${charts.join("\n")}</div><p class="note">From ${files.map((f) => `<code>${esc(f)}</code>`).join(", ")}.</p>`;
}

function overlaySection(d: ReportData): string {
  const swatch = (name: string, rgb: readonly number[]) => `<span class="swatch" style="background: rgb(${rgb.join(",")})"></span>${esc(name)}`;
  const legend = `<p class="legend">${swatch("true positive", OVERLAY_COLOURS.truePositive)} ${swatch("false negative (missed)", OVERLAY_COLOURS.falseNegative)} ${swatch("false positive", OVERLAY_COLOURS.falsePositive)}
 &mdash; ${d.urls.image === undefined ? "over black (no <code>--image</code> given)" : `blended at ${OVERLAY_ALPHA} over the EM image`}${d.urls.mask === undefined ? "" : "; voxels outside the mask are not coloured"}.</p>`;
  const figures = d.overlays.map((o) => {
    const iou = sliceIou(d.slices, o.z);
    // Small slices are shown enlarged by a whole factor (crisp voxels), large ones fit the page.
    const zoom = o.width >= 256 ? Math.min(1, 560 / o.width) : Math.min(Math.floor(256 / o.width), Math.max(1, Math.floor(560 / o.width)));
    const w = Math.round(o.width * zoom);
    const h = Math.round(o.height * zoom);
    return `<figure data-z="${o.z}"><img src="data:image/png;base64,${o.png.toString("base64")}" width="${w}" height="${h}" alt="overlay of slice z=${o.z}">
<figcaption>z = ${o.z} &middot; IoU ${fmt(iou, 3)} &middot; ${esc(o.why)}${o.stride > 1 ? ` &middot; at 1/${o.stride} resolution` : ""}</figcaption></figure>`;
  });
  return `${legend}<div class="overlays">${figures.join("\n")}</div>`;
}

function linkSection(d: ReportData): string {
  const l = d.link;
  const steps =
    l.steps.length === 0
      ? "<p>The volumes are served over HTTP already; the link opens them directly.</p>"
      : `<p>The link reads the volumes from the Spatial-SAM bridge. Serve them first (the server's <code>--roots</code> must hold the
volume folders; relative paths in the URLs resolve against the server's working directory):</p><pre>${esc(l.steps.join("\n"))}</pre>`;
  return `<p><a id="neuroglancer-link" href="${esc(l.url)}">Open prediction and ground truth side by side in Neuroglancer</a></p>${steps}
<details><summary>Neuroglancer state</summary><pre>${esc(JSON.stringify(l.state, null, 1))}</pre></details>`;
}

const STYLE = `
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table.metrics { border-collapse: collapse; margin: 8px 0; }
table.metrics th, table.metrics td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
td.note, p.note { color: #666; font-size: 0.9em; }
.missing { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.overlays { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.9em; color: #444; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; border: 1px solid #555; vertical-align: middle; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; } dt { color: #666; } dd { margin: 0; }
`;

/** About six whole-slice ticks at a round step (1, 2, 5, 10, 20, 50, ...). */
function sliceTicks(Z: number): { value: number; label: string }[] {
  const raw = Math.max(1, (Z - 1) / 6);
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
  const ticks = [];
  for (let z = 0; z < Z; z += step) ticks.push({ value: z, label: String(z) });
  return ticks;
}

export function renderReportHtml(d: ReportData): string {
  const r = d.result;
  const Z = d.slices.tp.length;
  const perSlice = lineChart({
    title: "Foreground IoU per slice along z",
    xLabel: "z (slice)",
    yLabel: "IoU",
    series: [{ name: "IoU", points: Array.from({ length: Z }, (_, z): [number, number | null] => [z, sliceIou(d.slices, z)]) }],
    xTicks: sliceTicks(Z),
    dots: Z <= 64,
  });
  const objectIous = r.objects.map((o) => o.iou);
  const objectHist =
    objectIous.length === 0
      ? `<p class="missing">The ground truth has no objects: no per-object IoU histogram.</p>`
      : histogram({
          title: "Best IoU per ground-truth object",
          xLabel: "IoU with the best-overlapping prediction",
          values: objectIous,
          bins: 20,
          range: [0, 1],
          marker: { value: 0.5, label: "match" },
        });
  const source = (name: string, url: string | undefined) => (url === undefined ? "" : `<dt>${name}</dt><dd><code>${esc(url)}</code></dd>`);
  const companions = (d.companions ?? []).map((f) => `<a href="${esc(f)}">${esc(f)}</a>`).join(", ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Spatial-SAM evaluation report</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Spatial-SAM evaluation report</h1>
<dl>
${source("prediction", d.urls.pred)}${source("ground truth", d.urls.gt)}${source("mask", d.urls.mask)}${source("image", d.urls.image)}
<dt>volume</dt><dd>${r.shapeZyx.join(" &times; ")} voxels (z, y, x) at ${r.voxelSizeNm.join(" &times; ")} nm${r.masked ? `; ${r.voxels} voxels inside the mask scored` : ""}</dd>
<dt>instances</dt><dd id="instance-note">${esc(r.instanceNote)}</dd>
<dt>generated</dt><dd>${esc(d.generatedAt)}${companions === "" ? "" : ` &middot; ${companions}`}</dd>
</dl>
${metricsTables(r)}
<h2>Metric against annotation budget</h2>
${budgetSection(d.budget)}
<h2>Per-object IoU and per-slice IoU</h2>
<div class="plots">${objectHist}
${perSlice}</div>
<h2>Slice overlays</h2>
${overlaySection(d)}
<h2>Neuroglancer</h2>
${linkSection(d)}
</body>
</html>
`;
}

/** Writes the page to `<outDir>/report.html` atomically (temp file in the same folder, then rename). */
export async function writeReportHtml(html: string, outDir: string): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const file = join(outDir, "report.html");
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await writeFile(tmp, html, { flush: true });
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return file;
}
