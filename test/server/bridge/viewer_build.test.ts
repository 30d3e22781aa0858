// When the viewer bundle counts as current (a dist whose stamp is the hash of today's inputs: the
// layer's sources, src/, tool versions), and how builds of one dist take turns. The Vite build itself
// runs in the browser tests; here a stand-in writes the bundle so that the turn-taking can be timed.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { ensureViewerBuilt, viewerInputsHash, viewerIsCurrent, withBuildLock } from "#server/bridge/viewer_build.ts";

const dir = mkdtempSync(join(tmpdir(), "viewer-build-"));
// Builds are renamed from the repository's .cache/ into place: a dist on the same file system.
const cacheDir = fileURLToPath(new URL("../../../.cache/", import.meta.url));
mkdirSync(cacheDir, { recursive: true });
const repoDir = mkdtempSync(join(cacheDir, "viewer-build-test-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(repoDir, { recursive: true, force: true });
});

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

describe("ensureViewerBuilt", () => {
  it("builds once when two callers race; the second keeps the first's bundle instead of replacing it", async () => {
    const dist = join(repoDir, "race", "dist");
    let builds = 0;
    const build = async (outDir: string) => {
      builds++;
      await new Promise((r) => setTimeout(r, 300));
      writeFileSync(join(outDir, "index.html"), `<!doctype html><!-- ${builds} -->`);
      writeFileSync(join(outDir, "main.js"), "");
    };
    const [a, b] = await Promise.all([ensureViewerBuilt({ dist, build }), ensureViewerBuilt({ dist, build })]);
    expect(builds).toBe(1);
    expect([a.built, b.built].sort()).toEqual([false, true]);
    expect(viewerIsCurrent(dist)).toBe(true);
    expect(readFileSync(join(dist, "index.html"), "utf8")).toContain("<!-- 1 -->");
    expect(existsSync(`${dist}.lock`)).toBe(false);
    // Current: no build, no lock taken. Forced: built again, in place of the old one.
    expect((await ensureViewerBuilt({ dist, build })).built).toBe(false);
    expect((await ensureViewerBuilt({ dist, build, force: true })).built).toBe(true);
    expect(builds).toBe(2);
    expect(readFileSync(join(dist, "index.html"), "utf8")).toContain("<!-- 2 -->");
    // A failed build leaves the bundle in place and no lock or temporary folder behind (this process's:
    // other test processes build into .cache/ at the same time).
    const ours = () => readdirSync(cacheDir).filter((n) => n.startsWith(`viewer-build-${process.pid}-`));
    await expect(ensureViewerBuilt({ dist, force: true, build: async () => { throw new Error("vite: boom"); } })).rejects.toThrow("boom");
    expect(viewerIsCurrent(dist)).toBe(true);
    expect(existsSync(`${dist}.lock`)).toBe(false);
    expect(ours()).toEqual([]);
  });

  it("waits for a live lock holder and takes over the lock of a process that is gone", async () => {
    const dist = join(repoDir, "lock", "dist");
    mkdirSync(join(repoDir, "lock"));
    const order: string[] = [];
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    const first = withBuildLock(dist, async () => {
      order.push("first in");
      entered();
      await new Promise((r) => setTimeout(r, 300));
      order.push("first out");
    }, 20);
    await inside;
    await withBuildLock(dist, async () => void order.push("second"), 20);
    await first;
    expect(order).toEqual(["first in", "first out", "second"]);
    // A lock left by a killed build (its pid no longer runs) does not block the next one.
    const gone = spawnSync(process.execPath, ["-e", ""]).pid;
    writeFileSync(`${dist}.lock`, String(gone));
    expect(await withBuildLock(dist, async () => "ran", 20)).toBe("ran");
    expect(existsSync(`${dist}.lock`)).toBe(false);
  });
});
