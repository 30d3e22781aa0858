// Connectomics scores from the contingency table, following scikit-image exactly
// (skimage.metrics.variation_of_information and adapted_rand_error, default arguments), so a
// number printed here is the number a Python user gets from the same volumes.

import type { Contingency } from "./contingency.ts";

export interface VariationOfInformation {
  /** H(pred | gt): false splits (over-segmentation), in bits. skimage's vi[0]. */
  split: number;
  /** H(gt | pred): false merges (under-segmentation), in bits. skimage's vi[1]. */
  merge: number;
}

/**
 * Variation of information in bits (log base 2), every voxel counted, background (0) being a
 * label like any other (skimage's default `ignore_labels=()`).
 */
export function variationOfInformation(t: Contingency): VariationOfInformation | null {
  if (t.total === 0) return null;
  let split = 0;
  let merge = 0;
  const N = t.total;
  for (let k = 0; k < t.count.length; k++) {
    const n = t.count[k]!;
    if (n === 0) continue;
    const pij = n / N;
    split -= pij * Math.log2(n / t.gtSize[t.gt[k]!]!);
    merge -= pij * Math.log2(n / t.predSize[t.pred[k]!]!);
  }
  return { split: split + 0, merge: merge + 0 };
}

export interface AdaptedRand {
  /** 1 - F-score of the pair precision and recall (alpha = 0.5). */
  error: number;
  /** As skimage returns it: pairs together in both / pairs together in the ground truth. */
  precision: number;
  /** Pairs together in both / pairs together in the prediction. */
  recall: number;
}

/**
 * Adapted Rand error as skimage.metrics.adapted_rand_error computes it with its default
 * `ignore_labels=(0,)`: voxels that are background in the ground truth are left out; background
 * in the prediction is a segment like any other. Null when a denominator is zero.
 */
export function adaptedRandError(t: Contingency): AdaptedRand | null {
  let sumP2 = 0;
  let sumP = 0;
  const b = new Float64Array(t.predCount + 1);
  for (let k = 0; k < t.count.length; k++) {
    if (t.gt[k] === 0) continue;
    const n = t.count[k]!;
    sumP2 += n * n;
    sumP += n;
    b[t.pred[k]!]! += n;
  }
  let sumA2 = 0;
  for (let g = 1; g <= t.gtCount; g++) sumA2 += t.gtSize[g]! * t.gtSize[g]!;
  let sumB2 = 0;
  for (let p = 0; p <= t.predCount; p++) sumB2 += b[p]! * b[p]!;
  const pairs = sumP2 - sumP;
  const a2 = sumA2 - sumP;
  const b2 = sumB2 - sumP;
  if (a2 === 0 || b2 === 0) return null;
  return { error: 1 - pairs / (0.5 * a2 + 0.5 * b2), precision: pairs / a2, recall: pairs / b2 };
}
