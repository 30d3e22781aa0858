// `spatial-sam eval`: scores a predicted segmentation against ground truth and prints (or writes)
// the metrics. The lead wires it into server/cli.ts with registerEvalCommand(program).

import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { InvalidArgumentError, Option } from "commander";
import { isSpatialSamError, SpatialSamError } from "#src/errors.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { evaluate } from "./evaluate.ts";
import type { EvalResult } from "./evaluate.ts";
import { writeEvalReport } from "./report.ts";

/** Where the command writes; tests pass their own. */
export interface EvalCommandIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Reports a failure (default: message on stderr and exit code 1). */
  fail(message: string, error: unknown): void;
}

const defaultIo: EvalCommandIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  fail(message) {
    process.stderr.write(`error: ${message}\n`);
    process.exitCode = 1;
  },
};

interface EvalCommandOptions {
  pred: string;
  gt: string;
  mask?: string;
  out?: string;
  json?: boolean;
  connectivity: 6 | 26;
  block?: Vec3;
  root: string[];
  cacheMib: number;
  gtInstances: "auto" | "connected-components" | "labels";
  predInstances: "auto" | "connected-components" | "labels";
}

function parseConnectivity(value: string): 6 | 26 {
  if (value === "6") return 6;
  if (value === "26") return 26;
  throw new InvalidArgumentError("expected 6 or 26");
}

function parseCacheMib(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a number of MiB >= 0");
  return n;
}

function parseBlock(value: string): Vec3 {
  const parts = value.split(",").map((s) => Number(s.trim()));
  if (parts.length !== 3 || !parts.every((n) => Number.isInteger(n) && n > 0)) {
    throw new InvalidArgumentError("expected three positive integers z,y,x, e.g. 32,256,256");
  }
  return parts as Vec3;
}

/** Opens a volume, naming the argument in any error ("pred: NotFound ..."). */
async function openNamed(name: string, url: string, roots: string[], cache: ChunkCache): Promise<VolumeSource> {
  try {
    // Imported here, not at the top: the format drivers are heavy and `--help` should not wait for them.
    const { openVolume } = await import("#server/volume/open_volume.ts");
    return await openVolume(url, { roots, cache });
  } catch (e) {
    if (isSpatialSamError(e)) throw new SpatialSamError(e._tag, e.message, { field: name, cause: e });
    throw e;
  }
}

const num = (v: number | null | undefined, digits = 4) => (v === null || v === undefined ? "n/a" : v.toFixed(digits));

export function formatSummary(r: EvalResult): string {
  const ap = r.instance.ap;
  const lines = [
    `volume ${r.shapeZyx.join("x")} voxels at ${r.voxelSizeNm.join("x")} nm${r.masked ? `, ${r.voxels} voxels inside the mask` : ""}`,
    `instances: ${r.instanceNote}`,
    `objects: ${r.instances.gt.count} gt, ${r.instances.pred.count} predicted, ${r.instance.matched} matched at IoU >= 0.5`,
    "",
    `semantic   IoU ${num(r.semantic.iou)}  Dice ${num(r.semantic.dice)}  precision ${num(r.semantic.precision)}  recall ${num(r.semantic.recall)}`,
    `instance   AP@[.5:.95] ${num(ap.all.ap)}  AP@.5 ${num(ap.all.ap50)}  AP@.75 ${num(ap.all.ap75)}`,
    ...(["small", "medium", "large"] as const).map(
      (k) => `  ${k.padEnd(7)} (${ap[k].gtObjects} gt)  AP ${num(ap[k].ap)}  AP@.5 ${num(ap[k].ap50)}  AP@.75 ${num(ap[k].ap75)}`,
    ),
    `connectomics  VI split ${num(r.connectomics.vi?.split)}  merge ${num(r.connectomics.vi?.merge)} bits   adapted Rand error ${num(r.connectomics.adaptedRand?.error)}`,
    `3D consistency  one-component matches ${num(r.consistency.oneComponentShare)}  flicker: ${r.consistency.flickerObjects} objects, ${r.consistency.flickerSlices} slices`,
  ];
  return lines.join("\n") + "\n";
}

export async function runEval(opts: EvalCommandOptions, io: EvalCommandIo): Promise<EvalResult> {
  const sources: VolumeSource[] = [];
  const controller = new AbortController();
  const onSigint = () => controller.abort(new Error("interrupted"));
  process.once("SIGINT", onSigint);
  const bar = new SingleBar({
    stream: io.stderr,
    format: "eval [{bar}] {percentage}% | {value}/{total} blocks | ETA {eta}s",
    hideCursor: true,
    clearOnComplete: true,
  });
  let barStarted = false;
  // The sweep reads every chunk once when blocks hold whole chunks, so a small private cache
  // suffices; the process-wide default (512 MiB) would only keep the volume in memory.
  const cache = new ChunkCache({ maxBytes: opts.cacheMib * 2 ** 20 });
  try {
    const pred = await openNamed("pred", opts.pred, opts.root, cache);
    sources.push(pred);
    const gt = await openNamed("gt", opts.gt, opts.root, cache);
    sources.push(gt);
    const mask = opts.mask === undefined ? undefined : await openNamed("mask", opts.mask, opts.root, cache);
    if (mask !== undefined) sources.push(mask);
    const result = await evaluate(pred, gt, {
      ...(mask === undefined ? {} : { mask }),
      ...(opts.block === undefined ? {} : { blockShapeZyx: opts.block }),
      connectivity: opts.connectivity,
      gtInstances: opts.gtInstances,
      predInstances: opts.predInstances,
      signal: controller.signal,
      onProgress: (p) => {
        if (!barStarted) {
          bar.start(p.blocksTotal, 0);
          barStarted = true;
        }
        bar.update(p.blocksDone);
      },
    });
    if (barStarted) bar.stop();
    barStarted = false;
    if (opts.out !== undefined) {
      const files = await writeEvalReport(result, opts.out);
      if (!opts.json) io.stderr.write(`wrote ${files.metricsJson} and ${files.perObjectCsv}\n`);
    }
    io.stdout.write(opts.json ? JSON.stringify(result, null, 1) + "\n" : formatSummary(result));
    return result;
  } finally {
    if (barStarted) bar.stop();
    process.removeListener("SIGINT", onSigint);
    await Promise.allSettled(sources.map((s) => s.close()));
  }
}

export function registerEvalCommand(program: Command, io: EvalCommandIo = defaultIo): Command {
  const instances = ["auto", "connected-components", "labels"];
  return program
    .command("eval")
    .description(
      "Score a predicted segmentation against ground truth: semantic IoU/Dice, MitoEM AP, VI, adapted Rand, 3D consistency. " +
        "Volumes are URLs such as zarr:///data/pred.zarr.",
    )
    .requiredOption("--pred <url>", "predicted label volume")
    .requiredOption("--gt <url>", "ground-truth label volume (semantic volumes get 3D connected components)")
    .option("--mask <url>", "only voxels where this volume is nonzero are scored")
    .option("--out <dir>", "write metrics.json and per_object.csv here")
    .option("--json", "print the full result as JSON instead of a summary")
    .option("--connectivity <n>", "connected-component neighbourhood: 6 or 26", parseConnectivity, 6)
    .option("--block <z,y,x>", "block read and scored at a time (voxels)", parseBlock)
    .option("--cache-mib <n>", "decoded-chunk cache for this run", parseCacheMib, 64)
    .addOption(new Option("--gt-instances <how>", "instances of the ground truth").choices(instances).default("auto"))
    .addOption(new Option("--pred-instances <how>", "instances of the prediction").choices(instances).default("auto"))
    // The CLI runs with the invoking user's own file permissions; roots confine the server, not
    // a local command, so by default any local path may be read.
    .option("--root <dir...>", "folders local volumes may be read from", ["/"])
    .action(async (opts: EvalCommandOptions) => {
      try {
        await runEval(opts, io);
      } catch (e) {
        io.fail(isSpatialSamError(e) ? e.message : e instanceof Error ? e.message : String(e), e);
      }
    });
}
