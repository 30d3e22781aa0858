// `spatial-sam demo` / `npm start`: writes the generated demo volume (image and its instance
// labels) as Neuroglancer precomputed under the demo folder, once, then serves it.
import { existsSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { SingleBar, Presets } from "cli-progress";
import { makeDemoVolume } from "#src/demo_volume.ts";
import { allocate } from "#src/dtype.ts";
import type { TypedArray } from "#src/dtype.ts";
import { copyBox } from "#src/geometry.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { startFromCli, type ServerCliOptions } from "#server/cli_options.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";

export const DEMO_SHAPE_ZYX: Vec3 = [64, 256, 256];
export const DEMO_VOXEL_NM: Vec3 = [8, 8, 8];
/** The seed of the demo's own volume: the demo models never train or validate on it. */
export const DEMO_SEED = 1;
const CHUNK_ZYX: Vec3 = [32, 64, 64];
const DEMO_VERSION = "demo-v1";

async function writeLayer(dir: string, type: "image" | "segmentation", data: TypedArray, bar: SingleBar): Promise<void> {
  const store = await FileStore.open(dir, [dir]);
  const [Z, Y, X] = DEMO_SHAPE_ZYX;
  const writer = await PrecomputedWriter.create(store, {
    type,
    dataType: type === "image" ? "uint8" : "uint64",
    numChannels: 1,
    scales: [
      {
        key: `${DEMO_VOXEL_NM[2]}_${DEMO_VOXEL_NM[1]}_${DEMO_VOXEL_NM[0]}`,
        sizeXyz: [X, Y, Z],
        resolutionXyz: [DEMO_VOXEL_NM[2], DEMO_VOXEL_NM[1], DEMO_VOXEL_NM[0]],
        voxelOffsetXyz: [0, 0, 0],
        chunkSizeXyz: [CHUNK_ZYX[2], CHUNK_ZYX[1], CHUNK_ZYX[0]],
        encoding: type === "image" ? "raw" : "compressed_segmentation",
        ...(type === "segmentation" ? { blockSizeXyz: [8, 8, 8] as Vec3 } : {}),
      },
    ],
  });
  for (let cz = 0; cz < Z / CHUNK_ZYX[0]; cz++)
    for (let cy = 0; cy < Y / CHUNK_ZYX[1]; cy++)
      for (let cx = 0; cx < X / CHUNK_ZYX[2]; cx++) {
        const chunk = allocate(type === "image" ? "uint8" : "uint64", CHUNK_ZYX[0] * CHUNK_ZYX[1] * CHUNK_ZYX[2]);
        copyBox(data, DEMO_SHAPE_ZYX, [cz * CHUNK_ZYX[0], cy * CHUNK_ZYX[1], cx * CHUNK_ZYX[2]], chunk, CHUNK_ZYX, [0, 0, 0], CHUNK_ZYX);
        await writer.writeChunk(0, [cz, cy, cx], chunk);
        bar.increment();
      }
}

/** The demo's two layers as the bridge serves them (ids `demo-image`, `demo-labels`) and shows them by default. */
export function demoBridgeVolumes(layers: { image: string; labels: string }) {
  return [
    { id: "demo-image", name: "image", url: `precomputed://file://${layers.image}` },
    { id: "demo-labels", name: "mitochondria", url: `precomputed://file://${layers.labels}` },
  ];
}

/** Writes the demo volume into `demoDir` unless a complete one is there; returns the layer folders. */
export async function ensureDemoVolume(demoDir: string): Promise<{ image: string; labels: string }> {
  const root = resolve(demoDir);
  const final = join(root, DEMO_VERSION);
  const out = { image: join(final, "image"), labels: join(final, "labels") };
  if (existsSync(out.image) && existsSync(out.labels)) return out;
  // Build beside the final folder and rename it into place, so an interrupted run leaves nothing half-written.
  const tmp = `${final}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(join(tmp, "image"), { recursive: true });
  await mkdir(join(tmp, "labels"), { recursive: true });
  const volume = makeDemoVolume(DEMO_SHAPE_ZYX, DEMO_SEED);
  const chunks = (DEMO_SHAPE_ZYX[0] / CHUNK_ZYX[0]) * (DEMO_SHAPE_ZYX[1] / CHUNK_ZYX[1]) * (DEMO_SHAPE_ZYX[2] / CHUNK_ZYX[2]);
  const bar = new SingleBar({ format: "demo volume [{bar}] {value}/{total} chunks", stream: process.stderr }, Presets.shades_classic);
  bar.start(chunks * 2, 0);
  await writeLayer(join(tmp, "image"), "image", volume.image, bar);
  await writeLayer(join(tmp, "labels"), "segmentation", volume.labels, bar);
  bar.stop();
  await rm(final, { recursive: true, force: true });
  await rename(tmp, final);
  return out;
}

/** The propagator and SDF model the demo uses from `modelsDir`: demo ones first, else Lucchi++. */
export function demoModels(modelsDir: string): { propagator: string; sdfModel: string; more: string[] } | undefined {
  const pairs = [
    { propagator: join(modelsDir, "propagator_demo"), sdfModel: "sdf_unet3d_demo" },
    { propagator: join(modelsDir, "propagator_lucchi"), sdfModel: "sdf_unet3d_lucchi" },
  ].filter((p) => existsSync(join(p.propagator, "propagator.json")) && existsSync(join(modelsDir, p.sdfModel, "model.json")));
  const first = pairs[0];
  return first === undefined ? undefined : { ...first, more: pairs.slice(1).map((p) => p.propagator) };
}

export async function runDemo(o: ServerCliOptions & { demoDir: string }): Promise<void> {
  const layers = await ensureDemoVolume(o.demoDir);
  if (o.httpPort >= 0) {
    const { ensureViewerBuilt } = await import("#server/bridge/viewer_build.ts");
    const viewer = await ensureViewerBuilt();
    if (viewer.built) process.stderr.write(`viewer bundle built in ${(viewer.ms / 1000).toFixed(1)} s (neuroglancer-layer/dist)\n`);
  }
  // The shipped models, when present, make the demo answer prompts over gRPC too: the demo models,
  // trained on this generator's volumes (other seeds), before the Lucchi++ ones, which are kept
  // selectable by name (StartSession's model) for Lucchi++ data.
  if (o.propagator === undefined) {
    const found = demoModels(resolve(o.models));
    if (found !== undefined) {
      o.propagator = found.propagator;
      o.sdfModel ??= found.sdfModel;
      if (found.more.length > 0) o.morePropagators ??= found.more;
    }
  }
  const running = await startFromCli(o, [resolve(o.demoDir)], { volumes: demoBridgeVolumes(layers) });
  process.stdout.write(
    [
      "Spatial-SAM demo",
      `  image   precomputed://file://${layers.image}`,
      `  labels  precomputed://file://${layers.labels}`,
      `  gRPC    ${running.grpc.address}${o.propagator === undefined ? "" : ` (prompts: ${o.propagator}, SDF memory: ${o.sdfModel ?? "none"})`}`,
      ...(running.httpPort === undefined
        ? []
        : [
            `  viewer  http://${o.host}:${running.httpPort}/`,
            `  stock Neuroglancer: precomputed://http://${o.host}:${running.httpPort}/volumes/demo-image and .../volumes/demo-labels`,
          ]),
      running.httpPort === undefined ? "" : `  HTTP    http://${o.host}:${running.httpPort}/healthz`,
      "Stop with Ctrl+C.",
      "",
    ].join("\n"),
  );
}
