// Voxel-wise (semantic) foreground scores from confusion counts. Counts add up over blocks, so a
// volume of any size is scored by summing per-block counts.

export interface ConfusionCounts {
  /** Foreground in both. */
  tp: number;
  /** Foreground in the prediction only. */
  fp: number;
  /** Foreground in the ground truth only. */
  fn: number;
  /** Background in both. */
  tn: number;
}

export interface SemanticScores {
  /** Foreground IoU (Jaccard) tp / (tp + fp + fn); null when both volumes are all background. */
  iou: number | null;
  /** Dice (F1) 2tp / (2tp + fp + fn). */
  dice: number | null;
  /** tp / (tp + fp); null without predicted foreground. */
  precision: number | null;
  /** tp / (tp + fn); null without ground-truth foreground. */
  recall: number | null;
}

const ratio = (a: number, b: number): number | null => (b === 0 ? null : a / b);

export function semanticScores({ tp, fp, fn }: ConfusionCounts): SemanticScores {
  return {
    iou: ratio(tp, tp + fp + fn),
    dice: ratio(2 * tp, 2 * tp + fp + fn),
    precision: ratio(tp, tp + fp),
    recall: ratio(tp, tp + fn),
  };
}
