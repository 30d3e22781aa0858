// `spatial-sam convert <in> <out>`: any readable volume to OME-Zarr or precomputed, with a progress bar.
import { dirname, resolve } from "node:path";
import { Presets, SingleBar } from "cli-progress";
import { InvalidArgumentError, Option, type Command } from "commander";
import type { Vec3 } from "#src/volume/types.ts";

function parseChunk(value: string): Vec3 {
  const n = value.split(",").map((s) => Number(s.trim()));
  if (n.length !== 3 || n.some((x) => !Number.isInteger(x) || x <= 0)) throw new InvalidArgumentError("expected three positive integers z,y,x");
  return n as Vec3;
}

export function registerConvertCommand(program: Command): void {
  program
    .command("convert")
    .description("rewrite a volume (every scale) as OME-Zarr or Neuroglancer precomputed, chunk by chunk in bounded memory")
    .argument("<in>", "any readable volume URL, e.g. tiff:///data/stack.tif, png:///data/slices, n5://...")
    .argument("<out>", "zarr:///path/out.zarr or precomputed:///path/out (local)")
    .option("--chunk <z,y,x>", "output chunk shape (default: the source's, at most 64 per axis)", parseChunk)
    .addOption(new Option("--zarr-format <n>", "Zarr version for zarr:// outputs").choices(["2", "3"]).default("3"))
    .addOption(new Option("--compression <c>", "Zarr chunk compression").choices(["gzip", "raw"]).default("gzip"))
    .addOption(new Option("--roots <dirs>", "comma-separated folders file:// URLs may read").default("/").env("SPATIAL_SAM_ROOTS"))
    .action(async (input: string, out: string, o: { chunk?: Vec3; zarrFormat: string; compression: "gzip" | "raw"; roots: string }) => {
      const [{ openVolume, parseVolumeUrl }, { convertVolume }, { localPathOf }] = await Promise.all([
        import("#server/volume/open_volume.ts"),
        import("#server/volume/convert.ts"),
        import("#server/volume/stores.ts"),
      ]);
      const roots = o.roots.split(",");
      // The output folder's parent must be writable by the roots too.
      const outDir = resolve(localPathOf(parseVolumeUrl(out).storeUrl));
      const source = await openVolume(input, { roots });
      const controller = new AbortController();
      process.once("SIGINT", () => controller.abort());
      const bar = new SingleBar({ format: "convert [{bar}] {value}/{total} chunks {eta_formatted}", stream: process.stderr }, Presets.shades_classic);
      try {
        const result = await convertVolume(source, out, {
          roots: [...roots, dirname(outDir)],
          zarrFormat: o.zarrFormat === "2" ? 2 : 3,
          compression: o.compression,
          signal: controller.signal,
          ...(o.chunk ? { chunkShapeZyx: o.chunk } : {}),
          onProgress: (done, total) => (done === 0 ? bar.start(total, 0) : bar.update(done)),
        });
        bar.stop();
        process.stdout.write(`${result.url}\n`);
      } finally {
        bar.stop();
        await source.close();
      }
    });
}
