// `npm run bench`: runs every benchmark in test/bench/ (each in its own process, one after the
// other so they do not compete for the 2 cores) and writes one results file, JSON and markdown,
// with the machine, the commit and the time. Nothing here asserts a time: it records.
//
//   npm run bench                      # all benchmarks
//   npm run bench -- eval volume_read  # only those whose file name contains a word given
import { spawnSync, execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { cpus, totalmem, platform, release } from "node:os";
import { join } from "node:path";

const here = import.meta.dirname;
const root = join(here, "..", "..");
const filters = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)))
  .sort();

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { cwd: root, encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

const machine = {
  cpu: cpus()[0]?.model ?? "unknown",
  logicalCpus: cpus().length,
  memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
  os: `${platform()} ${release()}`,
  node: process.version,
};
const started = new Date();
const results: { file: string; exitCode: number | null; seconds: number; output: string }[] = [];

for (const file of files) {
  process.stderr.write(`== ${file}\n`);
  const t = performance.now();
  const r = spawnSync(process.execPath, ["--import", "tsx", join(here, file)], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 * 2 ** 20 });
  const output = r.stdout ?? "";
  process.stdout.write(output);
  results.push({ file, exitCode: r.status, seconds: Math.round((performance.now() - t) / 100) / 10, output });
}

const record = { startedAt: started.toISOString(), commit: git(["rev-parse", "HEAD"]), dirty: git(["status", "--porcelain"]) !== "", machine, results };
const outDir = join(root, "test-artifacts", "bench");
mkdirSync(outDir, { recursive: true });
const stamp = started.toISOString().replace(/[:.]/g, "-");
const md = [
  `# Benchmarks ${record.startedAt}`,
  "",
  `commit ${record.commit}${record.dirty ? " (with uncommitted changes)" : ""}; ${machine.cpu}, ${machine.logicalCpus} logical CPUs, ${machine.memoryGiB} GiB, ${machine.os}, Node ${machine.node}`,
  "",
  ...results.flatMap((r) => [`## ${r.file} (exit ${r.exitCode}, ${r.seconds} s)`, "", "```", r.output.trimEnd(), "```", ""]),
].join("\n");
for (const [ext, text] of [["json", JSON.stringify(record, null, 2)], ["md", md]] as const) {
  const path = join(outDir, `bench-${stamp}.${ext}`);
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}
process.stderr.write(`results: ${join(outDir, `bench-${stamp}.{json,md}`)}\n`);
process.exitCode = results.some((r) => r.exitCode !== 0) ? 1 : 0;
