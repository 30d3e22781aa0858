// `spatial-sam segment <volume-url> --out <url>`: automatic segmentation of a volume (or a box of
// it) on this machine with a progress bar; prints the output URL. A killed run resumes: seeds,
// propagated objects and written chunks are kept in the output and not recomputed.
import { resolve } from "node:path";
import { Presets, SingleBar } from "cli-progress";
import { InvalidArgumentError, Option, type Command } from "commander";
import { type IntensityWindow, modelIntensity } from "#src/intensity.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { intensityWindowOption, parseBox } from "#server/engine/command_options.ts";

function parseShape(value: string): Vec3 {
  const m = /^(\d+),(\d+),(\d+)$/.exec(value.replace(/\s/g, ""));
  if (m === null || m.slice(1).some((v) => Number(v) < 1)) throw new InvalidArgumentError("expected z,y,x (positive voxels)");
  return m.slice(1).map(Number) as Vec3;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
}

interface SegmentCliOptions {
  out: string;
  propagator: string;
  sdfModel?: string;
  sdfVolume?: string;
  models: string;
  box?: Box3;
  intensityWindow?: IntensityWindow;
  scale: number;
  blockShape: Vec3;
  minVoxels: number;
  crop: number;
  patience: number;
  zMargin?: number;
  propagatedOnly?: boolean;
  cacheDir: string;
  roots: string;
  threads: number;
}

export function registerSegmentCommand(program: Command): void {
  program
    .command("segment")
    .description("find and segment every mitochondrion of a volume as uint64 instances (SDF seeds, then propagation)")
    .argument("<volume-url>", "e.g. zarr://file:///data/em.zarr or png:///data/stack")
    .requiredOption("--out <url>", "precomputed://file:///out/seg (compressed_segmentation), zarr:// or zarr2:// (OME-Zarr)")
    .requiredOption("--propagator <dir>", "a propagator folder (propagator.json and its three graphs)")
    .addOption(new Option("--sdf-model <name>", "an sdf_unet3d model from --models, run blockwise over the box").conflicts("sdfVolume"))
    .option("--sdf-volume <url>", "a precomputed SDF (float32, positive inside) on the same grid as the volume")
    .addOption(new Option("--models <dir>", "folder of <name>/model.json models").default("models").env("SPATIAL_SAM_MODELS"))
    .option("--box <offset:shape>", "only this box, z,y,x:depth,height,width", parseBox)
    .addOption(intensityWindowOption())
    .option("--scale <n>", "pyramid level", positiveInt, 0)
    .option("--block-shape <z,y,x>", "seed blocks and output chunks", parseShape, [32, 128, 128] as Vec3)
    .option("--min-voxels <n>", "smallest SDF component that seeds an object", positiveInt, 64)
    .option("--crop <px>", "smallest propagation window", positiveInt, 128)
    .option("--patience <n>", "slices without the object before a direction stops", positiveInt, 3)
    .option("--z-margin <n>", "propagate at most this many slices beyond a seed component's z-extent", positiveInt)
    .option("--propagated-only", "only the propagated masks: SDF voxels no mask reaches stay background (default: they go to their component's object)")
    .addOption(new Option("--cache-dir <dir>", "where SDF results are kept").default(".cache/results").env("SPATIAL_SAM_CACHE_DIR"))
    .addOption(new Option("--roots <dirs>", "comma-separated folders file:// URLs may read and write").default("/").env("SPATIAL_SAM_ROOTS"))
    .addOption(new Option("--threads <n>", "intra-op threads").default(2).argParser((v) => Number.parseInt(v, 10)))
    .action(async (url: string, o: SegmentCliOptions) => {
      if ((o.sdfModel === undefined) === (o.sdfVolume === undefined)) throw new InvalidArgumentError("give exactly one of --sdf-model and --sdf-volume");
      const [{ openVolume }, { ModelRegistry }, { SdfEngine }, { createLogger }, { loadPropagator }, { segmentVolume }, { openOutput }] = await Promise.all([
        import("#server/volume/open_volume.ts"),
        import("#server/onnx/model_registry.ts"),
        import("#server/engine/sdf_engine.ts"),
        import("#server/log.ts"),
        import("#server/engine/propagation/propagator.ts"),
        import("#server/engine/auto/segment.ts"),
        import("#server/engine/auto/output.ts"),
      ]);
      const log = createLogger({ level: "warn" });
      const roots = o.roots.split(",");
      const registryOptions = { logger: log, workers: 1, intraOpThreads: o.threads };
      const volume = await openVolume(url, { roots });
      const closers: (() => Promise<void>)[] = [() => volume.close()];
      const controller = new AbortController();
      process.once("SIGINT", () => controller.abort());
      const bar = new SingleBar({ format: "segment {stage} [{bar}] {value}/{total} ({objects} objects) {eta_formatted}", stream: process.stderr }, Presets.shades_classic);
      try {
        modelIntensity(volume.metadata.dtype, o.intensityWindow, "--intensity-window");
        const propagator = await loadPropagator(resolve(o.propagator), registryOptions);
        closers.push(() => propagator.close());
        let sdf: Parameters<typeof segmentVolume>[0]["sdf"];
        if (o.sdfVolume !== undefined) {
          const v = await openVolume(o.sdfVolume, { roots });
          closers.push(() => v.close());
          sdf = { kind: "volume", volume: v, scale: o.scale, key: o.sdfVolume };
        } else {
          const registry = await ModelRegistry.load(resolve(o.models), registryOptions);
          closers.push(() => registry.close());
          if (registry.get(o.sdfModel!) === undefined) throw new InvalidArgumentError(`--sdf-model: no model ${JSON.stringify(o.sdfModel)} in ${resolve(o.models)}`);
          const engine = new SdfEngine({ registry, cacheDir: resolve(o.cacheDir, "sdf"), log, concurrency: 1 });
          sdf = { kind: "model", engine, model: o.sdfModel!, openVolume: (u) => openVolume(u, { roots: [...roots, resolve(o.cacheDir)] }) };
        }
        const level = volume.metadata.scales[o.scale];
        const box = o.box ?? (level ? { offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx } : { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: [0, 0, 0] as Vec3 });
        let started = false;
        const result = await segmentVolume({
          volume,
          volumeKey: url,
          ...(o.intensityWindow === undefined ? {} : { intensity: o.intensityWindow }),
          box,
          scale: o.scale,
          sdf,
          propagator,
          out: await openOutput(o.out, roots, "out"),
          blockShapeZyx: o.blockShape,
          minVoxels: o.minVoxels,
          crop: o.crop,
          patience: o.patience,
          ...(o.zMargin === undefined ? {} : { zMargin: o.zMargin }),
          ...(o.propagatedOnly === true ? { propagatedOnly: true } : {}),
          signal: controller.signal,
          onProgress: (p) => {
            if (!started) bar.start(p.blocksTotal, p.blocksDone, { stage: p.stage, objects: p.objectsFound });
            started = true;
            bar.setTotal(p.blocksTotal);
            bar.update(p.blocksDone, { stage: p.stage, objects: p.objectsFound });
          },
        });
        bar.stop();
        process.stderr.write(`${result.objects} objects (${result.objectsComputed} propagated now), ${result.chunksWritten} chunks written, ${result.chunksCached} kept\n`);
        process.stdout.write(`${result.resultUrl}\n`);
      } finally {
        bar.stop();
        for (const close of closers.reverse()) await close();
      }
    });
}
