// Box prompts, "segment view" and live meshes in a real browser: Debian's chromium (playwright-core)
// on the viewer of a real server with the shipped propagator and the demo's exact SDF as memory
// (as live_segmentation.test.ts). A real ctrl+shift+drag around a demo mitochondrion sends a box
// prompt that segments it; the 3D panel then shows the live object's mesh, and the mesh is fetched
// again when the object changes. "segment view" segments every mitochondrion in the xy panel's view
// (z range from the panel's depth): the server's instances cover the demo's labelled voxels in the
// box, nothing outside the box, and the 3D panel shows their meshes (pixel check). Screenshots go
// to test-artifacts/neuroglancer-layer/.
import { join } from "node:path";
import type { Page } from "playwright-core";
import { PNG } from "pngjs";
import { describe, expect, it } from "vitest";
import { DEMO_SHAPE_ZYX } from "#server/demo.ts";
import type { Rect } from "#test/helpers/browser.ts";
import { useLiveViewer } from "#test/helpers/demo_sdf.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "neuroglancer-layer");
const PROPAGATOR = join(ROOT, "models", "propagator_lucchi");
const VIEWPORT = { width: 1000, height: 600 };
const Z = 32;
const REACH = 3;
const DEPTH = 2;
const [, Y, X] = DEMO_SHAPE_ZYX;

const viewer = useLiveViewer("live-box-view-test-", PROPAGATOR, ARTIFACTS);

/** The xy cross-section panel and the 3D panel. */
async function panels(page: Page): Promise<{ xy: Rect; perspective: Rect }> {
  return page.evaluate(() => {
    const v = (window as unknown as { viewer: { display: { panels: Set<{ sliceViews?: unknown; sliceView?: unknown; element: HTMLElement }> } } }).viewer;
    const rect = (e: HTMLElement) => {
      const r = e.getBoundingClientRect();
      return { left: r.left, top: r.top, width: r.width, height: r.height };
    };
    const all = [...v.display.panels];
    return { xy: rect(all.find((p) => p.sliceView !== undefined)!.element), perspective: rect(all.find((p) => p.sliceViews !== undefined)!.element) };
  });
}

/** Maps voxel (x, y) of the displayed slice to a screen point (1 voxel per CSS pixel). */
async function calibrate(page: Page, xy: Rect) {
  const mx = Math.floor(xy.left + xy.width / 2) + 0.5;
  const my = Math.floor(xy.top + xy.height / 2) + 0.5;
  await page.mouse.move(mx, my);
  const p = await page.evaluate(
    () =>
      new Promise<number[]>((resolve) =>
        requestAnimationFrame(() => requestAnimationFrame(() => resolve(Array.from((window as unknown as { viewer: { mouseState: { position: Float32Array } } }).viewer.mouseState.position)))),
      ),
  );
  return (vx: number, vy: number) => ({ x: mx + (vx - p[0]!), y: my + (vy - p[1]!) });
}

/** Pixels of `rect` brighter than the black 3D background (any channel above 40), outside `except` (the tool's panel). */
function litPixels(png: PNG, rect: Rect, except: Rect): number {
  let lit = 0;
  for (let y = Math.ceil(rect.top) + 1; y < rect.top + rect.height - 1; y++)
    for (let x = Math.ceil(rect.left) + 1; x < rect.left + rect.width - 1; x++) {
      if (x >= except.left - 1 && x <= except.left + except.width + 1 && y >= except.top - 1 && y <= except.top + except.height + 1) continue;
      const i = (y * png.width + x) * 4;
      if (Math.max(png.data[i]!, png.data[i + 1]!, png.data[i + 2]!) > 40) lit++;
    }
  return lit;
}

/** Waits until the tool is idle, the viewer ready, and two screenshots in a row light the same 3D pixels. */
async function settledShot(page: Page, rect: Rect, path?: string): Promise<{ png: PNG; lit: number }> {
  let last = -1;
  for (let i = 0; i < 80; i++) {
    await page
      .waitForFunction(
        () => {
          const w = window as unknown as { spatialSam: { idle: boolean }; viewer: { isReady(): boolean } };
          return w.spatialSam.idle && w.viewer.isReady();
        },
        null,
        { timeout: 180_000, polling: 200 },
      )
      .catch(async (e: unknown) => {
        // Which half never settled: the tool (requests, generations) or the viewer (chunks still needed).
        const state = await page.evaluate(() => {
          type Stats = { numVisibleChunksNeeded: number; numVisibleChunksAvailable: number };
          const w = window as unknown as {
            spatialSam: { idle: boolean; debug: { pending: number; generation: number; answered: number; errors: string[] } };
            viewer: { isReady(): boolean; chunkManager: { prevStatisticsLayers: Stats[] } };
          };
          const { pending, generation, answered, errors } = w.spatialSam.debug;
          const chunks = w.viewer.chunkManager.prevStatisticsLayers.map((l) => `${l.numVisibleChunksAvailable}/${l.numVisibleChunksNeeded}`);
          return { idle: w.spatialSam.idle, pending, generation, answered, errors, ready: w.viewer.isReady(), visibleChunks: chunks };
        });
        throw new Error(`${e instanceof Error ? e.message : String(e)}; state ${JSON.stringify(state)}`);
      });
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const png = PNG.sync.read(await page.screenshot(path === undefined ? {} : { path }));
    const tool = await page.evaluate(() => {
      const r = document.querySelector(".spatialsam-panel")!.getBoundingClientRect();
      return { left: r.left, top: r.top, width: r.width, height: r.height };
    });
    const lit = litPixels(png, rect, tool);
    if (lit === last) return { png, lit };
    last = lit;
    await new Promise((r) => setTimeout(r, 400));
  }
  throw new Error("the view never settled");
}

type Debug = {
  session?: { sessionId: string; liveVolumeId: string };
  errors: string[];
  segmentBox?: { x0: number; y0: number; z0: number; x1: number; y1: number; z1: number };
  segmented?: { newObjects: string[]; cancelled: boolean };
  progress: { done: boolean }[];
  meshRefreshes: string[][];
};
const debug = (page: Page) => page.evaluate(() => (window as unknown as { spatialSam: { debug: Debug } }).spatialSam.debug);

describe("box prompts, segment view and live meshes", () => {
  it("a ctrl+shift+drag box segments an object whose mesh shows in 3D; segment view fills the view", async () => {
    const [Zs] = DEMO_SHAPE_ZYX;
    const labels = (await viewer.server.bridge!.volumes.get("demo-labels").source.read({ offsetZyx: [0, 0, 0], shapeZyx: [Zs, Y, X] }, 0)) as BigUint64Array;
    // The largest demo object on slice Z, and its bounding box there: what a user would drag around.
    const counts = new Map<bigint, number>();
    for (let i = Z * Y * X; i < (Z + 1) * Y * X; i++) if (labels[i] !== 0n) counts.set(labels[i]!, (counts.get(labels[i]!) ?? 0) + 1);
    const target = [...counts].sort((a, b) => b[1] - a[1])[0]![0];
    const bb = { x0: X, y0: Y, x1: 0, y1: 0 };
    for (let y = 0; y < Y; y++)
      for (let x = 0; x < X; x++)
        if (labels[Z * Y * X + y * X + x] === target) Object.assign(bb, { x0: Math.min(bb.x0, x), y0: Math.min(bb.y0, y), x1: Math.max(bb.x1, x + 1), y1: Math.max(bb.y1, y + 1) });

    const state = {
      dimensions: { x: [8e-9, "m"], y: [8e-9, "m"], z: [8e-9, "m"] },
      position: [X / 2, Y / 2, Z + 0.5],
      crossSectionScale: 1,
      projectionScale: 1.4 * Y,
      projectionOrientation: [-Math.sin(Math.PI / 12), 0, 0, Math.cos(Math.PI / 12)],
      layers: [{ type: "image", source: "spatialsam://demo-image", name: "image" }],
      layout: "xy-3d",
      showSlices: false,
      showAxisLines: false,
      showDefaultAnnotations: false,
    };
    const page = await viewer.browser.newPage({ viewport: VIEWPORT, deviceScaleFactor: 1 });
    const pageErrors: string[] = [];
    const meshRequests: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("response", (r) => {
      const u = new URL(r.url());
      if (/^\/volumes\/live-[0-9a-f]+\/mesh\/\d+:0$/.test(u.pathname) && r.status() === 200) meshRequests.push(u.pathname.split("/").at(-1)!);
    });
    try {
      const phases: [string, number][] = [["start", Date.now()]];
      await page.goto(`${viewer.base}/#!${encodeURIComponent(JSON.stringify(state))}`);
      // A ceiling, not a speed check: alone this takes seconds, but with both cores busy (model
      // training beside the suite) software-GL Chromium once needed over 120 s to get ready.
      await page.waitForFunction(() => (window as unknown as { viewer?: { isReady(): boolean } }).viewer?.isReady() === true, null, { timeout: 240_000, polling: 200 });
      const { xy, perspective } = await panels(page);
      const toScreen = await calibrate(page, xy);
      await page.fill('[data-role="reach"]', String(REACH));
      await page.dispatchEvent('[data-role="reach"]', "change");
      const empty = await settledShot(page, perspective);
      phases.push(["load", Date.now()]);

      // A real drag with ctrl+shift held, two voxels around the object's bounding box.
      const a = toScreen(bb.x0 - 2, bb.y0 - 2);
      const b = toScreen(bb.x1 + 2, bb.y1 + 2);
      await page.keyboard.down("Control");
      await page.keyboard.down("Shift");
      await page.mouse.move(a.x, a.y);
      await page.mouse.down();
      await page.mouse.move((a.x + b.x) / 2, (a.y + b.y) / 2, { steps: 4 });
      await page.mouse.move(b.x, b.y, { steps: 4 });
      await page.mouse.up();
      await page.keyboard.up("Shift");
      await page.keyboard.up("Control");
      await page.waitForFunction(() => (window as unknown as { spatialSam: { debug: Debug } }).spatialSam.debug.session !== undefined, null, { timeout: 60_000, polling: 200 });
      const boxShot = await settledShot(page, perspective, join(ARTIFACTS, "live_box_prompt.png"));
      phases.push(["box", Date.now()]);
      const d1 = await debug(page);
      expect(d1.errors).toEqual([]);
      const { sessionId, liveVolumeId } = d1.session!;
      const live = viewer.server.bridge!.volumes.get(liveVolumeId).source;
      const slice = (await live.read({ offsetZyx: [Z, 0, 0], shapeZyx: [1, Y, X] }, 0)) as BigUint64Array;
      // The box is in the URL (a prompts annotation) where it was dragged, to the voxel.
      await page.waitForFunction(() => decodeURIComponent(window.location.hash).includes('"description":"box+1"'), null, { timeout: 10_000, polling: 100 });
      const sent = await page.evaluate(() => {
        const state = (window as unknown as { viewer: { state: { toJSON(): { layers: { name: string; annotations?: { pointA: number[]; pointB: number[] }[] }[] } } } }).viewer.state.toJSON();
        return state.layers.find((l) => l.name === "spatial-sam prompts")!.annotations![0]!;
      });
      expect(sent.pointA).toEqual([bb.x0 - 2, bb.y0 - 2, Z]);
      expect(sent.pointB).toEqual([bb.x1 + 2, bb.y1 + 2, Z + 1]);
      // Object 1 covers most of the boxed demo object on the prompted slice. (The shipped propagator,
      // trained on Lucchi++, also marks other mitochondria of the slice on this synthetic volume, as
      // it does for clicks: how much of the mask lies in the box is logged, not asserted.)
      let inter = 0;
      let mask = 0;
      let inBox = 0;
      for (let y = 0; y < Y; y++)
        for (let x = 0; x < X; x++) {
          if (slice[y * X + x] !== 1n) continue;
          mask++;
          if (labels[Z * Y * X + y * X + x] === target) inter++;
          if (x >= bb.x0 - 2 && x < bb.x1 + 2 && y >= bb.y0 - 2 && y < bb.y1 + 2) inBox++;
        }
      expect(inter / counts.get(target)!).toBeGreaterThan(0.5);
      // The 3D panel shows object 1's mesh.
      expect(meshRequests).toContain("1:0");
      expect(boxShot.lit - empty.lit).toBeGreaterThan(500);

      // The object changes (a second box on another slice): its mesh is fetched again.
      const manifestsBefore = meshRequests.filter((m) => m === "1:0").length;
      await page.evaluate(() => {
        const p = (window as unknown as { viewer: { position: { value: Float32Array } } }).viewer.position;
        const next = Float32Array.from(p.value);
        next[2] = next[2]! + 2;
        p.value = next;
      });
      await page.keyboard.down("Control");
      await page.keyboard.down("Shift");
      await page.mouse.move(a.x, a.y);
      await page.mouse.down();
      await page.mouse.move(b.x, b.y, { steps: 6 });
      await page.mouse.up();
      await page.keyboard.up("Shift");
      await page.keyboard.up("Control");
      await settledShot(page, perspective);
      const d2 = await debug(page);
      phases.push(["box2", Date.now()]);
      expect(d2.errors).toEqual([]);
      expect(d2.meshRefreshes.some((r) => r.includes("1"))).toBe(true);
      expect(meshRequests.filter((m) => m === "1:0").length).toBeGreaterThan(manifestsBefore);

      // Segment view over the xy panel's view, DEPTH slices each way.
      await page.fill('[data-role="depth"]', String(DEPTH));
      const t0 = Date.now();
      await page.click('[data-role="segment-view"]');
      await page.waitForFunction(() => (window as unknown as { spatialSam: { debug: Debug } }).spatialSam.debug.segmented !== undefined, null, { timeout: 300_000, polling: 250 });
      const segmentSeconds = (Date.now() - t0) / 1000;
      const viewShot = await settledShot(page, perspective, join(ARTIFACTS, "live_segment_view.png"));
      phases.push(["view", Date.now()]);
      const d3 = await debug(page);
      expect(d3.errors).toEqual([]);
      expect(d3.segmented!.cancelled).toBe(false);
      expect(d3.progress.at(-1)?.done).toBe(true);
      // The whole 256 x 256 slice is in view at 1 voxel per pixel; z is the current slice +- DEPTH.
      const zNow = Z + 2;
      expect(d3.segmentBox).toEqual({ x0: 0, y0: 0, x1: X, y1: Y, z0: zNow - DEPTH, z1: zNow + DEPTH + 1 });
      const all = (await live.read({ offsetZyx: [0, 0, 0], shapeZyx: [Zs, Y, X] }, 0)) as BigUint64Array;
      const newIds = new Set(d3.segmented!.newObjects.map(BigInt));
      expect(newIds.size).toBeGreaterThan(1);
      expect([...newIds].every((id) => id > 1n)).toBe(true);
      let labelled = 0;
      let covered = 0;
      let outside = 0;
      for (let z = 0; z < Zs; z++)
        for (let i = 0; i < Y * X; i++) {
          const v = all[z * Y * X + i]!;
          const inBox = z >= zNow - DEPTH && z <= zNow + DEPTH;
          // Nothing is computed outside the requested box.
          if (!inBox) {
            if (newIds.has(v)) outside++;
          }
          else if (labels[z * Y * X + i] !== 0n) {
            labelled++;
            if (v !== 0n) covered++;
          }
        }
      expect(outside).toBe(0);
      expect(covered / labelled).toBeGreaterThan(0.8);
      // The panel lists the new objects, and the 3D panel shows their meshes.
      const listed = await page.evaluate(() => Array.from(document.querySelectorAll('[data-role="objects"] tr td:first-child')).map((e) => e.textContent));
      for (const id of newIds) expect(listed).toContain(String(id));
      for (const id of newIds) expect(meshRequests).toContain(`${id}:0`);
      // Object 1 already covers most mitochondria near the slice (see above), so the new objects'
      // meshes are checked alone: with object 1 hidden the 3D panel shows only them.
      await page.evaluate(() => {
        const v = (window as unknown as { viewer: any }).viewer; // eslint-disable-line @typescript-eslint/no-explicit-any
        const layer = v.layerManager.getLayerByName("spatial-sam live").layer;
        const visible = layer.displayState.segmentationGroupState.value.visibleSegments;
        visible.delete([...visible].find((id: { toString(): string }) => id.toString() === "1"));
      });
      const newOnly = await settledShot(page, perspective, join(ARTIFACTS, "live_segment_view_new_objects.png"));
      phases.push(["hidden", Date.now()]);
      expect(newOnly.lit - empty.lit).toBeGreaterThan(2000);
      expect(pageErrors).toEqual([]);
      const objects = (await (await fetch(`${viewer.base}/api/sessions/${sessionId}/objects`)).json()) as { objectId: string }[];
      console.log(
        `box prompt: object ${target} (${counts.get(target)} px on z ${Z}), ${inter} px of it in object 1 (${mask} px, ${inBox} in the box); 3D lit ${empty.lit} -> ${boxShot.lit} px; ` +
          `segment view ${JSON.stringify(d3.segmentBox)} in ${segmentSeconds.toFixed(1)} s (${d3.progress.length} progress events): ${newIds.size} objects, ${covered}/${labelled} labelled voxels covered, ${objects.length} objects listed, 3D lit ${viewShot.lit} px (${newOnly.lit} with object 1 hidden); ` +
          `phases (s): ${phases.slice(1).map(([n, t], i) => `${n} ${((t - phases[i]![1]) / 1000).toFixed(1)}`).join(", ")}`,
      );
    } finally {
      await page.close();
    }
  }, 400_000);
});
