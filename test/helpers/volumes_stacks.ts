// Runs models/spatialsam/fixtures/volumes_stacks.py into a fresh temp folder (the golden TIFF, PNG
// and HDF5 fixtures with their expected .npy arrays) and compares decoded arrays with them.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { expect } from "vitest";
import type { TypedArray } from "#src/dtype.ts";

export const REPO_ROOT = path.resolve(import.meta.dirname, "../..");
export const PYTHON = path.join(REPO_ROOT, "models/.venv/bin/python");

/** Generates the fixtures; returns the folder and a function that removes it. */
export function makeStackFixtures(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), "volumes-stacks-"));
  execFileSync(PYTHON, [path.join(REPO_ROOT, "models/spatialsam/fixtures/volumes_stacks.py"), dir], { stdio: ["ignore", "ignore", "inherit"] });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Exact equality (same type, length and every element), reporting the first mismatch. */
export function expectSameArray(actual: TypedArray, expected: TypedArray): void {
  expect(actual.constructor.name).toBe(expected.constructor.name);
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) {
      expect.fail(`element ${i}: got ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

/** The C-order crop [offset, offset + shape) of a (z, y, x) array. */
export function crop(a: TypedArray, shapeZyx: readonly number[], offsetZyx: readonly number[], cropZyx: readonly number[]): TypedArray {
  const [, ny, nx] = shapeZyx as [number, number, number];
  const out = new (a.constructor as new (n: number) => TypedArray)(cropZyx[0]! * cropZyx[1]! * cropZyx[2]!);
  let o = 0;
  for (let z = 0; z < cropZyx[0]!; z++) {
    for (let y = 0; y < cropZyx[1]!; y++) {
      const start = ((offsetZyx[0]! + z) * ny + offsetZyx[1]! + y) * nx + offsetZyx[2]!;
      out.set(a.subarray(start, start + cropZyx[2]!) as never, o);
      o += cropZyx[2]!;
    }
  }
  return out;
}
