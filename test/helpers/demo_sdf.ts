// The live browser tests' server and fixture: the demo volume's exact SDF as the propagator's memory,
// computed in Python (spatialsam.sdf) from the demo labels so the tests do not depend on the SDF U-Net,
// and useLiveViewer (that server, the viewer bundle, Chromium) for a test file's hooks.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll } from "vitest";
import { ensureViewerBuilt } from "#server/bridge/viewer_build.ts";
import { demoBridgeVolumes, ensureDemoVolume } from "#server/demo.ts";
import type { RunningServer } from "#server/serve.ts";
import { launchChromium, requireChromium } from "#test/helpers/browser.ts";
import { startTestServer } from "#test/helpers/test_server.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const PYTHON = join(ROOT, "models", ".venv", "bin", "python");

/** The demo's normalised SDF (spatialsam.sdf: exact EDT, the edt package) from its labels, read by tensorstore. */
export function writeDemoSdf(labelsDir: string, out: string): void {
  const script = `
import sys, numpy as np, tensorstore as ts
from spatialsam.sdf import sdf_target
lab = np.asarray(ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://" + sys.argv[1]}).result().read().result())[..., 0]
sdf = np.transpose(sdf_target(np.transpose(lab, (2, 1, 0)) > 0, (8.0, 8.0, 8.0)).astype(np.float32), (2, 1, 0))
out = ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://" + sys.argv[2],
  "multiscale_metadata": {"type": "image", "data_type": "float32", "num_channels": 1},
  "scale_metadata": {"size": list(lab.shape[:3]), "resolution": [8, 8, 8], "encoding": "raw", "chunk_size": [64, 64, 32]},
  "create": True}).result()
out[..., 0].write(sdf).result()
`;
  execFileSync(PYTHON, ["-c", script, labelsDir, out]);
}

/**
 * The live browser tests' server: the demo volume served by the bridge, live sessions whose
 * propagator (`propagatorDir`) takes its memory from the demo's exact SDF (written under `dir`);
 * no ONNX models of its own.
 */
export async function startLiveDemoServer(dir: string, propagatorDir: string): Promise<RunningServer> {
  const layers = await ensureDemoVolume(join(ROOT, ".cache", "demo"));
  writeDemoSdf(layers.labels, join(dir, "sdf"));
  mkdirSync(join(dir, "no-models"));
  return startTestServer(dir, {
    httpPort: 0,
    modelsDir: join(dir, "no-models"),
    roots: [join(ROOT, ".cache", "demo"), dir],
    intraOpThreads: 2,
    maxQueuePerModel: 8,
    propagation: { dir: propagatorDir },
    bridge: {
      volumes: [...demoBridgeVolumes(layers), { id: "demo-sdf", name: "sdf", url: `precomputed://file://${join(dir, "sdf")}` }],
      live: { sdfVolumes: { "demo-image": "demo-sdf" } },
    },
  });
}

/** What a live browser test works with once its beforeAll has run (useLiveViewer). */
export interface LiveViewer {
  server: RunningServer;
  browser: Browser;
  /** The viewer's HTTP origin, http://127.0.0.1:<port>. */
  base: string;
}

/**
 * Registers a live browser test file's beforeAll and afterAll: the viewer bundle built, the live demo
 * server (startLiveDemoServer, in a fresh temporary folder named from `tmpPrefix`) with
 * `propagatorDir`, Debian's Chromium, and the screenshot folder `artifacts`; all closed and removed
 * after. The returned object is filled in by the beforeAll.
 */
export function useLiveViewer(tmpPrefix: string, propagatorDir: string, artifacts: string): LiveViewer {
  const viewer = {} as LiveViewer;
  let dir: string | undefined;
  beforeAll(async () => {
    requireChromium();
    await ensureViewerBuilt();
    dir = mkdtempSync(join(tmpdir(), tmpPrefix));
    viewer.server = await startLiveDemoServer(dir, propagatorDir);
    viewer.base = `http://127.0.0.1:${viewer.server.httpPort!}`;
    viewer.browser = await launchChromium();
    mkdirSync(artifacts, { recursive: true });
  }, 120_000);
  afterAll(async () => {
    await viewer.browser?.close();
    await viewer.server?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return viewer;
}
