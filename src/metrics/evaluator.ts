// Scores a predicted label volume against ground truth from blocks fed in raster order: one pass
// builds connected components of both and their contingency table; `finish` derives every metric
// (semantic, instance AP, connectomics, 3D consistency) from those. Environment-neutral: the
// caller reads the blocks (server/eval/evaluate.ts does, from VolumeSources).

import type { TypedArray } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { BlockwiseComponents } from "./components.ts";
import type { InstanceSource, RawLabelTable, ResolvedInstances } from "./components.ts";
import { adaptedRandError, variationOfInformation } from "./connectomics.ts";
import type { AdaptedRand, VariationOfInformation } from "./connectomics.ts";
import { sliceStats } from "./consistency.ts";
import { ProvisionalContingency } from "./contingency.ts";
import type { Contingency } from "./contingency.ts";
import { averagePrecision, IOU_THRESHOLDS, MITOEM_AREA_RANGES, sizeClass } from "./instance_ap.ts";
import type { ApScores, AreaLabel } from "./instance_ap.ts";
import { BlockRuns } from "./runs.ts";
import type { Connectivity } from "./runs.ts";
import { semanticScores } from "./semantic.ts";
import type { ConfusionCounts, SemanticScores } from "./semantic.ts";

/** An instance id in reports: a number when it fits a double exactly, else its decimal string. */
export type ObjectId = number | string;

export interface EvaluatorOptions {
  /** 6 (faces, default) or 26 (faces, edges, corners). */
  connectivity?: Connectivity;
  /**
   * Where instances come from on each side. "auto" (default): connected components when the
   * volume holds a single nonzero label (semantic), its labels otherwise.
   */
  gtInstances?: "auto" | InstanceSource;
  predInstances?: "auto" | InstanceSource;
  /** Confidence per predicted instance id for AP ranking; default: the instance's voxel count (MitoEM's default). */
  predScores?: ReadonlyMap<bigint, number>;
}

export interface InstanceSummary {
  /** "connected-components": instances are 3D connected components of the nonzero voxels. */
  source: InstanceSource;
  connectivity: Connectivity;
  count: number;
}

export interface ObjectRow {
  gtId: ObjectId;
  gtVoxels: number;
  sizeClass: "small" | "medium" | "large";
  /** Prediction with the highest IoU with this object (null if none overlaps). */
  predId: ObjectId | null;
  predVoxels: number | null;
  iou: number;
  /** iou >= 0.5 */
  matched: boolean;
  /** 3D connected components the matched prediction consists of (null when unmatched). */
  predComponents: number | null;
  zFirst: number;
  zLast: number;
  flickerSlices: number;
}

export interface FalsePositiveRow {
  predId: ObjectId;
  predVoxels: number;
  /** Ground-truth object with the highest IoU (null if none overlaps). */
  bestGtId: ObjectId | null;
  iou: number;
}

export interface EvaluationMetrics {
  /** Voxels scored (inside the mask when one is given). */
  voxels: number;
  instances: { gt: InstanceSummary; pred: InstanceSummary };
  semantic: ConfusionCounts & SemanticScores;
  instance: {
    iouThresholds: readonly number[];
    /** Size classes in voxels, (lo, hi]. */
    areaRangesVoxels: typeof MITOEM_AREA_RANGES;
    /** What ranked predictions for AP. */
    scores: "voxel-count" | "given";
    ap: Record<AreaLabel, ApScores>;
    /** Ground-truth objects matched at IoU >= 0.5 (one-to-one). */
    matched: number;
    falsePositives: number;
    falseNegatives: number;
  };
  connectomics: {
    /** Variation of information in bits (skimage convention, background included). */
    vi: (VariationOfInformation & { total: number }) | null;
    /** skimage.metrics.adapted_rand_error (gt background ignored). */
    adaptedRand: AdaptedRand | null;
  };
  consistency: {
    /** Share of gt objects matched (IoU >= 0.5) by a prediction that is one 3D connected component. */
    oneComponentShare: number | null;
    /** Matched objects whose prediction flickers along z, and the flicker slices summed over them. */
    flickerObjects: number;
    flickerSlices: number;
    /** flickerObjects / matched objects. */
    flickerRate: number | null;
  };
  objects: ObjectRow[];
  falsePositives: FalsePositiveRow[];
}

const MATCH_IOU = 0.5;

export function objectId(id: bigint): ObjectId {
  return id <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(id) : id.toString();
}

/** Normalises a block of labels into uint32 working values (64-bit labels get block-local codes). */
class LabelReader {
  values = new Uint32Array(0);
  constructor(private readonly field: string) {}
  readonly raw: RawLabelTable = { lo: new Uint32Array(256), hi: new Uint32Array(256) };

  read(data: TypedArray, n: number): RawLabelTable | undefined {
    if (this.values.length < n) this.values = new Uint32Array(n);
    const v = this.values.subarray(0, n);
    if (data instanceof Float32Array || data instanceof Float64Array) {
      throw invalidArgument(this.field, "labels must be integers, got floating-point values");
    }
    if (!(data instanceof BigUint64Array || data instanceof BigInt64Array)) {
      v.set(data.subarray(0, n));
      return undefined;
    }
    const codes = new Map<bigint, number>([[0n, 0]]);
    let last = 0n;
    let lastCode = 0;
    const u = data instanceof BigUint64Array ? data : new BigUint64Array(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < n; i++) {
      const x = u[i]!;
      if (x !== last) {
        let c = codes.get(x);
        if (c === undefined) {
          c = codes.size;
          codes.set(x, c);
          if (c >= this.raw.lo.length) {
            const lo = new Uint32Array(c * 2);
            lo.set(this.raw.lo);
            const hi = new Uint32Array(c * 2);
            hi.set(this.raw.hi);
            this.raw.lo = lo;
            this.raw.hi = hi;
          }
          this.raw.lo[c] = Number(x & 0xffffffffn);
          this.raw.hi[c] = Number(x >> 32n);
        }
        last = x;
        lastCode = c;
      }
      v[i] = lastCode;
    }
    return this.raw;
  }
}

export class BlockwiseEvaluator {
  private readonly connectivity: Connectivity;
  private readonly gtCc: BlockwiseComponents;
  private readonly predCc: BlockwiseComponents;
  private readonly table: ProvisionalContingency;
  private readonly gtRuns = new BlockRuns();
  private readonly predRuns = new BlockRuns();
  private readonly gtReader = new LabelReader("gt");
  private readonly predReader = new LabelReader("pred");
  private readonly scratch = { parent: new Int32Array(1024) };
  private mask = new Uint8Array(0);
  private gtProv = new Uint32Array(0);

  constructor(
    readonly shapeZyx: Vec3,
    readonly maxBlockShapeZyx: Vec3,
    private readonly options: EvaluatorOptions = {},
  ) {
    this.connectivity = options.connectivity ?? 6;
    this.gtCc = new BlockwiseComponents(shapeZyx, maxBlockShapeZyx, this.connectivity);
    this.predCc = new BlockwiseComponents(shapeZyx, maxBlockShapeZyx, this.connectivity);
    this.table = new ProvisionalContingency(maxBlockShapeZyx[0]);
  }

  /**
   * Adds one block (box relative to the volume's first voxel), in raster order of blocks: z slabs,
   * rows of blocks along y, then x. `mask` (optional): voxels where it is 0 are not scored.
   */
  addBlock(box: Box3, gt: TypedArray, pred: TypedArray, mask?: TypedArray): void {
    const shape = box.shapeZyx;
    const n = shape[0] * shape[1] * shape[2];
    const gtRaw = this.gtReader.read(gt, n);
    const predRaw = this.predReader.read(pred, n);
    let m: Uint8Array | undefined;
    if (mask !== undefined) {
      if (this.mask.length < n) this.mask = new Uint8Array(n);
      m = this.mask.subarray(0, n);
      if (mask instanceof BigUint64Array || mask instanceof BigInt64Array) for (let i = 0; i < n; i++) m[i] = mask[i] === 0n ? 0 : 1;
      else for (let i = 0; i < n; i++) m[i] = mask[i] === 0 ? 0 : 1;
    }
    this.gtRuns.extract(this.gtReader.values, shape, m);
    this.predRuns.extract(this.predReader.values, shape, m);
    this.gtRuns.labelComponents(this.connectivity, this.scratch);
    this.predRuns.labelComponents(this.connectivity, this.scratch);
    this.gtCc.addBlock(this.gtRuns, box.offsetZyx, gtRaw);
    // The gt provisional ids must survive the pred pass (both components objects own a runProv).
    if (this.gtProv.length < this.gtRuns.count) this.gtProv = new Uint32Array(this.gtRuns.start.length);
    this.gtProv.set(this.gtCc.runProv.subarray(0, this.gtRuns.count));
    this.predCc.addBlock(this.predRuns, box.offsetZyx, predRaw);
    this.table.addBlock(this.gtRuns, this.gtProv, this.predRuns, this.predCc.runProv, box.offsetZyx[0]);
  }

  private source(which: "auto" | InstanceSource | undefined, cc: BlockwiseComponents): InstanceSource {
    if (which !== undefined && which !== "auto") return which;
    return cc.distinctLabels <= 1 ? "connected-components" : "labels";
  }

  finish(): EvaluationMetrics {
    const gt = this.gtCc.resolve(this.source(this.options.gtInstances, this.gtCc));
    const pred = this.predCc.resolve(this.source(this.options.predInstances, this.predCc));
    const t = this.table.resolve(gt, pred);
    return scoreTable(t, gt, pred, this.connectivity, this.options.predScores, (matchOfGt) =>
      sliceStats(this.table, t, gt.instanceOfProv, matchOfGt),
    );
  }
}

function scoreTable(
  t: Contingency,
  gt: ResolvedInstances,
  pred: ResolvedInstances,
  connectivity: Connectivity,
  predScores: ReadonlyMap<bigint, number> | undefined,
  slices: (matchOfGt: Int32Array) => ReturnType<typeof sliceStats>,
): EvaluationMetrics {
  const NG = t.gtCount;
  const NP = t.predCount;
  const counts: ConfusionCounts = { tp: 0, fp: 0, fn: 0, tn: 0 };
  const fg: number[] = [];
  const iou = new Float64Array(t.count.length);
  for (let k = 0; k < t.count.length; k++) {
    const g = t.gt[k]!;
    const p = t.pred[k]!;
    const n = t.count[k]!;
    if (g === 0) {
      if (p === 0) counts.tn += n;
      else counts.fp += n;
    } else if (p === 0) counts.fn += n;
    else {
      counts.tp += n;
      iou[k] = n / (t.gtSize[g]! + t.predSize[p]! - n);
      fg.push(k);
    }
  }

  const score = new Float64Array(NP + 1);
  for (let p = 1; p <= NP; p++) score[p] = predScores?.get(pred.ids[p - 1]!) ?? t.predSize[p]!;
  const ap = averagePrecision({
    gtSize: t.gtSize,
    predSize: t.predSize,
    predScore: score,
    pairGt: Uint32Array.from(fg, (k) => t.gt[k]!),
    pairPred: Uint32Array.from(fg, (k) => t.pred[k]!),
    pairIou: Float64Array.from(fg, (k) => iou[k]!),
  });

  // Best pair per object and per prediction (highest IoU; ties keep the lower index).
  const bestOfGt = new Int32Array(NG + 1).fill(-1);
  const bestOfPred = new Int32Array(NP + 1).fill(-1);
  for (const k of fg) {
    const g = t.gt[k]!;
    const p = t.pred[k]!;
    const bg = bestOfGt[g]!;
    if (bg < 0 || iou[k]! > iou[bg]! || (iou[k] === iou[bg] && p < t.pred[bg]!)) bestOfGt[g] = k;
    const bp = bestOfPred[p]!;
    if (bp < 0 || iou[k]! > iou[bp]! || (iou[k] === iou[bp] && g < t.gt[bp]!)) bestOfPred[p] = k;
  }
  // One-to-one matches at IoU >= 0.5, greedy by IoU (unique anyway when instances do not overlap).
  const matchOfGt = new Int32Array(NG + 1).fill(-1);
  const predTaken = new Uint8Array(NP + 1);
  for (const k of fg.filter((k) => iou[k]! >= MATCH_IOU).sort((a, b) => iou[b]! - iou[a]! || a - b)) {
    if (matchOfGt[t.gt[k]!]! >= 0 || predTaken[t.pred[k]!]) continue;
    matchOfGt[t.gt[k]!] = k;
    predTaken[t.pred[k]!] = 1;
  }
  const { zFirst, zLast, flicker } = slices(matchOfGt);

  const objects: ObjectRow[] = [];
  let matched = 0;
  let oneComponent = 0;
  let flickerObjects = 0;
  let flickerSlices = 0;
  for (let g = 1; g <= NG; g++) {
    const k = matchOfGt[g]! >= 0 ? matchOfGt[g]! : bestOfGt[g]!;
    const p = k >= 0 ? t.pred[k]! : 0;
    const isMatched = matchOfGt[g]! >= 0;
    const comps = isMatched ? pred.componentsPerInstance[p]! : null;
    if (isMatched) {
      matched++;
      if (comps === 1) oneComponent++;
      if (flicker[g]! > 0) flickerObjects++;
      flickerSlices += flicker[g]!;
    }
    objects.push({
      gtId: objectId(gt.ids[g - 1]!),
      gtVoxels: t.gtSize[g]!,
      sizeClass: sizeClass(t.gtSize[g]!),
      predId: p === 0 ? null : objectId(pred.ids[p - 1]!),
      predVoxels: p === 0 ? null : t.predSize[p]!,
      iou: k >= 0 ? iou[k]! : 0,
      matched: isMatched,
      predComponents: comps,
      zFirst: zFirst[g]!,
      zLast: zLast[g]!,
      flickerSlices: flicker[g]!,
    });
  }
  const falsePositives: FalsePositiveRow[] = [];
  for (let p = 1; p <= NP; p++) {
    if (predTaken[p]) continue;
    const k = bestOfPred[p]!;
    falsePositives.push({
      predId: objectId(pred.ids[p - 1]!),
      predVoxels: t.predSize[p]!,
      bestGtId: k >= 0 ? objectId(gt.ids[t.gt[k]! - 1]!) : null,
      iou: k >= 0 ? iou[k]! : 0,
    });
  }

  const vi = variationOfInformation(t);
  return {
    voxels: t.total,
    instances: {
      gt: { source: gt.source, connectivity, count: NG },
      pred: { source: pred.source, connectivity, count: NP },
    },
    semantic: { ...counts, ...semanticScores(counts) },
    instance: {
      iouThresholds: IOU_THRESHOLDS,
      areaRangesVoxels: MITOEM_AREA_RANGES,
      scores: predScores === undefined ? "voxel-count" : "given",
      ap,
      matched,
      falsePositives: NP - matched,
      falseNegatives: NG - matched,
    },
    connectomics: {
      vi: vi === null ? null : { ...vi, total: vi.split + vi.merge },
      adaptedRand: adaptedRandError(t),
    },
    consistency: {
      oneComponentShare: NG === 0 ? null : oneComponent / NG,
      flickerObjects,
      flickerSlices,
      flickerRate: matched === 0 ? null : flickerObjects / matched,
    },
    objects,
    falsePositives,
  };
}
