// `spatial-sam sdf <volume-url> --model <name>`: the blockwise SDF of a volume (or a box of it)
// on this machine, with a progress bar; prints where the cached result lives. Interrupted runs
// resume: finished blocks are on disk and are not recomputed.
import { resolve } from "node:path";
import { Presets, SingleBar } from "cli-progress";
import { Option, type Command } from "commander";
import { type IntensityWindow, modelIntensity } from "#src/intensity.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import { intensityWindowOption, parseBox } from "#server/engine/command_options.ts";

export function registerSdfCommand(program: Command): void {
  program
    .command("sdf")
    .description("compute the signed distance field of mitochondria over a volume, blockwise, with a 3D U-Net model")
    .argument("<volume-url>", "e.g. zarr://file:///data/em.zarr or png:///data/stack")
    .requiredOption("--model <name>", "an sdf_unet3d model from --models")
    .addOption(new Option("--models <dir>", "folder of <name>/model.json models").default("models").env("SPATIAL_SAM_MODELS"))
    .option("--box <offset:shape>", "only this box, z,y,x:depth,height,width", parseBox)
    .addOption(intensityWindowOption())
    .option("--scale <n>", "pyramid level", (v) => Number.parseInt(v, 10), 0)
    .addOption(new Option("--cache-dir <dir>", "where results are kept").default(".cache/results").env("SPATIAL_SAM_CACHE_DIR"))
    .addOption(new Option("--roots <dirs>", "comma-separated folders file:// URLs may read").default("/").env("SPATIAL_SAM_ROOTS"))
    .addOption(new Option("--threads <n>", "intra-op threads").default(2).argParser((v) => Number.parseInt(v, 10)))
    .action(async (url: string, o: { model: string; models: string; box?: Box3; intensityWindow?: IntensityWindow; scale: number; cacheDir: string; roots: string; threads: number }) => {
      const [{ openVolume }, { ModelRegistry }, { SdfEngine }, { createLogger }] = await Promise.all([
        import("#server/volume/open_volume.ts"),
        import("#server/onnx/model_registry.ts"),
        import("#server/engine/sdf_engine.ts"),
        import("#server/log.ts"),
      ]);
      const log = createLogger({ level: "warn" });
      const volume = await openVolume(url, { roots: o.roots.split(",") });
      try {
        modelIntensity(volume.metadata.dtype, o.intensityWindow, "--intensity-window");
      } catch (e) {
        await volume.close();
        throw e;
      }
      const registry = await ModelRegistry.load(resolve(o.models), { logger: log, workers: 1, intraOpThreads: o.threads });
      const controller = new AbortController();
      process.once("SIGINT", () => controller.abort());
      const bar = new SingleBar({ format: "sdf [{bar}] {value}/{total} blocks ({cached} cached) {eta_formatted}", stream: process.stderr }, Presets.shades_classic);
      try {
        const level = volume.metadata.scales[o.scale];
        const box = o.box ?? (level ? { offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx } : { offsetZyx: [0, 0, 0] as Vec3, shapeZyx: [0, 0, 0] as Vec3 });
        let started = false;
        const engine = new SdfEngine({ registry, cacheDir: resolve(o.cacheDir, "sdf"), log, concurrency: 1 });
        const result = await engine.compute({
          volume,
          volumeKey: url,
          ...(o.intensityWindow === undefined ? {} : { intensity: o.intensityWindow }),
          box,
          scale: o.scale,
          model: o.model,
          signal: controller.signal,
          onProgress: (p) => {
            if (!started) bar.start(p.blocksTotal, p.blocksDone, { cached: p.blocksCached });
            started = true;
            bar.update(p.blocksDone, { cached: p.blocksCached });
          },
        });
        bar.stop();
        process.stdout.write(`${result.resultUrl}\n`);
      } finally {
        bar.stop();
        await registry.close();
        await volume.close();
      }
    });
}
