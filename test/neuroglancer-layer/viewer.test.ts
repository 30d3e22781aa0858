// The viewer in a real browser: Debian's chromium (WebGL2 through SwiftShader) driven by
// playwright-core loads the page from the real server (serve(), demo volume registered with the
// bridge), and the screenshot is checked against the demo labels pixel by pixel. Screenshots go to
// test-artifacts/neuroglancer-layer/; the demo one is also neuroglancer-layer/screenshot.png (README).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureViewerBuilt, LAYER_DIR } from "#server/bridge/viewer_build.ts";
import { demoBridgeVolumes, DEMO_SHAPE_ZYX, ensureDemoVolume } from "#server/demo.ts";
import type { RunningServer } from "#server/serve.ts";
import { launchChromium, requireChromium } from "#test/helpers/browser.ts";
import { startTestServer } from "#test/helpers/test_server.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "neuroglancer-layer");
const VIEWPORT = { width: 1000, height: 700 };

let server: RunningServer;
let modelsDir: string;
let browser: Browser;
let base: string;
let viewerBuild: { built: boolean; ms: number };

beforeAll(async () => {
  requireChromium();
  viewerBuild = await ensureViewerBuilt();
  const layers = await ensureDemoVolume(join(ROOT, ".cache", "demo"));
  // No models: this test is about the viewer and the bridge's data path.
  modelsDir = mkdtempSync(join(tmpdir(), "viewer-test-models-"));
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

interface Loaded {
  page: Page;
  /** Bridge requests under /volumes/, with their statuses, in order. */
  requests: { path: string; status: number }[];
  pageErrors: string[];
}

/**
 * Opens `url` and waits until the viewer has drawn everything in view. `delayWorkerMs` holds back
 * Neuroglancer's chunk worker script, so the data sources load before the worker runs.
 */
async function openViewer(url: string, layerCount: number, delayWorkerMs = 0): Promise<Loaded> {
  const page = await browser.newPage({ viewport: VIEWPORT, deviceScaleFactor: 1 });
  if (delayWorkerMs > 0) {
    await page.route("**/assets/chunk_worker*", async (route) => {
      await new Promise((resolve) => setTimeout(resolve, delayWorkerMs));
      await route.continue();
    });
  }
  const requests: Loaded["requests"] = [];
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("response", (r) => {
    const u = new URL(r.url());
    if (u.origin === base && u.pathname.startsWith("/volumes/")) requests.push({ path: u.pathname, status: r.status() });
  });
  await page.goto(url);
  const ready = (timeout: number) =>
    page.waitForFunction(
      (n) => {
        const v = (window as unknown as { viewer?: { isReady(): boolean; layerManager: { managedLayers: unknown[] } } }).viewer;
        return v !== undefined && v.layerManager.managedLayers.length === n && v.isReady();
      },
      layerCount,
      { timeout, polling: 200 },
    );
  await ready(45_000);
  return { page, requests, pageErrors };
}

/** Rectangles (CSS px) of the rendered panels: in the 4panel layout xy, xz, 3D, yz. */
async function panels(page: Page): Promise<{ left: number; top: number; width: number; height: number }[]> {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll(".neuroglancer-rendered-data-panel")).map((e) => {
      const r = e.getBoundingClientRect();
      return { left: r.left, top: r.top, width: r.width, height: r.height };
    }),
  );
}

/** Moves the mouse to (x, y) and returns Neuroglancer's global position under it and the segment id there. */
async function probe(page: Page, x: number, y: number): Promise<{ position: number[]; segment: string }> {
  await page.mouse.move(x, y);
  return page.evaluate(
    () =>
      new Promise((resolve) => {
        // Selected values are updated on the next frame after the mouse moves.
        requestAnimationFrame(() =>
          requestAnimationFrame(() => {
            const v = (window as unknown as { viewer: any }).viewer; // eslint-disable-line @typescript-eslint/no-explicit-any
            const seg = v.layerManager.managedLayers.find((l: { layer: { type?: string } }) => l.layer.type === "segmentation");
            const value = v.layerSelectedValues.get(seg.layer);
            resolve({ position: Array.from(v.mouseState.position as Float32Array), segment: String(value?.value ?? value) });
          }),
        );
      }),
  );
}

interface SliceCheck {
  interior: number;
  interiorColoured: number;
  exterior: number;
  exteriorColoured: number;
  /** For each label id in the slice: [interior pixels, coloured ones]. */
  perLabel: Map<bigint, [number, number]>;
  /** A screen point (CSS px) at the centre of the largest label's interior, and that label. */
  target: { x: number; y: number; label: bigint };
}

/**
 * Compares the xy panel of `png` with the labels of slice z: pixels deep inside a label (all
 * voxels within 2 of it carry the same id) must be coloured (the segment colour over grey EM),
 * pixels far from every label must stay grey. The voxel under each pixel comes from Neuroglancer's
 * own mouse position at one calibration point (1 voxel per pixel at crossSectionScale 1).
 */
async function checkXySlice(page: Page, png: PNG, labelsSlice: BigUint64Array): Promise<SliceCheck> {
  const [xy] = await panels(page);
  const [, Y, X] = DEMO_SHAPE_ZYX;
  const mx = Math.floor(xy!.left + xy!.width / 2) + 0.5;
  const my = Math.floor(xy!.top + xy!.height / 2) + 0.5;
  const { position } = await probe(page, mx, my);
  const label = (x: number, y: number) => (x < 0 || y < 0 || x >= X || y >= Y ? undefined : labelsSlice[y * X + x]!);
  const result: SliceCheck = { interior: 0, interiorColoured: 0, exterior: 0, exteriorColoured: 0, perLabel: new Map(), target: { x: 0, y: 0, label: 0n } };
  const sums = new Map<bigint, { n: number; sx: number; sy: number }>();
  for (let py = Math.ceil(xy!.top); py < xy!.top + xy!.height; py++) {
    for (let px = Math.ceil(xy!.left); px < xy!.left + xy!.width; px++) {
      const vx = Math.floor(position[0]! + (px + 0.5 - mx));
      const vy = Math.floor(position[1]! + (py + 0.5 - my));
      const id = label(vx, vy);
      if (id === undefined) continue;
      let uniform = true;
      for (let dy = -2; dy <= 2 && uniform; dy++) for (let dx = -2; dx <= 2 && uniform; dx++) uniform = label(vx + dx, vy + dy) === id;
      if (!uniform) continue;
      const i = (py * png.width + px) * 4;
      const r = png.data[i]!;
      const g = png.data[i + 1]!;
      const b = png.data[i + 2]!;
      const coloured = Math.max(r, g, b) - Math.min(r, g, b) > 20;
      if (id === 0n) {
        result.exterior++;
        if (coloured) result.exteriorColoured++;
      } else {
        result.interior++;
        if (coloured) result.interiorColoured++;
        const e = result.perLabel.get(id) ?? [0, 0];
        result.perLabel.set(id, [e[0] + 1, e[1] + (coloured ? 1 : 0)]);
        const s = sums.get(id) ?? { n: 0, sx: 0, sy: 0 };
        sums.set(id, { n: s.n + 1, sx: s.sx + px, sy: s.sy + py });
      }
    }
  }
  // The largest label's interior pixel nearest its centroid: a point certainly inside it.
  const [bestId, best] = [...sums.entries()].sort((a, b) => b[1].n - a[1].n)[0]!;
  const cx = best.sx / best.n;
  const cy = best.sy / best.n;
  let nearest = { d: Infinity, x: 0, y: 0 };
  for (let py = Math.ceil(xy!.top); py < xy!.top + xy!.height; py++) {
    for (let px = Math.ceil(xy!.left); px < xy!.left + xy!.width; px++) {
      const vx = Math.floor(position[0]! + (px + 0.5 - mx));
      const vy = Math.floor(position[1]! + (py + 0.5 - my));
      let inside = true;
      for (let dy = -2; dy <= 2 && inside; dy++) for (let dx = -2; dx <= 2 && inside; dx++) inside = label(vx + dx, vy + dy) === bestId;
      const d = (px - cx) ** 2 + (py - cy) ** 2;
      if (inside && d < nearest.d) nearest = { d, x: px + 0.5, y: py + 0.5 };
    }
  }
  result.target = { x: nearest.x, y: nearest.y, label: bestId };
  return result;
}

async function labelsAtZ(z: number): Promise<BigUint64Array> {
  const [, Y, X] = DEMO_SHAPE_ZYX;
  const source = server.bridge!.volumes.get("demo-labels").source;
  return (await source.read({ offsetZyx: [z, 0, 0], shapeZyx: [1, Y, X] }, 0)) as BigUint64Array;
}

async function screenshot(page: Page, name: string): Promise<PNG> {
  // Neuroglancer shows each panel's scale widget for a moment after the zoom changes (at load);
  // wait until it has faded so screenshots are the same from run to run.
  await page.waitForFunction(() => document.querySelector('.neuroglancer-display-dimensions-widget[data-active="true"]') === null, null, {
    timeout: 10_000,
    polling: 100,
  });
  const bytes = await page.screenshot({ path: join(ARTIFACTS, name) });
  return PNG.sync.read(bytes);
}

function expectSegmentationOver(check: SliceCheck): void {
  expect(check.interior).toBeGreaterThan(2000);
  expect(check.exterior).toBeGreaterThan(10_000);
  expect(check.interiorColoured / check.interior).toBeGreaterThan(0.97);
  expect(check.exteriorColoured / check.exterior).toBeLessThan(0.01);
  for (const [id, [n, coloured]] of check.perLabel) {
    if (n >= 20) expect(coloured / n, `segment ${id}`).toBeGreaterThan(0.9);
  }
}

describe("viewer page served by the bridge", () => {
  it("opens the demo (image + labels via spatialsam://) in 3 panels + 3D, segment colours exactly where the labels are", async () => {
    const { page, requests, pageErrors } = await openViewer(`${base}/`, 2);
    try {
      const state = (await page.evaluate(() => (window as unknown as { viewer: { state: { toJSON(): unknown } } }).viewer.state.toJSON())) as {
        layout: string;
        position: number[];
        layers: { type: string; source: unknown }[];
      };
      expect(state.layout).toBe("4panel");
      expect(state.layers.map((l) => [l.type, JSON.stringify(l.source)])).toEqual([
        ["image", JSON.stringify("spatialsam://demo-image")],
        ["segmentation", JSON.stringify("spatialsam://demo-labels")],
      ]);
      expect(await panels(page)).toHaveLength(4);

      const z = Math.floor(state.position[2]!);
      const labels = await labelsAtZ(z);
      const png = await screenshot(page, "demo.png");
      const check = await checkXySlice(page, png, labels);
      expectSegmentationOver(check);

      // Neuroglancer picks the segment id from the served chunk: it is the demo label under the mouse.
      const hovered = await probe(page, check.target.x, check.target.y);
      expect(hovered.segment).toBe(check.target.label.toString());

      // Each chunk was fetched once, all from the bridge, all answered 200 (meshes: meshes.test.ts).
      const volumeRequests = requests.filter((r) => !r.path.includes("/mesh/"));
      const chunks = volumeRequests.filter((r) => !r.path.endsWith("/info"));
      expect(requests.every((r) => r.status === 200)).toBe(true);
      expect(new Set(chunks.map((r) => r.path)).size).toBe(chunks.length);
      const perLayer = (id: string) => chunks.filter((r) => r.path.startsWith(`/volumes/${id}/`)).length;
      // The demo is 4 x 4 x 2 chunks per layer; the three sections through the centre touch them all.
      expect(perLayer("demo-image")).toBeGreaterThan(0);
      expect(perLayer("demo-labels")).toBeGreaterThan(0);
      expect(perLayer("demo-labels")).toBeLessThanOrEqual(32);
      expect(volumeRequests.filter((r) => r.path.endsWith("/info")).map((r) => r.path).sort()).toEqual(["/volumes/demo-image/info", "/volumes/demo-labels/info"]);
      expect(pageErrors).toEqual([]);

      // The README's screenshot is this one (rewritten only when its pixels change).
      const readmeShot = join(LAYER_DIR, "screenshot.png");
      const fresh = PNG.sync.write(png);
      if (!existsSync(readmeShot) || !PNG.sync.read(readFileSync(readmeShot)).data.equals(png.data)) writeFileSync(readmeShot, fresh);
      console.log(
        `viewer: bundle ${viewerBuild.built ? `built in ${(viewerBuild.ms / 1000).toFixed(1)} s` : "up to date"}; ` +
          `chunk requests image ${perLayer("demo-image")}, labels ${perLayer("demo-labels")}; ` +
          `segment pixels coloured ${check.interiorColoured}/${check.interior}, background coloured ${check.exteriorColoured}/${check.exterior}`,
      );
    } finally {
      await page.close();
    }
  });

  it("opens a shared link with the bridge's precomputed:// URLs, even when the data loads before the chunk worker", async () => {
    const state = {
      dimensions: { x: [8e-9, "m"], y: [8e-9, "m"], z: [8e-9, "m"] },
      position: [100, 140, 20],
      layers: [
        { type: "image", source: `precomputed://${base}/volumes/demo-image`, name: "image" },
        { type: "segmentation", source: `precomputed://${base}/volumes/demo-labels`, name: "labels" },
      ],
      layout: "xy",
    };
    // The state in the URL wins over the bridge's default one. Without main.ts's wait for the worker,
    // the first layer never loads when its info arrives before the worker script (see README).
    const { page, requests, pageErrors } = await openViewer(`${base}/#!${encodeURIComponent(JSON.stringify(state))}`, 2, 1500);
    try {
      const layout = await page.evaluate(() => (window as unknown as { viewer: { state: { toJSON(): { layout: string } } } }).viewer.state.toJSON().layout);
      expect(layout).toBe("xy");
      const position = await page.evaluate(() => Array.from((window as unknown as { viewer: { position: { value: Float32Array } } }).viewer.position.value));
      const png = await screenshot(page, "stock_precomputed.png");
      expectSegmentationOver(await checkXySlice(page, png, await labelsAtZ(Math.floor(position[2]!))));
      expect(requests.length).toBeGreaterThan(2);
      expect(requests.every((r) => r.status === 200)).toBe(true);
      expect(pageErrors).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
