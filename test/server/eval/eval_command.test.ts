// `spatial-sam eval` end to end on real Zarr v2 files written by the golden generator, through
// openVolume: the JSON it prints equals the Python references, --out writes the report, and bad
// input (missing file, float labels, shape mismatch) fails with a message naming the argument.

import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerEvalCommand } from "#server/eval/eval_command.ts";
import type { EvalResult } from "#server/eval/evaluate.ts";
import { generateGolden, loadGolden } from "#test/src/metrics/golden.ts";
import type { GoldenCase } from "#test/src/metrics/golden.ts";
import { runCommand } from "#test/helpers/command_harness.ts";

let dir = "";
let golden: GoldenCase;
beforeAll(() => {
  dir = generateGolden();
  golden = loadGolden(dir).find((c) => c.name === "sizes_random")!;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(...args: string[]) {
  return runCommand(registerEvalCommand, "eval", args);
}

const zarr = (name: string) => `zarr://${join(dir, "zarr", name)}`;

describe("spatial-sam eval", () => {
  it("prints the full result as JSON and writes the report", async () => {
    const out = join(dir, "report");
    const r = await cli("--pred", zarr("pred.zarr"), "--gt", zarr("gt.zarr"), "--out", out, "--json", "--block", "16,32,32");
    expect(r.failures).toEqual([]);
    const result = JSON.parse(r.stdout) as EvalResult;
    const e = golden.expected;
    expect(result.shapeZyx).toEqual([40, 64, 80]);
    expect(result.blockShapeZyx).toEqual([16, 32, 32]);
    expect(result.semantic).toMatchObject(e.semantic);
    for (const k of ["ap", "ap50", "ap75"] as const) expect(Math.abs(result.instance.ap.all[k]! - e.ap.all[k]!)).toBeLessThan(1e-9);
    expect(Math.abs(result.connectomics.vi!.split - e.vi.split)).toBeLessThan(1e-9);
    expect(Math.abs(result.connectomics.vi!.merge - e.vi.merge)).toBeLessThan(1e-9);
    expect(Math.abs(result.connectomics.adaptedRand!.error - e.adaptedRand.error)).toBeLessThan(1e-9);
    expect(JSON.parse(readFileSync(join(out, "metrics.json"), "utf8")).instance.matched).toBe(e.matched);
    expect(existsSync(join(out, "per_object.csv"))).toBe(true);
  });

  it("prints a readable summary by default", async () => {
    const r = await cli("--pred", zarr("pred.zarr"), "--gt", zarr("gt.zarr"));
    expect(r.failures).toEqual([]);
    expect(r.stdout).toContain(`AP@[.5:.95] ${golden.expected.ap.all.ap!.toFixed(4)}`);
    expect(r.stdout).toContain("instances: gt: instance labels as stored");
  });

  it("names the missing file's argument", async () => {
    const r = await cli("--pred", zarr("nothing_here.zarr"), "--gt", zarr("gt.zarr"));
    expect(r.failures.length).toBe(1);
    expect(r.failures[0]).toMatch(/^pred: /);
    expect(r.failures[0]).toContain("nothing_here.zarr");
    expect(r.errors[0]).toMatchObject({ _tag: "NotFound", field: "pred" });
  });

  it("refuses float labels and shape mismatches, naming pred", async () => {
    const f = await cli("--pred", zarr("pred_float.zarr"), "--gt", zarr("gt.zarr"));
    expect(f.failures).toEqual([expect.stringMatching(/^pred: labels must be integers, got float32/)]);
    expect(f.errors[0]).toMatchObject({ _tag: "InvalidArgument", field: "pred" });
    const s = await cli("--pred", zarr("pred_cropped.zarr"), "--gt", zarr("gt.zarr"));
    expect(s.failures).toEqual(["pred: shape 40x64x72 does not match gt shape 40x64x80"]);
  });

  it("rejects a malformed --block before reading anything", async () => {
    await expect(cli("--pred", zarr("pred.zarr"), "--gt", zarr("gt.zarr"), "--block", "4,4")).rejects.toThrow(/three positive integers/);
  });
});
