// `spatial-sam report`: evaluates a prediction against ground truth and writes a self-contained HTML
// page (metrics, plots, colour-coded slice overlays, Neuroglancer link) plus metrics.json and
// per_object.csv. The heavy modules (format drivers, PNG encoder) load only when it runs.

import { setMaxListeners } from "node:events";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { isSpatialSamError, SpatialSamError } from "#src/errors.ts";
import type { VolumeSource } from "#src/volume/types.ts";
import type { EvalCommandIo } from "./eval_command.ts";
import type { EvalResult } from "./evaluate.ts";

export interface ReportCommandOptions {
  pred: string;
  gt: string;
  mask?: string;
  image?: string;
  out: string;
  budgetResults?: string[];
  slices: number;
  overlayMaxPx: number;
  bridge: string;
  connectivity: 6 | 26;
  root: string[];
  cacheMib: number;
}

export interface ReportFiles {
  html: string;
  metricsJson: string;
  perObjectCsv: string;
}

const defaultIo: EvalCommandIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  fail(message) {
    process.stderr.write(`error: ${message}\n`);
    process.exitCode = 1;
  },
};

function parseConnectivity(value: string): 6 | 26 {
  if (value === "6") return 6;
  if (value === "26") return 26;
  throw new InvalidArgumentError("expected 6 or 26");
}

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InvalidArgumentError("expected an integer in [1, 64]");
  return n;
}

function parseSidePx(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 16) throw new InvalidArgumentError("expected an integer >= 16");
  return n;
}

function parseCacheMib(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a number of MiB >= 0");
  return n;
}

function parseHttpUrl(value: string): string {
  try {
    const u = new URL(value);
    if (u.protocol === "http:" || u.protocol === "https:") return u.href;
  } catch {
    // falls through to the error below
  }
  throw new InvalidArgumentError("expected an http(s) URL, e.g. http://127.0.0.1:8080/");
}

export async function runReport(opts: ReportCommandOptions, io: EvalCommandIo, signal?: AbortSignal): Promise<{ result: EvalResult; files: ReportFiles }> {
  // Imported here: the format drivers and pngjs are heavy and `--help` should not wait for them.
  const [{ openVolume }, { ChunkCache }, { evaluate }, { writeEvalReport }, overlay, slices, budget, link, html] = await Promise.all([
    import("#server/volume/open_volume.ts"),
    import("#server/volume/chunk_cache.ts"),
    import("./evaluate.ts"),
    import("./report.ts"),
    import("./overlay.ts"),
    import("./slice_stats.ts"),
    import("./budget_results.ts"),
    import("./neuroglancer_link.ts"),
    import("./report_html.ts"),
  ]);
  const sources: VolumeSource[] = [];
  // The report reads each volume twice (evaluation, per-slice counts) plus a few slices: a cache of
  // a slab or so saves re-decoding chunks shared by neighbouring reads, without holding the volume.
  const cache = new ChunkCache({ maxBytes: opts.cacheMib * 2 ** 20 });
  const open = async (name: string, url: string) => {
    try {
      const v = await openVolume(url, { roots: opts.root, cache });
      sources.push(v);
      return v;
    } catch (e) {
      if (isSpatialSamError(e)) throw new SpatialSamError(e._tag, e.message, { field: name, cause: e });
      throw e;
    }
  };
  try {
    // Budget files first: a typo there should not cost a whole evaluation.
    const budgetPoints = await budget.readBudgetResults(opts.budgetResults ?? []);
    const pred = await open("pred", opts.pred);
    const gt = await open("gt", opts.gt);
    const mask = opts.mask === undefined ? undefined : await open("mask", opts.mask);
    const image = opts.image === undefined ? undefined : await open("image", opts.image);
    if (image !== undefined) overlay.checkImage(image, gt);

    io.stderr.write("evaluating...\n");
    const result = await evaluate(pred, gt, { ...(mask === undefined ? {} : { mask }), connectivity: opts.connectivity, ...(signal === undefined ? {} : { signal }) });
    io.stderr.write("per-slice counts...\n");
    const counts = await slices.sliceCounts(pred, gt, { ...(mask === undefined ? {} : { mask }), ...(signal === undefined ? {} : { signal }) });
    const picked = slices.pickSlices(counts, opts.slices);
    const overlays = [];
    for (const p of picked) {
      const rendered = await overlay.renderOverlay(
        { pred, gt, ...(mask === undefined ? {} : { mask }), ...(image === undefined ? {} : { image }) },
        p.z,
        { maxSidePx: opts.overlayMaxPx, ...(signal === undefined ? {} : { signal }) },
      );
      overlays.push({ ...p, ...rendered });
    }
    const level = gt.metadata.scales[0]!;
    const worst = picked.find((p) => p.why === "worst IoU") ?? picked[0];
    const ngLink = link.neuroglancerLink(
      [
        ...(opts.image === undefined ? [] : [{ role: "image" as const, url: opts.image }]),
        { role: "ground truth", url: opts.gt },
        { role: "prediction", url: opts.pred },
      ],
      { bridgeUrl: opts.bridge, voxelSizeNm: level.voxelSizeNm, shapeZyx: level.shapeZyx, offsetZyx: level.offsetZyx, z: worst?.z ?? 0 },
    );
    const evalFiles = await writeEvalReport(result, opts.out);
    const page = html.renderReportHtml({
      result,
      urls: { pred: opts.pred, gt: opts.gt, ...(opts.mask === undefined ? {} : { mask: opts.mask }), ...(opts.image === undefined ? {} : { image: opts.image }) },
      slices: counts,
      overlays,
      budget: budgetPoints,
      link: ngLink,
      generatedAt: new Date().toISOString(),
      companions: ["metrics.json", "per_object.csv"],
    });
    const htmlFile = await html.writeReportHtml(page, opts.out);
    const files = { html: htmlFile, ...evalFiles };
    io.stdout.write(`wrote ${files.html}\n`);
    return { result, files };
  } finally {
    await Promise.allSettled(sources.map((s) => s.close()));
  }
}

export function registerReportCommand(program: Command, io: EvalCommandIo = defaultIo): Command {
  return program
    .command("report")
    .description(
      "Evaluate a prediction against ground truth and write a self-contained HTML report (metrics, plots, " +
        "cyan/magenta/yellow slice overlays, Neuroglancer link) with metrics.json and per_object.csv.",
    )
    .requiredOption("--pred <url>", "predicted label volume, e.g. zarr:///data/pred.zarr")
    .requiredOption("--gt <url>", "ground-truth label volume (semantic volumes get 3D connected components)")
    .option("--mask <url>", "only voxels where this volume is nonzero are scored")
    .option("--image <url>", "EM image shown under the overlays (same shape as gt)")
    .requiredOption("--out <dir>", "folder for report.html, metrics.json, per_object.csv")
    .option("--budget-results <json...>", "results of runs at several annotation budgets (e.g. the models benchmark's results.json)")
    .option("--slices <n>", "overlay slices: worst, median and best IoU, then evenly spaced", parsePositiveInt, 6)
    .option("--overlay-max-px <n>", "longest overlay side; larger slices are subsampled", parseSidePx, 1024)
    .option("--bridge <url>", "the spatial-sam serve HTTP address the Neuroglancer link points at", parseHttpUrl, "http://127.0.0.1:8080/")
    .option("--connectivity <n>", "connected-component neighbourhood: 6 or 26", parseConnectivity, 6)
    .option("--cache-mib <n>", "decoded-chunk cache for this run", parseCacheMib, 64)
    // As for eval: a local command reads with the user's own permissions.
    .option("--root <dir...>", "folders local volumes may be read from", ["/"])
    .action(async (opts: ReportCommandOptions) => {
      const controller = new AbortController();
      // Every chunk read in flight listens on this one signal; more than 10 at once is expected.
      setMaxListeners(0, controller.signal);
      const onSigint = () => controller.abort(new Error("interrupted"));
      process.once("SIGINT", onSigint);
      try {
        await runReport(opts, io, controller.signal);
      } catch (e) {
        io.fail(isSpatialSamError(e) ? e.message : e instanceof Error ? e.message : String(e), e);
      } finally {
        process.removeListener("SIGINT", onSigint);
      }
    });
}
