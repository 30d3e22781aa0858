// Evaluates a predicted segmentation against ground truth, reading both VolumeSources block by
// block (the next block is read while the current one is scored), so memory is bounded by the
// block shape and the number of objects, not by the volume.

import { DATA_TYPES } from "#src/dtype.ts";
import { invalidArgument, throwIfAborted } from "#src/errors.ts";
import { BlockwiseEvaluator } from "#src/metrics/evaluator.ts";
import type { EvaluationMetrics, EvaluatorOptions } from "#src/metrics/evaluator.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";
import type { TypedArray } from "#src/dtype.ts";

export interface EvalProgress {
  blocksDone: number;
  blocksTotal: number;
  voxelsDone: number;
  voxelsTotal: number;
}

export interface EvaluateOptions extends EvaluatorOptions {
  /** Voxels where the mask is 0 are not scored. Same shape as gt. */
  mask?: VolumeSource;
  /** Block read and scored at a time; default about 4 Mi voxels in whole gt chunks (see defaultBlockShape). */
  blockShapeZyx?: Vec3;
  /** Scale level to evaluate (default 0, full resolution). */
  scale?: number;
  signal?: AbortSignal;
  onProgress?: (progress: EvalProgress) => void;
}

export interface EvalResult extends EvaluationMetrics {
  shapeZyx: Vec3;
  voxelSizeNm: Vec3;
  blockShapeZyx: Vec3;
  masked: boolean;
  /** How instances were obtained, in words (e.g. "gt: 3D connected components (6-connectivity)"). */
  instanceNote: string;
  elapsedMs: number;
}

const fmt = (v: readonly number[]) => v.join("x");

function levelOf(name: string, source: VolumeSource, scale: number) {
  const level = source.metadata.scales[scale];
  if (level === undefined) throw invalidArgument(name, `has no scale level ${scale} (it has ${source.metadata.scales.length})`);
  if (level.shapeZyx.some((n) => n === 0)) throw invalidArgument(name, `volume is empty (shape ${fmt(level.shapeZyx)})`);
  return level;
}

function checkLabels(name: string, source: VolumeSource): void {
  const dtype = source.metadata.dtype;
  if (DATA_TYPES[dtype].isFloat) {
    throw invalidArgument(name, `labels must be integers, got ${dtype} (threshold or convert a probability map to labels first)`);
  }
}

function sameVoxelSize(a: Vec3, b: Vec3): boolean {
  return a.every((v, i) => Math.abs(v - b[i]!) <= 1e-6 * Math.max(Math.abs(v), Math.abs(b[i]!)));
}

/**
 * About 4 Mi voxels per block: 256x256 in y and x rounded up to whole chunks, then as many
 * slices as fit, rounded up to whole chunks, so no chunk is read by two blocks.
 */
function defaultBlockShape(shape: Vec3, chunk: Vec3): Vec3 {
  const fit = (want: number, i: number) => Math.min(shape[i]!, Math.max(1, Math.ceil(want / chunk[i]!)) * chunk[i]!);
  const by = fit(256, 1);
  const bx = fit(256, 2);
  return [fit(Math.max(1, Math.floor(2 ** 22 / (by * bx))), 0), by, bx];
}

export async function evaluate(pred: VolumeSource, gt: VolumeSource, options: EvaluateOptions = {}): Promise<EvalResult> {
  const started = performance.now();
  const scale = options.scale ?? 0;
  checkLabels("gt", gt);
  checkLabels("pred", pred);
  const gtLevel = levelOf("gt", gt, scale);
  const predLevel = levelOf("pred", pred, scale);
  const shape = gtLevel.shapeZyx;
  if (!predLevel.shapeZyx.every((n, i) => n === shape[i])) {
    throw invalidArgument("pred", `shape ${fmt(predLevel.shapeZyx)} does not match gt shape ${fmt(shape)}`);
  }
  if (!sameVoxelSize(predLevel.voxelSizeNm, gtLevel.voxelSizeNm)) {
    throw invalidArgument("pred", `voxel size ${fmt(predLevel.voxelSizeNm)} nm does not match gt voxel size ${fmt(gtLevel.voxelSizeNm)} nm`);
  }
  const maskLevel = options.mask === undefined ? undefined : levelOf("mask", options.mask, scale);
  if (maskLevel !== undefined && !maskLevel.shapeZyx.every((n, i) => n === shape[i])) {
    throw invalidArgument("mask", `shape ${fmt(maskLevel.shapeZyx)} does not match gt shape ${fmt(shape)}`);
  }
  const block = options.blockShapeZyx ?? defaultBlockShape(shape, gtLevel.chunkShapeZyx);
  if (block.length !== 3 || !block.every((n) => Number.isInteger(n) && n > 0)) {
    throw invalidArgument("blockShapeZyx", `expected 3 positive integers, got ${JSON.stringify(block)}`);
  }
  const blockShape = block.map((n, i) => Math.min(n, shape[i]!)) as Vec3;

  const evaluator = new BlockwiseEvaluator(shape, blockShape, options);
  const boxes: Box3[] = [];
  for (let z = 0; z < shape[0]; z += blockShape[0])
    for (let y = 0; y < shape[1]; y += blockShape[1])
      for (let x = 0; x < shape[2]; x += blockShape[2]) {
        const offsetZyx: Vec3 = [z, y, x];
        boxes.push({ offsetZyx, shapeZyx: offsetZyx.map((o, i) => Math.min(blockShape[i]!, shape[i]! - o)) as Vec3 });
      }

  const signal = options.signal;
  const at = (level: { offsetZyx: Vec3 }, box: Box3): Box3 => ({
    offsetZyx: box.offsetZyx.map((o, i) => o + level.offsetZyx[i]!) as Vec3,
    shapeZyx: box.shapeZyx,
  });
  const read = (box: Box3): Promise<[TypedArray, TypedArray, TypedArray | undefined]> =>
    Promise.all([
      gt.read(at(gtLevel, box), scale, { signal }),
      pred.read(at(predLevel, box), scale, { signal }),
      options.mask === undefined || maskLevel === undefined ? undefined : options.mask.read(at(maskLevel, box), scale, { signal }),
    ]);

  const voxelsTotal = shape[0] * shape[1] * shape[2];
  let voxelsDone = 0;
  let next = read(boxes[0]!);
  for (let b = 0; b < boxes.length; b++) {
    throwIfAborted(signal);
    const [g, p, m] = await next;
    if (b + 1 < boxes.length) {
      next = read(boxes[b + 1]!);
      // Scoring may throw before the prefetch is awaited; its failure must not go unhandled.
      next.catch(() => undefined);
    }
    const box = boxes[b]!;
    const n = box.shapeZyx[0] * box.shapeZyx[1] * box.shapeZyx[2];
    for (const [name, a] of [["gt", g], ["pred", p], ["mask", m]] as const) {
      if (a !== undefined && a.length !== n) throw invalidArgument(name, `read of ${fmt(box.shapeZyx)} returned ${a.length} values`);
    }
    evaluator.addBlock(box, g, p, m);
    voxelsDone += n;
    options.onProgress?.({ blocksDone: b + 1, blocksTotal: boxes.length, voxelsDone, voxelsTotal });
  }
  throwIfAborted(signal);
  const metrics = evaluator.finish();
  const connectivity = metrics.instances.gt.connectivity;
  const describe = (side: "gt" | "pred") =>
    metrics.instances[side].source === "connected-components"
      ? `${side}: 3D connected components of the nonzero voxels (${connectivity}-connectivity)`
      : `${side}: instance labels as stored`;
  return {
    shapeZyx: [...shape],
    voxelSizeNm: [...gtLevel.voxelSizeNm],
    blockShapeZyx: blockShape,
    masked: options.mask !== undefined,
    instanceNote: `${describe("gt")}; ${describe("pred")}`,
    elapsedMs: performance.now() - started,
    ...metrics,
  };
}
