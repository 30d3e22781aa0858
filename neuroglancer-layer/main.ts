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
import { VIEWER_STATE_PATH } from "#src/bridge_api.ts";
import { SCHEME, precomputedUrlFor } from "#layer/spatialsam_url.ts";

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

const viewer = setupDefaultViewer();

// A URL without state opens the bridge's default view (its start-up volumes); a shared URL keeps its own.
if (window.location.hash.length <= 2) {
  fetch(new URL(VIEWER_STATE_PATH, window.location.href))
    .then(async (res) => {
      if (!res.ok) throw new Error(`GET ${VIEWER_STATE_PATH}: HTTP ${res.status}`);
      viewer.state.restoreState(await res.json());
    })
    .catch((e: unknown) => console.error("Spatial-SAM: could not load the default viewer state", e));
}
