// Runs models/spatialsam/fixtures/volumes_zarr_n5.py into a fresh temp folder and loads its
// manifest (the Zarr/N5 golden cases written by zarr-python and tensorstore).

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { expect } from "vitest";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { readNpy } from "#test/helpers/npy.ts";

export const REPO_ROOT = path.resolve(import.meta.dirname, "../..");
export const PYTHON = path.join(REPO_ROOT, "models/.venv/bin/python");
export const GENERATOR = path.join(REPO_ROOT, "models/spatialsam/fixtures/volumes_zarr_n5.py");

export interface FixtureLevel {
  shape: number[];
  chunks: number[];
  voxelSizeNm: number[];
  offset: number[];
  expected: string;
}

export interface FixtureCase {
  name: string;
  url: string;
  format: "zarr-v2" | "zarr-v3" | "n5";
  dtype: DataType;
  fill: string;
  levels: FixtureLevel[];
  missingKey: string | null;
}

export interface ZarrN5Fixtures {
  dir: string;
  cases: Map<string, FixtureCase>;
  expected(c: FixtureCase, level: number): TypedArray;
  cleanup(): void;
}

export function makeZarrN5Fixtures(): ZarrN5Fixtures {
  const dir = mkdtempSync(path.join(tmpdir(), "volumes-zarr-n5-"));
  execFileSync(PYTHON, [GENERATOR, "volumes", dir], { stdio: ["ignore", "ignore", "inherit"] });
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as { cases: FixtureCase[] };
  return {
    dir,
    cases: new Map(manifest.cases.map((c) => [c.name, c])),
    expected: (c, level) => readNpy(path.join(dir, c.levels[level]!.expected)).data,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The volume URL scheme of a fixture case. */
export const schemeOf = (c: FixtureCase) => (c.format === "n5" ? "n5" : "zarr");

/** Exact equality (same type, length, every element; NaN equals NaN), reporting the first mismatch. */
export function expectSameArray(actual: TypedArray, expected: TypedArray): void {
  expect(actual.constructor.name).toBe(expected.constructor.name);
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) expect.fail(`element ${i}: got ${actual[i]}, expected ${expected[i]}`);
  }
}

/** The C-order crop [offset, offset + crop) of a (z, y, x) array, by plain indexing. */
export function cropZyx(a: TypedArray, shape: readonly number[], offset: readonly number[], crop: readonly number[]): TypedArray {
  const out = new (a.constructor as new (n: number) => TypedArray)(crop[0]! * crop[1]! * crop[2]!) as Uint8Array;
  const src = a as Uint8Array;
  let o = 0;
  for (let z = 0; z < crop[0]!; z++) {
    for (let y = 0; y < crop[1]!; y++) {
      for (let x = 0; x < crop[2]!; x++) out[o++] = src[((offset[0]! + z) * shape[1]! + offset[1]! + y) * shape[2]! + offset[2]! + x]!;
    }
  }
  return out as TypedArray;
}
