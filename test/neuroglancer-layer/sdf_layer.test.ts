// The SDF layer in a real browser: the bridge (demo volume, the tiny_conv3d fixture as SDF model)
// serves its viewer; the default state carries the hidden `demo-image-sdf` layer, which computes
// nothing until it is made visible; then Neuroglancer requests the chunks in view, each computed as
// one SDF block, its diverging shader compiles and the layer covers the sections. Screenshot:
// test-artifacts/neuroglancer-layer/demo_sdf_layer.png.
import { createServer, type Server } from "node:http";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import express from "express";
import type { Browser, Page } from "playwright-core";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { ensureViewerBuilt } from "#server/bridge/viewer_build.ts";
import { demoBridgeVolumes, ensureDemoVolume } from "#server/demo.ts";
import { SdfEngine } from "#server/engine/sdf_engine.ts";
import { silentLogger } from "#server/log.ts";
import { ModelRegistry } from "#server/onnx/model_registry.ts";
import { launchChromium, type Rect, requireChromium } from "#test/helpers/browser.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "neuroglancer-layer");

let dir: string;
let registry: ModelRegistry;
let bridge: Bridge;
let http: Server;
let browser: Browser;
let base: string;

beforeAll(async () => {
  requireChromium();
  await ensureViewerBuilt();
  const layers = await ensureDemoVolume(join(ROOT, ".cache", "demo"));
  dir = mkdtempSync(join(tmpdir(), "sdf-layer-browser-"));
  registry = await ModelRegistry.load(join(ROOT, "test", "fixtures", "models"), { logger: silentLogger(), workers: 1, intraOpThreads: 1, maxQueuePerModel: 64 });
  // The default block (32 x 64 x 64): the demo is 2 x 4 x 4 blocks.
  const engine = new SdfEngine({ registry, cacheDir: join(dir, "sdf"), log: silentLogger(), concurrency: 1 });
  bridge = await createBridge({ roots: [join(ROOT, ".cache", "demo"), dir], log: silentLogger(), volumes: demoBridgeVolumes(layers), sdf: { engine, registry, model: "tiny_conv3d" } });
  const app = express();
  app.use(bridge.router);
  http = createServer(app);
  await new Promise<void>((res) => http.listen(0, "127.0.0.1", () => res()));
  const a = http.address();
  base = `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}`;
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await new Promise<void>((res) => (http ? http.close(() => res()) : res()));
  await bridge?.close();
  await registry?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});


async function ready(page: Page, layers: number): Promise<void> {
  await page.waitForFunction(
    (n) => {
      const v = (window as unknown as { viewer?: { isReady(): boolean; layerManager: { managedLayers: unknown[] } } }).viewer;
      return v !== undefined && v.layerManager.managedLayers.length === n && v.isReady();
    },
    layers,
    { timeout: 60_000, polling: 200 },
  );
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/** The xy cross-section panel (the first panel of the 4panel layout). */
function xyPanel(page: Page): Promise<Rect> {
  return page.evaluate(() => {
    const r = document.querySelector(".neuroglancer-rendered-data-panel")!.getBoundingClientRect();
    return { left: r.left, top: r.top, width: r.width, height: r.height };
  });
}

/** Pixels of `rect` whose colour differs between two screenshots by more than 20 in some channel. */
function changed(a: PNG, b: PNG, rect: Rect): number {
  let n = 0;
  for (let y = Math.ceil(rect.top) + 1; y < rect.top + rect.height - 1; y++) {
    for (let x = Math.ceil(rect.left) + 1; x < rect.left + rect.width - 1; x++) {
      const i = (y * a.width + x) * 4;
      if ([0, 1, 2].some((c) => Math.abs(a.data[i + c]! - b.data[i + c]!) > 20)) n++;
    }
  }
  return n;
}

describe("SDF layer", () => {
  it("is hidden by default and computes only the blocks in view once shown, coloured by the diverging shader", async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 }, deviceScaleFactor: 1 });
    const sdfRequests: { path: string; status: number }[] = [];
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("response", (r) => {
      const u = new URL(r.url());
      if (u.origin === base && u.pathname.startsWith("/volumes/demo-image-sdf/") && !u.pathname.endsWith("/info")) sdfRequests.push({ path: u.pathname, status: r.status() });
    });
    try {
      await page.goto(`${base}/`);
      await ready(page, 3);
      const layers = await page.evaluate(() =>
        (window as unknown as { viewer: { state: { toJSON(): { layers: { name: string; source: unknown; visible?: boolean }[] } } } }).viewer.state
          .toJSON()
          .layers.map((l) => [l.name, l.source, l.visible ?? true]),
      );
      expect(layers).toEqual([
        ["image", "spatialsam://demo-image", true],
        ["image SDF", "spatialsam://demo-image-sdf", false],
        ["mitochondria", "spatialsam://demo-labels", true],
      ]);
      const rect = await xyPanel(page);
      const before = PNG.sync.read(await page.screenshot());
      expect(sdfRequests).toEqual([]);
      expect(bridge.sdf!.stats.reads).toBe(0);

      await page.evaluate(() => {
        const v = (window as unknown as { viewer: { layerManager: { getLayerByName(n: string): { setVisible(b: boolean): void } } } }).viewer;
        v.layerManager.getLayerByName("image SDF").setVisible(true);
      });
      await ready(page, 3);
      const after = PNG.sync.read(await page.screenshot({ path: join(ARTIFACTS, "demo_sdf_layer.png") }));
      const shaderError = await page.evaluate(() => {
        const v = (window as unknown as { viewer: { layerManager: { getLayerByName(n: string): { layer: { shaderError: { value: unknown } } } } } }).viewer;
        const e = v.layerManager.getLayerByName("image SDF").layer.shaderError.value;
        return e === undefined || e === null ? null : String((e as { message?: string }).message ?? e);
      });
      expect(shaderError).toBeNull();

      // The three sections through the centre touch 23 of the 32 blocks: only those were requested,
      // each once, and each request computed its one block.
      const stats = bridge.sdf!.stats;
      expect(sdfRequests.every((r) => r.status === 200)).toBe(true);
      expect(new Set(sdfRequests.map((r) => r.path)).size).toBe(sdfRequests.length);
      expect(sdfRequests.length).toBe(23);
      expect(stats).toEqual({ reads: 23, blocksComputed: 23, blocksCached: 0 });
      // The SDF (opacity 0.6) now covers the xy section: 256 x 256 pixels at one voxel per pixel.
      // (The fixture model's output is near 0, the shader's light boundary colour.)
      const grew = changed(before, after, rect);
      expect(grew).toBeGreaterThan(0.5 * 256 * 256);
      expect(pageErrors).toEqual([]);
      console.log(`SDF layer: ${sdfRequests.length} chunks requested and computed once shown (of 32); ${grew} xy pixels changed colour`);
    } finally {
      await page.close();
    }
  });
});
