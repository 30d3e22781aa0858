// The report's Neuroglancer link, followed as a user would: a real server (serve(), bridge on an
// ephemeral port), the volumes registered with exactly the POST bodies the report prints, then the
// link opened in chromium: the viewer comes up with image, ground truth and prediction in two
// panels, every chunk it asks the bridge for is answered 200, and the page logs no error.

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureViewerBuilt } from "#server/bridge/viewer_build.ts";
import { runReport } from "#server/eval/report_command.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { writeReportFixture } from "./report_fixture.ts";
import type { ReportFixture } from "./report_fixture.ts";
import { launchChromium, requireChromium } from "#test/helpers/browser.ts";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "eval");

let dir = "";
let fx: ReportFixture;
let server: RunningServer;
let browser: Browser;
let base = "";

beforeAll(async () => {
  requireChromium();
  await ensureViewerBuilt();
  dir = mkdtempSync(join(tmpdir(), "report-link-"));
  fx = await writeReportFixture(dir);
  // No models: this test is about the bridge's data path.
  mkdirSync(join(dir, "no-models"));
  server = await serve({
    host: "127.0.0.1",
    port: 0,
    httpPort: 0,
    modelsDir: join(dir, "no-models"),
    roots: [dir],
    cacheDir: join(dir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 1,
    log: silentLogger(),
  });
  base = `http://127.0.0.1:${server.httpPort!}`;
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the report's Neuroglancer link", () => {
  it("opens prediction and ground truth side by side once the printed registrations are made", async () => {
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    const out = join(dir, "report");
    await runReport(
      { pred: fx.url.pred, gt: fx.url.gt, image: fx.url.image, out, slices: 3, overlayMaxPx: 1024, bridge: `${base}/`, connectivity: 6, root: [dir], cacheMib: 16 },
      { stdout: quiet, stderr: quiet, fail: () => undefined },
    );
    const html = readFileSync(join(out, "report.html"), "utf8");
    const unescape = (s: string) => s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
    // The curl lines of the page, carried out with fetch.
    const bodies = [...html.matchAll(/curl -X POST (\S+) -H &#39;content-type: application\/json&#39; -d &#39;(.+?)&#39;/g)].map((m) => ({
      url: unescape(m[1]!),
      body: unescape(m[2]!),
    }));
    expect(bodies).toHaveLength(3);
    const ids: string[] = [];
    for (const b of bodies) {
      expect(b.url).toBe(`${base}/api/volumes`);
      const res = await fetch(b.url, { method: "POST", headers: { "content-type": "application/json" }, body: b.body });
      expect(res.status).toBe(201);
      ids.push(((await res.json()) as { id: string }).id);
    }
    expect(ids).toEqual(bodies.map((b) => (JSON.parse(b.body) as { id: string }).id));

    const link = unescape(/<a id="neuroglancer-link" href="([^"]+)"/.exec(html)![1]!);
    const page = await browser.newPage({ viewport: { width: 1000, height: 600 }, deviceScaleFactor: 1 });
    const problems: string[] = [];
    const chunks: { id: string; status: number }[] = [];
    page.on("pageerror", (e) => problems.push(e.message));
    page.on("console", (m) => {
      // The bridge serves no favicon (not this test's subject): the browser's own request for it 404s.
      if (m.type() === "error" && !m.location().url.endsWith("/favicon.ico")) problems.push(`${m.text()} ${m.location().url}`);
    });
    page.on("response", (r) => {
      const m = /\/volumes\/([^/]+)\//.exec(new URL(r.url()).pathname);
      if (m !== null) chunks.push({ id: m[1]!, status: r.status() });
    });
    await page.goto(link);
    await page.waitForFunction(
      () => {
        const v = (window as unknown as { viewer?: { isReady(): boolean; layerManager: { managedLayers: unknown[] } } }).viewer;
        return v !== undefined && v.layerManager.managedLayers.length === 3 && v.isReady();
      },
      undefined,
      { timeout: 30_000, polling: 200 },
    );
    const layers = await page.evaluate(() => {
      const v = (window as unknown as { viewer: { layerManager: { managedLayers: { name: string; layer: { type?: string } | null }[] } } }).viewer;
      return v.layerManager.managedLayers.map((l) => [l.name, l.layer?.type]);
    });
    expect(layers).toEqual([
      ["image", "image"],
      ["ground truth", "segmentation"],
      ["prediction", "segmentation"],
    ]);
    expect(await page.locator(".neuroglancer-rendered-data-panel").count()).toBe(2);
    await page.screenshot({ path: join(ARTIFACTS, "report_link.png") });
    // Every volume was read, and every read answered.
    expect(new Set(chunks.map((c) => c.id))).toEqual(new Set(ids));
    expect(chunks.filter((c) => c.status !== 200)).toEqual([]);
    expect(problems).toEqual([]);
    await page.close();
  }, 60_000);
});
