// The per-object table of an evaluation as CSV: one row per ground-truth object (its best
// prediction, IoU, match, z extent, flicker) and one per unmatched prediction (false positive).

import type { EvaluationMetrics } from "./evaluator.ts";

export const OBJECT_CSV_COLUMNS = [
  "kind", // "gt" or "false_positive"
  "gt_id", // gt object; for a false positive, the gt object it overlaps most (empty if none)
  "gt_voxels",
  "size_class", // MitoEM small/medium/large by gt voxels
  "pred_id",
  "pred_voxels",
  "iou",
  "matched", // iou >= 0.5, one-to-one
  "pred_components", // 3D components of the matched prediction
  "z_first",
  "z_last",
  "flicker_slices",
] as const;

const cell = (v: number | string | boolean | null | undefined): string => (v === null || v === undefined ? "" : String(v));

export function objectTableCsv(m: Pick<EvaluationMetrics, "objects" | "falsePositives">): string {
  const lines = [OBJECT_CSV_COLUMNS.join(",")];
  for (const o of m.objects) {
    lines.push(
      ["gt", o.gtId, o.gtVoxels, o.sizeClass, o.predId, o.predVoxels, o.iou, o.matched ? 1 : 0, o.predComponents, o.zFirst, o.zLast, o.flickerSlices]
        .map(cell)
        .join(","),
    );
  }
  for (const f of m.falsePositives) {
    lines.push(["false_positive", f.bestGtId, "", "", f.predId, f.predVoxels, f.iou, 0, "", "", "", ""].map(cell).join(","));
  }
  return lines.join("\n") + "\n";
}
