// The report in a real browser: Debian's chromium through playwright-core opens report.html from
// disk (file://, offline: any request leaving the page fails the test), every image decodes, the
// browser reads the overlay colours pngjs wrote, and nothing is logged as an error. The screenshot
// goes to test-artifacts/eval/report.png.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runReport } from "#server/eval/report_command.ts";
import { OVERLAY_ALPHA } from "#server/eval/overlay.ts";
import { index, writeReportFixture } from "./report_fixture.ts";
import type { ReportFixture } from "./report_fixture.ts";
import { launchChromium, requireChromium } from "#test/helpers/browser.ts";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const ARTIFACTS = join(ROOT, "test-artifacts", "eval");

let dir = "";
let fx: ReportFixture;
let browser: Browser;
let html = "";

beforeAll(async () => {
  requireChromium();
  dir = mkdtempSync(join(tmpdir(), "report-browser-"));
  fx = await writeReportFixture(dir);
  const results = join(dir, "results.json");
  writeFileSync(
    results,
    JSON.stringify({
      rows: ["1/64", "1/16", "1/4", "1"].flatMap((budget, i) => [
        { method: "a", name: "(a) dual-track", budget, fg_iou: 0.55 + 0.1 * i, dice: 0.7 + 0.07 * i, ap50: 0.3 + 0.15 * i, ap75: 0.1 + 0.1 * i },
        { method: "b", name: "(b) 3D U-Net, annotated slices", budget, fg_iou: 0.4 + 0.12 * i, dice: 0.55 + 0.1 * i, ap50: 0.2 + 0.15 * i, ap75: 0.05 + 0.1 * i },
      ]),
    }),
  );
  const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
  const { files } = await runReport(
    {
      pred: fx.url.pred,
      gt: fx.url.gt,
      image: fx.url.image,
      out: join(dir, "report"),
      budgetResults: [results],
      slices: 6,
      overlayMaxPx: 1024,
      bridge: "http://127.0.0.1:8080/",
      connectivity: 6,
      root: [dir],
      cacheMib: 16,
    },
    { stdout: quiet, stderr: quiet, fail: () => undefined },
  );
  html = files.html;
  browser = await launchChromium();
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("report.html in chromium", () => {
  it("renders offline with every image loaded and no console errors", async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
    const problems: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") problems.push(`${m.type()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url().slice(0, 100)}`));
    // Self-contained: the only request is the page itself (data: URIs are not requests).
    const requests: string[] = [];
    page.on("request", (r) => {
      if (!r.url().startsWith("data:")) requests.push(r.url());
    });
    await page.goto(pathToFileURL(html).href, { waitUntil: "load" });

    const images = await page.evaluate(() =>
      Array.from(document.images).map((img) => ({ complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight })),
    );
    expect(images).toHaveLength(6);
    for (const img of images) expect(img).toEqual({ complete: true, naturalWidth: 32, naturalHeight: 24 });
    const svgs = await page.evaluate(() =>
      Array.from(document.querySelectorAll("svg")).map((s) => {
        const r = s.getBoundingClientRect();
        return { label: s.getAttribute("aria-label"), width: r.width, height: r.height };
      }),
    );
    // Four budget charts (IoU, Dice, AP@0.5, AP@0.75), the object histogram, the per-slice IoU.
    expect(svgs.map((s) => s.label)).toEqual([
      "foreground IoU against annotation budget",
      "Dice against annotation budget",
      "AP@0.5 against annotation budget",
      "AP@0.75 against annotation budget",
      "Best IoU per ground-truth object",
      "Foreground IoU per slice along z",
    ]);
    for (const s of svgs) expect(s.width * s.height).toBeGreaterThan(0);

    // The browser decodes the overlay as written: slice 0, a true positive, a miss, a false positive.
    const z = 0;
    const seen = await page.evaluate((zz) => {
      const img = document.querySelector<HTMLImageElement>(`figure[data-z="${zz}"] img`)!;
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const ctx = c.getContext("2d", { willReadFrequently: true })!;
      ctx.drawImage(img, 0, 0);
      const at = (y: number, x: number) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
      return [at(5, 6), at(5, 2), at(5, 11)];
    }, z);
    const grey = (y: number, x: number) => fx.image[index(z, y, x)]!;
    const blend = (rgb: number[], g: number) => rgb.map((c) => Math.round(OVERLAY_ALPHA * c + (1 - OVERLAY_ALPHA) * g));
    expect(seen).toEqual([blend([0, 255, 255], grey(5, 6)), blend([255, 0, 255], grey(5, 2)), blend([255, 255, 0], grey(5, 11))]);

    const link = await page.locator("#neuroglancer-link").getAttribute("href");
    expect(link).toMatch(/^http:\/\/127\.0\.0\.1:8080\/#!%7B/);

    await page.screenshot({ path: join(ARTIFACTS, "report.png"), fullPage: true });
    expect(requests).toEqual([pathToFileURL(html).href]);
    expect(problems).toEqual([]);
    await page.close();
  });
});
