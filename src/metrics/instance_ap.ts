// Instance average precision as the MitoEM challenge scores it: COCO-style AP over 3D objects,
// IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision, and a small/medium/large split
// by ground-truth object volume in voxels.
//
// Differences from MitoEM's evaluation code (github.com/ygCoconut/mAP_3Dvolume, used by
// github.com/donglaiw/MitoEM-challenge), stated so the numbers can be compared:
// - Matching is COCO's greedy one-to-one matching in score order. MitoEM matches each prediction
//   to its best-IoU object without removing it; for IoU >= 0.5 and non-overlapping instances the
//   two agree except for ties at exactly 0.5.
// - Predictions tied on score keep ascending id order (a stable sort; MitoEM's argsort is not stable).
// - There is no cap on detections (MitoEM has none either; COCO's maxDets=100 is per image).

/**
 * MitoEM's size classes in voxels, from mAP_3Dvolume demo.py `--threshold` default "5e3, 1.5e4":
 * small (0, 5e3], medium (5e3, 1.5e4], large (1.5e4, 1e10]; ranges are (lo, hi] as in its
 * vol3d_eval.py (`gic <= lo` or `gic > hi` is ignored).
 */
export const MITOEM_AREA_RANGES = {
  all: [0, 1e10],
  small: [0, 5e3],
  medium: [5e3, 1.5e4],
  large: [1.5e4, 1e10],
} as const satisfies Record<string, readonly [number, number]>;

export type AreaLabel = keyof typeof MITOEM_AREA_RANGES;
export const AREA_LABELS: readonly AreaLabel[] = ["all", "small", "medium", "large"];

/** numpy.linspace(start, stop, num) to the last bit (i * step + start, endpoint exact). */
function linspace(start: number, stop: number, num: number): number[] {
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : i * step + start));
}

export const IOU_THRESHOLDS: readonly number[] = linspace(0.5, 0.95, 10);
export const RECALL_THRESHOLDS: readonly number[] = linspace(0, 1, 101);
/** numpy.spacing(1): pycocotools adds it to precision denominators. */
const EPS = 2 ** -52;

export function sizeClass(voxels: number): Exclude<AreaLabel, "all"> {
  return voxels <= MITOEM_AREA_RANGES.small[1] ? "small" : voxels <= MITOEM_AREA_RANGES.medium[1] ? "medium" : "large";
}

export interface ApInput {
  /** Voxels of gt instance g at [g], g = 1..NG (index 0 unused). */
  gtSize: Float64Array;
  /** Voxels of predicted instance p at [p], p = 1..NP. */
  predSize: Float64Array;
  /** Confidence of prediction p at [p]; higher ranks first. */
  predScore: Float64Array;
  /** Overlapping (gt, pred) pairs, both nonzero, with their IoU. */
  pairGt: Uint32Array;
  pairPred: Uint32Array;
  pairIou: Float64Array;
}

export interface ApScores {
  /** AP averaged over the ten IoU thresholds (AP@[0.5:0.95]); null without gt objects in the range. */
  ap: number | null;
  ap50: number | null;
  ap75: number | null;
  /** AP at each of IOU_THRESHOLDS. */
  perThreshold: (number | null)[];
  /** Ground-truth objects in the size range. */
  gtObjects: number;
}

export function averagePrecision(input: ApInput): Record<AreaLabel, ApScores> {
  const NG = input.gtSize.length - 1;
  const NP = input.predSize.length - 1;
  // Candidates of each prediction, ascending gt index (COCO keeps gt order within a tie).
  const byPred = new Int32Array(NP + 2);
  for (let k = 0; k < input.pairPred.length; k++) byPred[input.pairPred[k]! + 1]!++;
  for (let p = 0; p <= NP; p++) byPred[p + 1]! += byPred[p]!;
  const candGt = new Uint32Array(input.pairPred.length);
  const candIou = new Float64Array(input.pairPred.length);
  const fill = byPred.slice();
  const order = Array.from(input.pairPred.keys()).sort((a, b) => input.pairGt[a]! - input.pairGt[b]!);
  for (const k of order) {
    const at = fill[input.pairPred[k]!]!++;
    candGt[at] = input.pairGt[k]!;
    candIou[at] = input.pairIou[k]!;
  }
  const ranked = Array.from({ length: NP }, (_, i) => i + 1).sort((a, b) => input.predScore[b]! - input.predScore[a]! || a - b);

  const out = {} as Record<AreaLabel, ApScores>;
  for (const label of AREA_LABELS) {
    const [lo, hi] = MITOEM_AREA_RANGES[label];
    const outside = (v: number) => v <= lo || v > hi;
    const gtIgnored = new Uint8Array(NG + 1);
    let npig = 0;
    for (let g = 1; g <= NG; g++) {
      gtIgnored[g] = outside(input.gtSize[g]!) ? 1 : 0;
      if (gtIgnored[g] === 0) npig++;
    }
    const perThreshold: (number | null)[] = [];
    for (const t of IOU_THRESHOLDS) {
      if (npig === 0) {
        perThreshold.push(null);
        continue;
      }
      const gtMatched = new Uint8Array(NG + 1);
      const tp = new Float64Array(NP);
      const fp = new Float64Array(NP);
      let tpSum = 0;
      let fpSum = 0;
      ranked.forEach((p, d) => {
        let best = Math.min(t, 1 - 1e-10);
        let m = -1;
        // Non-ignored candidates first, then ignored ones (COCO sorts gts that way).
        search: for (const wantIgnored of [0, 1]) {
          for (let c = byPred[p]!; c < byPred[p + 1]!; c++) {
            const g = candGt[c]!;
            if (gtIgnored[g] !== wantIgnored || gtMatched[g] === 1) continue;
            if (m > -1 && gtIgnored[m] === 0 && gtIgnored[g] === 1) break search;
            if (candIou[c]! < best) continue;
            best = candIou[c]!;
            m = g;
          }
        }
        let ignored: boolean;
        if (m > -1) {
          gtMatched[m] = 1;
          ignored = gtIgnored[m] === 1;
          if (!ignored) tpSum++;
        } else {
          ignored = outside(input.predSize[p]!);
          if (!ignored) fpSum++;
        }
        tp[d] = tpSum;
        fp[d] = fpSum;
      });
      const rc = new Float64Array(NP);
      const pr = new Float64Array(NP);
      for (let d = 0; d < NP; d++) {
        rc[d] = tp[d]! / npig;
        pr[d] = tp[d]! / (fp[d]! + tp[d]! + EPS);
      }
      for (let d = NP - 1; d > 0; d--) if (pr[d]! > pr[d - 1]!) pr[d - 1] = pr[d]!;
      let sum = 0;
      let idx = 0;
      for (const r of RECALL_THRESHOLDS) {
        while (idx < NP && rc[idx]! < r) idx++;
        sum += idx < NP ? pr[idx]! : 0;
      }
      perThreshold.push(sum / RECALL_THRESHOLDS.length);
    }
    const valid = perThreshold.filter((v): v is number => v !== null);
    out[label] = {
      ap: valid.length === 0 ? null : valid.reduce((a, b) => a + b, 0) / valid.length,
      ap50: perThreshold[0]!,
      ap75: perThreshold[5]!,
      perThreshold,
      gtObjects: npig,
    };
  }
  return out;
}
