// Segment meshes in the viewer's 3D panel: the real server (serve(), demo volume) and Debian's
// chromium. The default state selects the demo's labelled objects; with the 3D panel's cross
// sections, axis lines and bounding boxes turned off, only meshes (and the panel's text labels)
// can light its pixels: many are lit with all segments shown, only the labels once deselected. Screenshot:
// test-artifacts/neuroglancer-layer/demo_3d_meshes.png.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureViewerBuilt } from "#server/bridge/viewer_build.ts";
import { demoBridgeVolumes, DEMO_SHAPE_ZYX, ensureDemoVolume } from "#server/demo.ts";
import type { RunningServer } from "#server/serve.ts";
import { launchChromium, type Rect, requireChromium } from "#test/helpers/browser.ts";
import { startTestServer } from "#test/helpers/test_server.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "neuroglancer-layer");

let server: RunningServer;
let modelsDir: string;
let browser: Browser;
let base: string;

beforeAll(async () => {
  requireChromium();
  await ensureViewerBuilt();
  const layers = await ensureDemoVolume(join(ROOT, ".cache", "demo"));
  modelsDir = mkdtempSync(join(tmpdir(), "meshes-test-models-"));
  server = await startTestServer(modelsDir, { httpPort: 0, modelsDir, roots: [join(ROOT, ".cache", "demo")], maxQueuePerModel: 1, bridge: { volumes: demoBridgeVolumes(layers) } });
  base = `http://127.0.0.1:${server.httpPort!}`;
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (modelsDir) rmSync(modelsDir, { recursive: true, force: true });
});


/** The 3D (perspective) panel's rectangle in CSS px. */
function perspectivePanel(page: Page): Promise<Rect> {
  return page.evaluate(() => {
    // Cross-section panels have a `sliceView`; the 3D panel has `sliceViews` (the sections it draws).
    const v = (window as unknown as { viewer: { display: { panels: Set<{ sliceViews?: unknown; element: HTMLElement }> } } }).viewer;
    const panel = [...v.display.panels].find((p) => p.sliceViews !== undefined);
    if (panel === undefined) throw new Error("no 3D panel");
    const r = panel.element.getBoundingClientRect();
    return { left: r.left, top: r.top, width: r.width, height: r.height };
  });
}

/** Pixels of `rect` brighter than the black 3D background (any channel above 40). */
function litPixels(png: PNG, rect: Rect): { lit: number; total: number } {
  let lit = 0;
  let total = 0;
  for (let y = Math.ceil(rect.top) + 1; y < rect.top + rect.height - 1; y++) {
    for (let x = Math.ceil(rect.left) + 1; x < rect.left + rect.width - 1; x++) {
      const i = (y * png.width + x) * 4;
      total++;
      if (Math.max(png.data[i]!, png.data[i + 1]!, png.data[i + 2]!) > 40) lit++;
    }
  }
  return { lit, total };
}

/** Waits until the viewer is ready and two screenshots in a row light the same pixels of the 3D panel. */
async function settledShot(page: Page, rect: Rect, path?: string): Promise<{ png: PNG; lit: number; total: number }> {
  let last = -1;
  for (let i = 0; i < 60; i++) {
    await page.waitForFunction(() => (window as unknown as { viewer: { isReady(): boolean } }).viewer.isReady(), null, { timeout: 30_000, polling: 100 });
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const png = PNG.sync.read(await page.screenshot(path === undefined ? {} : { path }));
    const { lit, total } = litPixels(png, rect);
    if (lit === last) return { png, lit, total };
    last = lit;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error("the 3D panel never settled");
}

describe("3D panel", () => {
  it("shows the meshes of the demo's labelled objects, served by the bridge", async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 }, deviceScaleFactor: 1 });
    const meshRequests: { path: string; status: number }[] = [];
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("response", (r) => {
      const u = new URL(r.url());
      if (u.origin === base && u.pathname.startsWith("/volumes/demo-labels/mesh/")) meshRequests.push({ path: u.pathname, status: r.status() });
    });
    try {
      await page.goto(`${base}/`);
      await page.waitForFunction(
        () => {
          const v = (window as unknown as { viewer?: { isReady(): boolean; layerManager: { managedLayers: unknown[] } } }).viewer;
          return v !== undefined && v.layerManager.managedLayers.length === 2 && v.isReady();
        },
        null,
        { timeout: 45_000, polling: 200 },
      );
      // The default state selects every labelled object of the demo.
      const [Z, Y, X] = DEMO_SHAPE_ZYX;
      const labels = (await server.bridge!.volumes.get("demo-labels").source.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)) as BigUint64Array;
      const ids = new Set<string>();
      for (const id of labels) if (id !== 0n) ids.add(id.toString());
      const selected = await page.evaluate(() => {
        const state = (window as unknown as { viewer: { state: { toJSON(): { layers: { type: string; segments?: string[] }[] } } } }).viewer.state.toJSON();
        return state.layers.find((l) => l.type === "segmentation")?.segments ?? [];
      });
      expect(new Set(selected)).toEqual(ids);

      // Only meshes may draw in the 3D panel from here on.
      await page.evaluate(() => {
        const v = (window as unknown as { viewer: Record<string, { value: boolean }> }).viewer;
        v.showPerspectiveSliceViews!.value = false;
        v.showAxisLines!.value = false;
        v.showDefaultAnnotations!.value = false;
      });
      const rect = await perspectivePanel(page);
      const shown = await settledShot(page, rect, join(ARTIFACTS, "demo_3d_meshes.png"));

      await page.evaluate(() => {
        const v = (window as unknown as { viewer: any }).viewer; // eslint-disable-line @typescript-eslint/no-explicit-any
        const seg = v.layerManager.managedLayers.find((l: { layer: { type?: string } }) => l.layer.type === "segmentation");
        seg.layer.displayState.segmentationGroupState.value.visibleSegments.clear();
      });
      const hidden = await settledShot(page, rect);

      // Each selected segment's manifest and each fragment were fetched once, all answered 200.
      const manifests = meshRequests.filter((r) => /\/\d+:0$/.test(r.path));
      const fragments = meshRequests.filter((r) => /\/\d+:0:[^/]+$/.test(r.path));
      expect(meshRequests.every((r) => r.status === 200)).toBe(true);
      expect(new Set(manifests.map((r) => r.path.split("/").at(-1)!.split(":")[0]))).toEqual(ids);
      expect(new Set(fragments.map((r) => r.path)).size).toBe(fragments.length);
      expect(fragments.length).toBeGreaterThanOrEqual(ids.size);
      // Meshes light a good part of the panel; without selected segments it is black but for the
      // panel's own labels (the x/y/z legend and the "Sections" checkbox, under 0.5 %).
      expect(hidden.lit / hidden.total).toBeLessThan(0.005);
      expect((shown.lit - hidden.lit) / shown.total).toBeGreaterThan(0.05);
      expect(pageErrors).toEqual([]);
      const stats = server.bridge!.meshes.stats;
      console.log(
        `3D panel: ${shown.lit}/${shown.total} pixels lit by meshes of ${ids.size} segments, ${hidden.lit} with none selected; ` +
          `${manifests.length} manifests, ${fragments.length} fragments (${stats.fragmentsComputed} computed, ${(stats.cacheBytes / 2 ** 20).toFixed(1)} MiB cached)`,
      );
    } finally {
      await page.close();
    }
  });
});
