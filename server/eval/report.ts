// Writes an evaluation to a folder: metrics.json (every score, the per-object rows included) and
// per_object.csv, each atomically (temp file in the same folder, then rename).

import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { objectTableCsv } from "#src/metrics/object_table.ts";
import type { EvalResult } from "./evaluate.ts";

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await writeFile(tmp, text, { flush: true });
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

export interface EvalReportFiles {
  metricsJson: string;
  perObjectCsv: string;
}

export async function writeEvalReport(result: EvalResult, outDir: string): Promise<EvalReportFiles> {
  await mkdir(outDir, { recursive: true });
  const files = { metricsJson: join(outDir, "metrics.json"), perObjectCsv: join(outDir, "per_object.csv") };
  await writeAtomic(files.metricsJson, JSON.stringify(result, null, 1) + "\n");
  await writeAtomic(files.perObjectCsv, objectTableCsv(result));
  return files;
}
