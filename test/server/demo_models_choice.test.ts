// demoModels: which propagator and SDF model `npm start` serves from a models folder: the demo pair
// first, the Lucchi++ pair as a further propagator, a pair only when both of its parts are there.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { demoModels } from "#server/demo.ts";

let dir: string;
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function touch(...path: string[]): void {
  mkdirSync(join(dir, ...path.slice(0, -1)), { recursive: true });
  writeFileSync(join(dir, ...path), "{}");
}

describe("demoModels", () => {
  it("prefers the demo pair and keeps the Lucchi++ propagator as a further one", () => {
    dir = mkdtempSync(join(tmpdir(), "demo-models-"));
    expect(demoModels(dir)).toBeUndefined();
    touch("propagator_lucchi", "propagator.json");
    touch("sdf_unet3d_lucchi", "model.json");
    expect(demoModels(dir)).toEqual({ propagator: join(dir, "propagator_lucchi"), sdfModel: "sdf_unet3d_lucchi", more: [] });
    touch("propagator_demo", "propagator.json");
    // Without its SDF model the demo propagator is not used.
    expect(demoModels(dir)?.propagator).toBe(join(dir, "propagator_lucchi"));
    touch("sdf_unet3d_demo", "model.json");
    expect(demoModels(dir)).toEqual({ propagator: join(dir, "propagator_demo"), sdfModel: "sdf_unet3d_demo", more: [join(dir, "propagator_lucchi")] });
  });

  it("finds the shipped models of this repository", () => {
    dir = mkdtempSync(join(tmpdir(), "demo-models-"));
    const shipped = demoModels(join(import.meta.dirname, "..", "..", "models"));
    expect(shipped?.sdfModel).toBe("sdf_unet3d_demo");
  });
});
