// When the viewer bundle counts as current: a dist whose stamp is the hash of today's inputs (the
// layer's sources, src/, tool versions). The build itself runs in the browser test.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { viewerInputsHash, viewerIsCurrent } from "#server/bridge/viewer_build.ts";

const dir = mkdtempSync(join(tmpdir(), "viewer-build-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("viewerIsCurrent", () => {
  it("is true only for a dist with an index.html and the stamp of the current inputs", () => {
    const dist = join(dir, "dist");
    expect(viewerIsCurrent(dist)).toBe(false);
    mkdirSync(dist);
    writeFileSync(join(dist, ".build-stamp"), viewerInputsHash());
    expect(viewerIsCurrent(dist)).toBe(false);
    writeFileSync(join(dist, "index.html"), "<!doctype html>");
    expect(viewerIsCurrent(dist)).toBe(true);
    writeFileSync(join(dist, ".build-stamp"), "0".repeat(64));
    expect(viewerIsCurrent(dist)).toBe(false);
  });
});
