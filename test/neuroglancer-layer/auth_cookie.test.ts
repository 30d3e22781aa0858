// The viewer behind the bridge's token (serve() bound beyond loopback with a token file) in a real
// browser: without a token the page is 401; the login link `/?token=...` sets the cookie and
// redirects to a URL without the token, and with the cookie alone the viewer loads, Neuroglancer's
// worker fetches info and chunks, the page's API calls start a live session and its EventSource
// receives events. No request is refused once logged in.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureViewerBuilt } from "#server/bridge/viewer_build.ts";
import { demoBridgeVolumes, DEMO_SHAPE_ZYX, ensureDemoVolume } from "#server/demo.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { launchChromium, requireChromium } from "#test/helpers/browser.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "neuroglancer-layer");
const TOKEN = "viewer-token-0123456789abcdef";
/** A non-loopback IPv4 address of this machine, or 0.0.0.0 where it has none. */
const host = Object.values(networkInterfaces())
  .flat()
  .find((a) => a !== undefined && a.family === "IPv4" && !a.internal)?.address ?? "0.0.0.0";

let server: RunningServer;
let dir: string;
let browser: Browser;
let base: string;

beforeAll(async () => {
  requireChromium();
  await ensureViewerBuilt();
  const layers = await ensureDemoVolume(join(ROOT, ".cache", "demo"));
  dir = mkdtempSync(join(tmpdir(), "viewer-auth-test-"));
  writeFileSync(join(dir, "tokens"), `${TOKEN}\n`);
  chmodSync(join(dir, "tokens"), 0o600);
  mkdirSync(join(dir, "no-models"));
  // A session needs an SDF on the image's grid; its values do not matter here (nothing is segmented).
  const [Z, Y, X] = DEMO_SHAPE_ZYX;
  const sdf = await writePrecomputedArray(dir, "sdf", "float32", new Float32Array(Z * Y * X), DEMO_SHAPE_ZYX, [8, 8, 8], { chunkZyx: [32, 64, 64] });
  server = await serve({
    host,
    port: 0,
    httpPort: 0,
    modelsDir: join(dir, "no-models"),
    roots: [join(ROOT, ".cache", "demo"), dir],
    cacheDir: join(dir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 8,
    log: silentLogger(),
    tokenFile: join(dir, "tokens"),
    propagation: { dir: join(ROOT, "models", "propagator_lucchi") },
    bridge: { volumes: [...demoBridgeVolumes(layers), { id: "demo-sdf", url: sdf }], live: { sdfVolumes: { "demo-image": "demo-sdf" } } },
  });
  base = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${server.httpPort!}`;
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the viewer behind a token", () => {
  it("is 401 without it; the login link's cookie opens the page, its chunks, the API and the event stream", async () => {
    const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
    const page = await context.newPage();
    const responses: { path: string; status: number }[] = [];
    page.on("response", (r) => responses.push({ path: new URL(r.url()).pathname, status: r.status() }));
    try {
      expect((await page.goto(`${base}/`))!.status()).toBe(401);
      responses.length = 0;
      await page.goto(`${base}/?token=${TOKEN}`);
      expect(page.url()).toBe(`${base}/`);
      const cookies = await context.cookies(base);
      expect(cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }))).toEqual([{ name: "spatialsam_token", httpOnly: true, sameSite: "Strict" }]);
      // The page cannot read the cookie (HttpOnly).
      expect(await page.evaluate(() => document.cookie)).toBe("");
      await page.waitForFunction(
        () => {
          const v = (window as unknown as { viewer?: { isReady(): boolean; layerManager: { managedLayers: unknown[] } } }).viewer;
          return v !== undefined && v.layerManager.managedLayers.length >= 2 && v.isReady();
        },
        null,
        { timeout: 60_000, polling: 200 },
      );
      await page.screenshot({ path: join(ARTIFACTS, "auth_cookie_viewer.png") });
      // The worker's chunk requests went out with the cookie too.
      const chunks = responses.filter((r) => /^\/volumes\/demo-(image|labels)\/[^/]+\/\d+-\d+_\d+-\d+_\d+-\d+$/.test(r.path));
      expect(chunks.length).toBeGreaterThan(0);
      // The page's own API calls and an EventSource, with nothing but the cookie.
      const live = await page.evaluate(async () => {
        const res = await fetch("api/sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ volumeId: "demo-image" }) });
        const s = (await res.json()) as { sessionId: string };
        const first = await new Promise<string>((resolve, reject) => {
          const es = new EventSource(`api/sessions/${s.sessionId}/events`);
          es.addEventListener("chunks", (e) => {
            es.close();
            resolve((e as MessageEvent<string>).data);
          });
          es.onerror = () => reject(new Error("event stream failed"));
        });
        return { status: res.status, first: JSON.parse(first) as { generation: number } };
      });
      expect(live.status).toBe(201);
      expect(live.first.generation).toBe(0);
      expect(responses.filter((r) => r.status === 401)).toEqual([]);
    } finally {
      await context.close();
    }
  }, 180_000);
});
