// `spatial-sam segment` as a user runs it (a spawned CLI) on the golden propagator fixture: with a
// given SDF volume (labels equal to the engine's run in this process), with an SDF model run
// blockwise, an output locked by another live process refused, and the errors that name the bad option.
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DataType, TypedArray } from "#src/dtype.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { silentLogger } from "#server/log.ts";
import { openOutput } from "#server/engine/auto/output.ts";
import { segmentVolume } from "#server/engine/auto/segment.ts";
import { loadPropagator } from "#server/engine/propagation/propagator.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { REPO_ROOT } from "#test/helpers/volumes_stacks.ts";

const golden = join(REPO_ROOT, "test", "fixtures", "propagator");
const imageNpy = readNpy(join(golden, "image.npy"));
const [Z, Y, X] = imageNpy.shape as Vec3;
let dir: string;

async function writeVolume(name: string, dtype: DataType, data: TypedArray): Promise<void> {
  await writePrecomputedArray(dir, name, dtype, data, [Z, Y, X]);
}

async function readLabels(url: string): Promise<BigUint64Array> {
  const v = await openVolume(url, { roots: [dir] });
  try {
    expect(v.metadata.dtype).toBe("uint64");
    return (await v.read({ offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] }, 0)) as BigUint64Array;
  } finally {
    await v.close();
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "auto-command-"));
  await writeVolume("image", "uint8", imageNpy.data);
  await writeVolume("sdf", "float32", readNpy(join(golden, "sdf.npy")).data);
  // The engine's own runs, for comparison: the default (filled) and the masks alone.
  const propagator = await loadPropagator(join(golden, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
  const volumes: VolumeSource[] = [];
  try {
    for (const name of ["image", "sdf"]) volumes.push(await openVolume(`precomputed://file://${join(dir, name)}`, { roots: [dir] }));
    for (const [name, propagatedOnly] of [["seg", false], ["seg_masks", true]] as const) {
      await segmentVolume({
        volume: volumes[0]!,
        volumeKey: "image",
        box: { offsetZyx: [0, 0, 0], shapeZyx: [Z, Y, X] },
        scale: 0,
        sdf: { kind: "volume", volume: volumes[1]!, scale: 0, key: "sdf" },
        propagator,
        out: await openOutput(`precomputed://file://${join(dir, name)}`, [dir], "out"),
        propagatedOnly,
      });
    }
  } finally {
    for (const v of volumes) await v.close();
    await propagator.close();
  }
}, 60_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("spatial-sam segment", () => {
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", join(REPO_ROOT, "server", "cli.ts"), "segment", ...args], { cwd: REPO_ROOT, encoding: "utf8", timeout: 120_000 });
  const image = () => `precomputed://file://${join(dir, "image")}`;

  it("segments with a given SDF volume, prints the output URL, and matches the engine's labels", async () => {
    const out = `precomputed://file://${join(dir, "cli_seg")}`;
    const r = cli(image(), "--out", out, "--propagator", join(golden, "model"), "--sdf-volume", `precomputed://file://${join(dir, "sdf")}`, "--roots", dir, "--threads", "1");
    expect(r.stderr).toContain("2 objects");
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(out);
    const a = await readLabels(out);
    const b = await readLabels(`precomputed://file://${join(dir, "seg")}`);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  }, 120_000);

  it("--propagated-only writes the engine's masks-only labels, which differ from the default's", async () => {
    const out = `precomputed://file://${join(dir, "cli_masks")}`;
    const r = cli(image(), "--out", out, "--propagator", join(golden, "model"), "--sdf-volume", `precomputed://file://${join(dir, "sdf")}`, "--roots", dir, "--threads", "1", "--propagated-only");
    expect(r.status).toBe(0);
    const a = await readLabels(out);
    const b = await readLabels(`precomputed://file://${join(dir, "seg_masks")}`);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
    const full = await readLabels(`precomputed://file://${join(dir, "seg")}`);
    expect(Buffer.from(a.buffer).equals(Buffer.from(full.buffer))).toBe(false);
  }, 120_000);

  it("computes the SDF with a model (blockwise SdfEngine) and writes a uint64 volume", async () => {
    const out = `zarr2://file://${join(dir, "cli_model.zarr")}`;
    const r = cli(image(), "--out", out, "--propagator", join(golden, "model"), "--sdf-model", "tiny_conv3d", "--models", join(REPO_ROOT, "test", "fixtures", "models"), "--cache-dir", join(dir, "cache"), "--roots", dir, "--threads", "1");
    expect(r.stderr).toMatch(/\d+ objects/);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(`zarr://file://${join(dir, "cli_model.zarr")}`);
    await readLabels(r.stdout.trim());
  }, 120_000);

  it("refuses an output another live process is writing, naming --out's value and the holder", () => {
    const outDir = join(dir, "locked");
    mkdirSync(outDir, { recursive: true });
    const holder = spawn("sleep", ["60"]);
    try {
      writeFileSync(join(outDir, "segment_work.lock"), JSON.stringify({ pid: holder.pid, host: hostname(), startedAt: new Date().toISOString(), token: "t" }));
      const out = `precomputed://file://${outDir}`;
      const r = cli(image(), "--out", out, "--propagator", join(golden, "model"), "--sdf-volume", `precomputed://file://${join(dir, "sdf")}`, "--roots", dir, "--threads", "1");
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(`out: ${out} is being written by pid ${holder.pid} on ${hostname()}`);
    } finally {
      holder.kill();
    }
  }, 120_000);

  it("names the bad option", () => {
    const unknown = cli(image(), "--out", `precomputed://file://${join(dir, "x")}`, "--propagator", join(golden, "model"), "--sdf-model", "nope", "--models", join(REPO_ROOT, "test", "fixtures", "models"), "--roots", dir);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain("--sdf-model");
    const neither = cli(image(), "--out", `precomputed://file://${join(dir, "x")}`, "--propagator", join(golden, "model"), "--roots", dir);
    expect(neither.status).not.toBe(0);
    expect(neither.stderr).toContain("--sdf-volume");
  }, 120_000);
});
