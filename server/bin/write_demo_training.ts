// Writes demo volumes (src/demo_volume.ts) for seeds other than the demo's own as .npy files, the
// training and validation data of the demo models (models/spatialsam/data.py load_demo_volumes):
//   node --import tsx server/bin/write_demo_training.ts --out .cache/demo_training --seeds 101,102,103,201
// Layout: <out>/meta.json, <out>/seed_<n>/image.npy (uint8 [Z, Y, X]), labels.npy (uint64 [Z, Y, X]).
import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { makeDemoVolume } from "#src/demo_volume.ts";
import { invalidArgument } from "#src/errors.ts";
import { encodeNpy } from "#src/npy.ts";
import { DEMO_SEED, DEMO_SHAPE_ZYX, DEMO_VOXEL_NM } from "#server/demo.ts";

function parseSeeds(text: string): number[] {
  const seeds = text.split(",").map((s) => Number(s.trim()));
  if (seeds.length === 0 || seeds.some((s) => !Number.isInteger(s) || s < 0 || s > 0xffffffff))
    throw invalidArgument("seeds", `expected comma-separated integers in [0, 2^32), got ${JSON.stringify(text)}`);
  if (seeds.includes(DEMO_SEED)) throw invalidArgument("seeds", `seed ${DEMO_SEED} is the demo's own volume: models must not train or validate on it`);
  return seeds;
}

/** Writes one folder per seed (skipping complete ones); each appears atomically (temp folder, rename). */
async function writeDemoTraining(outDir: string, seeds: number[]): Promise<void> {
  const root = resolve(outDir);
  await mkdir(root, { recursive: true });
  for (const seed of seeds) {
    const final = join(root, `seed_${seed}`);
    if (existsSync(join(final, "labels.npy"))) continue;
    const tmp = `${final}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp);
    const v = makeDemoVolume(DEMO_SHAPE_ZYX, seed);
    await writeFile(join(tmp, "image.npy"), encodeNpy("uint8", v.shapeZyx, v.image));
    await writeFile(join(tmp, "labels.npy"), encodeNpy("uint64", v.shapeZyx, v.labels));
    await rm(final, { recursive: true, force: true });
    await rename(tmp, final);
    process.stderr.write(`seed ${seed}: ${v.objectIds.length} objects -> ${final}\n`);
  }
  const meta = {
    generator: "src/demo_volume.ts makeDemoVolume(shapeZyx, seed)",
    shape_zyx: DEMO_SHAPE_ZYX,
    voxel_size_nm_zyx: DEMO_VOXEL_NM,
    demo_seed: DEMO_SEED,
    seeds,
  };
  await writeFile(join(root, "meta.json.tmp"), JSON.stringify(meta, null, 2) + "\n");
  await rename(join(root, "meta.json.tmp"), join(root, "meta.json"));
}

const { values } = parseArgs({ options: { out: { type: "string" }, seeds: { type: "string" } } });
if (values.out === undefined || values.seeds === undefined) {
  process.stderr.write("usage: write_demo_training.ts --out DIR --seeds 101,102,...\n");
  process.exit(2);
}
try {
  await writeDemoTraining(values.out, parseSeeds(values.seeds));
} catch (e) {
  process.stderr.write(`error: ${(e as Error).message}\n`);
  process.exit(1);
}
