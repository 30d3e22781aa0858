// Entry of the Spatial-SAM viewer: stock Neuroglancer (image, segmentation and annotation layers,
// precomputed data source) plus a `spatialsam://` data source, opening the bridge's default state.
//
// The root `neuroglancer` module is not imported: it creates the viewer at import time, before the
// provider below could be registered.
import "neuroglancer/unstable/layer/enabled_frontend_modules.js";
import "neuroglancer/unstable/datasource/enabled_frontend_modules.js";
import { registerProvider } from "neuroglancer/unstable/datasource/default_provider.js";
import { DataSourceProvider } from "neuroglancer/unstable/datasource/index.js";
import type { DataSource, GetDataSourceOptions } from "neuroglancer/unstable/datasource/index.js";
import { setupDefaultViewer } from "neuroglancer/unstable/ui/default_viewer_setup.js";
import type { Viewer } from "neuroglancer/unstable/viewer.js";
import { VIEWER_STATE_PATH } from "#src/bridge_api.ts";
import { SCHEME, precomputedUrlFor } from "#layer/spatialsam_url.ts";
import { LiveTool } from "#layer/live_tool.ts";

/** Volumes of the bridge, read as the precomputed volumes the bridge re-exposes them as. */
class SpatialSamDataSource extends DataSourceProvider {
  get description(): string {
    return "Spatial-SAM bridge volume (spatialsam://<volume id>)";
  }

  get(options: GetDataSourceOptions): Promise<DataSource> {
    // Delegating to the precomputed provider needs no worker code of our own.
    return options.registry.get({ ...options, url: precomputedUrlFor(options.providerUrl, window.location.href) });
  }
}

registerProvider(SCHEME, () => new SpatialSamDataSource());

/**
 * Resolves once the chunk worker has said it is ready. Layers created before that lose chunk
 * sources: Neuroglancer 2.40.1 queues the messages, but the worker then gets a reference to an
 * object it does not know ("Cannot set properties of undefined (setting 'referencedGeneration')")
 * and the layer never loads. Seen whenever both info files arrive before the worker script.
 */
function chunkWorkerReady(viewer: Viewer): Promise<void> {
  // `queue` is private in the typings: it holds messages until the worker's "rpc.ready".
  const rpc = viewer.chunkQueueManager.rpc as unknown as { queue?: unknown[]; target: Worker };
  if (rpc.queue === undefined) return Promise.resolve();
  return new Promise((resolve) => {
    const onMessage = (e: MessageEvent<{ functionName?: string }>) => {
      if (e.data?.functionName !== "rpc.ready") return;
      rpc.target.removeEventListener("message", onMessage);
      resolve();
    };
    rpc.target.addEventListener("message", onMessage);
  });
}

async function loadDefaultState(viewer: Viewer): Promise<void> {
  const res = await fetch(new URL(VIEWER_STATE_PATH, window.location.href));
  if (!res.ok) throw new Error(`GET ${VIEWER_STATE_PATH}: HTTP ${res.status}`);
  const state: unknown = await res.json();
  await chunkWorkerReady(viewer);
  viewer.state.restoreState(state);
}

// A state in the URL (a shared view) is applied once the chunk worker runs; without one, the
// bridge's default view (its start-up volumes) opens.
const sharedState = window.location.hash.length > 2 ? window.location.hash : undefined;
if (sharedState !== undefined) history.replaceState(null, "", `${window.location.pathname}${window.location.search}`);
const viewer = setupDefaultViewer();
const live = new LiveTool(viewer);
(window as unknown as { spatialSam: LiveTool }).spatialSam = live;
if (sharedState !== undefined) {
  // The hash binding applies the state on "hashchange", as for any later edit of the URL; the
  // prompts a shared link carries are replayed once it has.
  void chunkWorkerReady(viewer).then(() => {
    window.addEventListener("hashchange", () => setTimeout(() => void live.replayPrompts()), { once: true });
    window.location.hash = sharedState;
  });
} else {
  loadDefaultState(viewer).catch((e: unknown) => console.error("Spatial-SAM: could not load the default viewer state", e));
}
