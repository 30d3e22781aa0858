// Results of several runs at different annotation budgets, read from JSON files for the report's
// metric-against-budget plot. Accepted: the models benchmark's results.json ({rows: [...]}, rows with
// method/name, budget "1/64" and fg_iou, dice, ap50, ap75), a bare array of such rows, or one
// `spatial-sam eval` metrics.json with a "budget" (and optionally "name") field added.

import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { dataCorruption, invalidArgument, notFound } from "#src/errors.ts";

export const BUDGET_METRICS = [
  { key: "iou", label: "foreground IoU" },
  { key: "dice", label: "Dice" },
  { key: "ap", label: "AP@[0.5:0.95]" },
  { key: "ap50", label: "AP@0.5" },
  { key: "ap75", label: "AP@0.75" },
] as const;

export type BudgetMetric = (typeof BUDGET_METRICS)[number]["key"];

export interface BudgetPoint {
  /** Series: the run's method name, else the file name. */
  series: string;
  /** Share of slices annotated, in (0, 1]. */
  budget: number;
  /** As written in the file ("1/64"). */
  budgetLabel: string;
  metrics: Partial<Record<BudgetMetric, number>>;
  file: string;
}

/** "1/64", "0.25", 1 -> a number in (0, 1]; undefined when it is not a budget. */
export function parseBudget(v: unknown): number | undefined {
  let n: number | undefined;
  if (typeof v === "number") n = v;
  else if (typeof v === "string") {
    const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*(\d+(?:\.\d+)?)\s*$/.exec(v);
    n = m === null ? (v.trim() === "" ? undefined : Number(v)) : Number(m[1]) / Number(m[2]);
  }
  return n !== undefined && Number.isFinite(n) && n > 0 && n <= 1 ? n : undefined;
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);

function get(o: unknown, ...path: string[]): unknown {
  let v = o;
  for (const k of path) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

function metricsOf(row: Record<string, unknown>): Partial<Record<BudgetMetric, number>> {
  const m: Partial<Record<BudgetMetric, number>> = {};
  const put = (k: BudgetMetric, ...candidates: unknown[]) => {
    const v = candidates.map(num).find((x) => x !== undefined);
    if (v !== undefined) m[k] = v;
  };
  put("iou", row.fg_iou, row.iou, get(row, "semantic", "iou"));
  put("dice", row.dice, get(row, "semantic", "dice"));
  put("ap", row.ap, get(row, "instance", "ap", "all", "ap"));
  put("ap50", row.ap50, get(row, "instance", "ap", "all", "ap50"));
  put("ap75", row.ap75, get(row, "instance", "ap", "all", "ap75"));
  return m;
}

/** Reads every file; a file that cannot be read or holds no usable row is an error naming it. */
export async function readBudgetResults(files: readonly string[]): Promise<BudgetPoint[]> {
  const points: BudgetPoint[] = [];
  for (const [i, file] of files.entries()) {
    const field = `budgetResults[${i}]`;
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound(field, `${file}: no such file`);
      throw invalidArgument(field, `${file}: ${(e as Error).message}`, e);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw dataCorruption(field, `${file}: not JSON (${(e as Error).message})`, e);
    }
    const rows = Array.isArray(doc) ? doc : Array.isArray(get(doc, "rows")) ? (get(doc, "rows") as unknown[]) : [doc];
    let used = 0;
    for (const [r, row] of rows.entries()) {
      if (row === null || typeof row !== "object") throw dataCorruption(field, `${file}: row ${r} is not an object`);
      const o = row as Record<string, unknown>;
      const budget = parseBudget(o.budget);
      if (budget === undefined) throw dataCorruption(field, `${file}: row ${r} has no budget in (0, 1] (got ${JSON.stringify(o.budget)})`);
      const metrics = metricsOf(o);
      if (Object.keys(metrics).length === 0) continue;
      const series = typeof o.name === "string" ? o.name : typeof o.method === "string" ? o.method : basename(file);
      points.push({ series, budget, budgetLabel: String(o.budget), metrics, file });
      used++;
    }
    if (used === 0) throw dataCorruption(field, `${file}: no row with a budget and a metric (fg_iou, dice, ap, ap50, ap75)`);
  }
  return points;
}
