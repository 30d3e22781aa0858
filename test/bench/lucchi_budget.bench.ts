// The accuracy protocol of the models issue, as part of `npm run bench`: runs the Python harness
// models/bench/lucchi_budget.py (Lucchi++ from ../shared/data; methods a, b, b=, b2, c, d; fg-IoU,
// Dice, AP@0.5/0.75 on connected components, flicker) and prints its markdown table.
//
//   node --import tsx test/bench/lucchi_budget.bench.ts             # the smoke protocol (--quick, minutes)
//   LUCCHI_BENCH_ARGS="--jobs 2" node --import tsx test/bench/lucchi_budget.bench.ts
//                                      # the 1/64 comparison (about 1050 CPU-min on a 2-core CPU)
//   LUCCHI_BENCH_ARGS="--jobs 2 --budgets 1/64,1/16,1/4" ...          # with the budget curve
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dirname, "..", "..");
const python = join(root, "models", ".venv", "bin", "python");
const work = join(root, "test-artifacts", "lucchi_budget");
const extra = (process.env.LUCCHI_BENCH_ARGS ?? "--quick").split(/\s+/).filter(Boolean);
if (!existsSync(join(root, "..", "shared", "data", "lucchi_pp"))) {
  process.stdout.write("lucchi_budget: ../shared/data/lucchi_pp is not here; nothing to run\n");
  process.exit(0);
}
const r = spawnSync(python, [join(root, "models", "bench", "lucchi_budget.py"), "--work", work, "--no-progress", ...extra], { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
if (r.status !== 0) process.exit(r.status ?? 1);
const table = join(work, "results.md");
if (existsSync(table)) process.stdout.write(`\n${readFileSync(table, "utf8")}\n`);
