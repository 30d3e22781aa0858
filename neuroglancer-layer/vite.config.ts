// Vite build of the Spatial-SAM Neuroglancer viewer (npm `neuroglancer` 2.40.1 as a library) into
// neuroglancer-layer/dist, which the bridge serves. Run it with `npm run build:viewer`.
import { defaultClientConditions, defineConfig, type Plugin } from "vite";

// import.meta.dirname, not node:path/node:url: the layer's folder may not import node: modules (lint).
const here = `${import.meta.dirname}/`;

/**
 * Neuroglancer writes `new Worker(/* webpackChunkName: ... *\/ new URL(...))`; with that comment
 * inside the call Vite does not recognise the worker, and the chunk worker ships unbundled (broken)
 * although the build succeeds. Removing the comments before Vite's own transforms fixes it.
 */
function stripWebpackChunkNames(): Plugin {
  return {
    name: "spatial-sam:strip-webpack-chunk-names",
    enforce: "pre",
    transform(code, id) {
      if (!id.includes("/node_modules/neuroglancer/") || !code.includes("webpackChunkName")) return null;
      return { code: code.replace(/\/\*\s*webpackChunkName:[^*]*\*\//g, ""), map: null };
    },
  };
}

/**
 * Adds live_worker.ts (the RPC that re-fetches only the named chunks of a live layer) to
 * Neuroglancer's chunk worker, which has no other extension point.
 */
function liveWorkerRpc(): Plugin {
  return {
    name: "spatial-sam:live-worker-rpc",
    enforce: "pre",
    transform(code, id) {
      if (!id.endsWith("/node_modules/neuroglancer/lib/chunk_worker.bundle.js")) return null;
      return { code: `${code}\nimport ${JSON.stringify(`${here}live_worker.ts`)};\n`, map: null };
    },
  };
}

export default defineConfig({
  root: here,
  // Relative asset URLs, so the bundle works wherever the bridge mounts it.
  base: "./",
  publicDir: false,
  logLevel: "warn",
  plugins: [stripWebpackChunkNames()],
  resolve: {
    // Only the data sources and layer kinds the viewer uses are bundled.
    conditions: [
      ...defaultClientConditions,
      "neuroglancer/datasource:none_by_default",
      "neuroglancer/datasource/precomputed:enabled",
      "neuroglancer/layer:none_by_default",
      "neuroglancer/layer/image:enabled",
      "neuroglancer/layer/segmentation:enabled",
      "neuroglancer/layer/annotation:enabled",
    ],
    alias: [
      // ikonate 1.1.1 (npm) lacks these two icons that neuroglancer imports; ours stand in.
      { find: /^ikonate\/icons\/controls-alt\.svg\?raw$/, replacement: `${here}icons/controls-alt.svg?raw` },
      { find: /^ikonate\/icons\/layers\.svg\?raw$/, replacement: `${here}icons/layers.svg?raw` },
    ],
  },
  // Worker bundles get their own plugin list: the chunk worker starts the async-computation worker
  // with the same comment pattern.
  worker: { format: "es", plugins: () => [stripWebpackChunkNames(), liveWorkerRpc()] },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 4096,
  },
});
