// Builds the viewer bundle (neuroglancer-layer/ with Vite) into neuroglancer-layer/dist, and
// rebuilds it only when its inputs changed: `npm start` and the browser tests call
// ensureViewerBuilt(); `npm run build:viewer` runs this file, which always builds.
//
// A build goes to a fresh folder under .cache/ and is renamed into place, so a server never serves
// a half-written bundle. Builds of one dist take turns under a lock file beside it (`<dist>.lock`,
// holding the builder's pid; a lock whose process is gone is taken over), and a process that waited
// uses the bundle the other one put in place instead of replacing it: replacing it removed the files
// of a bundle another test process's page was loading (CI, 2026-12-06: the viewer never got ready).

import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
export const LAYER_DIR = join(REPO, "neuroglancer-layer");
export const VIEWER_DIST = join(LAYER_DIR, "dist");
const STAMP = ".build-stamp";
/** Files in neuroglancer-layer/ that are not inputs of the bundle. */
const NOT_INPUTS = new Set(["dist", "README.md", "screenshot.png"]);

function filesUnder(dir: string, skip: ReadonlySet<string> = new Set()): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (skip.has(entry.name)) continue;
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(p));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

/** A hash of everything the bundle is made from: the layer's sources, src/ (it imports #src), and the tool versions. */
export function viewerInputsHash(): string {
  const h = createHash("sha256");
  const files = [...filesUnder(LAYER_DIR, NOT_INPUTS), ...filesUnder(join(REPO, "src"))].sort();
  for (const f of files) {
    h.update(relative(REPO, f)).update("\0").update(readFileSync(f)).update("\0");
  }
  for (const pkg of ["neuroglancer", "vite"]) {
    const manifest = join(REPO, "node_modules", pkg, "package.json");
    h.update(`${pkg}@${existsSync(manifest) ? (JSON.parse(readFileSync(manifest, "utf8")) as { version: string }).version : "missing"}\0`);
  }
  h.update(JSON.stringify((JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { imports?: unknown }).imports ?? {}));
  return h.digest("hex");
}

/** True when dist holds a build of the current inputs. */
export function viewerIsCurrent(dist = VIEWER_DIST): boolean {
  const stamp = join(dist, STAMP);
  return existsSync(join(dist, "index.html")) && existsSync(stamp) && readFileSync(stamp, "utf8") === viewerInputsHash();
}

export interface BuildResult {
  built: boolean;
  ms: number;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Runs `fn` holding `<dist>.lock` (created exclusively, holding this pid); waits while a live process holds it. */
export async function withBuildLock<T>(dist: string, fn: () => Promise<T>, pollMs = 200): Promise<T> {
  const lock = `${dist}.lock`;
  await mkdir(dirname(dist), { recursive: true });
  for (;;) {
    try {
      await writeFile(lock, String(process.pid), { flag: "wx" });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const owner = Number.parseInt(await readFile(lock, "utf8").catch(() => ""), 10);
      // An empty lock is one being written: wait. One whose process is gone was left by a killed build.
      if (Number.isInteger(owner) && owner > 0 && !alive(owner)) await rm(lock, { force: true });
      else await new Promise((r) => setTimeout(r, pollMs));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}

async function viteBuild(outDir: string): Promise<void> {
  // Vite is a dev dependency, needed only here.
  const { build } = await import("vite");
  await build({ configFile: join(LAYER_DIR, "vite.config.ts"), logLevel: "warn", build: { outDir, emptyOutDir: true } });
}

/** Builds the viewer into `dist` (always when `force`, else only when missing or stale); `build` writes a bundle into its folder (Vite). */
export async function ensureViewerBuilt(
  options: { force?: boolean; dist?: string; build?: (outDir: string) => Promise<void> } = {},
): Promise<BuildResult> {
  const dist = options.dist ?? VIEWER_DIST;
  const t0 = performance.now();
  if (!options.force && viewerIsCurrent(dist)) return { built: false, ms: performance.now() - t0 };
  return withBuildLock(dist, async () => {
    // Another process may have built it while this one waited: keep that bundle, its pages may be loading.
    if (!options.force && viewerIsCurrent(dist)) return { built: false, ms: performance.now() - t0 };
    const hash = viewerInputsHash();
    const tmp = join(REPO, ".cache", `viewer-build-${process.pid}-${Date.now()}`);
    await mkdir(tmp, { recursive: true });
    try {
      await (options.build ?? viteBuild)(tmp);
      await writeFile(join(tmp, STAMP), hash);
      await rm(dist, { recursive: true, force: true });
      await rename(tmp, dist);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return { built: true, ms: performance.now() - t0 };
  });
}

// `npm run build:viewer`
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  ensureViewerBuilt({ force: true })
    .then(({ ms }) => {
      const size = filesUnder(VIEWER_DIST).reduce((n, f) => n + statSync(f).size, 0);
      process.stdout.write(`viewer built in ${(ms / 1000).toFixed(1)} s: ${relative(process.cwd(), VIEWER_DIST)} (${(size / 1e6).toFixed(2)} MB)\n`);
    })
    .catch((e: unknown) => {
      process.stderr.write(`build:viewer: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    });
}
