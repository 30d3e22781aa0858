// Benchmark (not a test): writes a large uint8 Zarr v3 volume with our writer, then reads it region by
// region through openVolume (shared cache, coalescing) and through tensorstore (spawned Python) over
// the same files and boxes, printing throughput and peak RSS side by side with the machine's details.
//
//   nice node --import tsx test/bench/volume_read.bench.ts            # 128 MiB (256 x 512 x 1024)
//   nice node --import tsx test/bench/volume_read.bench.ts --gib 4    # 4 GiB (1024 x 2048 x 2048)
//   options: --keep (leave the volume in place), --dir DIR, --cache-mib N (default 256)

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { FileStore } from "#server/volume/stores.ts";
import { ZarrWriter } from "#server/volume/zarr_writer.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";

const REPO = path.resolve(import.meta.dirname, "../..");
const PYTHON = path.join(REPO, "models/.venv/bin/python");
const GENERATOR = path.join(REPO, "models/spatialsam/fixtures/volumes_zarr_n5.py");

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
};
const gib = Number(flag("--gib") ?? "0");
const shape: Vec3 = gib >= 4 ? [1024, 2048, 2048] : gib > 0 ? [Math.round(256 * gib), 2048, 2048] : [256, 512, 1024];
const chunk: Vec3 = [64, 64, 64];
const cacheMiB = Number(flag("--cache-mib") ?? "256");
const base = flag("--dir") ?? os.tmpdir();
const dir = mkdtempSync(path.join(base, "volume-read-bench-"));
const target = path.join(dir, "bench.zarr");

/** EM-like content: smooth structure plus cheap hash noise (compresses like real data, roughly 2:1 with gzip). */
function chunkData(idx: Vec3, clipped: Vec3): Uint8Array {
  const out = new Uint8Array(clipped[0] * clipped[1] * clipped[2]);
  const sx = Float64Array.from({ length: clipped[2] }, (_, x) => 60 * Math.sin((idx[2] * chunk[2] + x) / 9));
  const cy = Float64Array.from({ length: clipped[1] }, (_, y) => Math.cos((idx[1] * chunk[1] + y) / 13));
  let o = 0;
  for (let z = 0; z < clipped[0]; z++) {
    const gz = idx[0] * chunk[0] + z;
    const sz = 128 + 30 * Math.sin(gz / 7);
    for (let y = 0; y < clipped[1]; y++) {
      const gy = idx[1] * chunk[1] + y;
      const c = cy[y]!;
      for (let x = 0; x < clipped[2]; x++) {
        const gx = idx[2] * chunk[2] + x;
        const h = Math.imul((gx * 73856093) ^ (gy * 19349663) ^ (gz * 83492791), 2654435761) >>> 27;
        out[o++] = (sz + sx[x]! * c + h) & 255;
      }
    }
  }
  return out;
}

const mib = (b: number) => b / 2 ** 20;
const fmt = (x: number, d = 1) => x.toFixed(d);

async function main() {
  const voxels = shape[0] * shape[1] * shape[2];
  console.log(`volume ${shape.join(" x ")} uint8 (${fmt(mib(voxels), 0)} MiB), chunks ${chunk.join("x")}, gzip level 1, in ${dir}`);
  const t0 = performance.now();
  const w = await ZarrWriter.create(await FileStore.open(target, [dir]), {
    zarrFormat: 3,
    dtype: "uint8",
    compression: "gzip",
    gzipLevel: 1,
    levels: [{ shapeZyx: shape, chunkShapeZyx: chunk, voxelSizeNm: [8, 8, 8] }],
  });
  const grid = shape.map((s, d) => Math.ceil(s / chunk[d]!)) as Vec3;
  // Four chunk writes in flight: gzip runs on the zlib pool and each atomic put waits on fsync.
  const inFlight = new Set<Promise<void>>();
  for (let z = 0; z < grid[0]; z++)
    for (let y = 0; y < grid[1]; y++)
      for (let x = 0; x < grid[2]; x++) {
        const idx: Vec3 = [z, y, x];
        const clipped = chunk.map((c, d) => Math.min(c, shape[d]! - idx[d]! * c)) as Vec3;
        const p = w.writeChunk(0, idx, chunkData(idx, clipped)).finally(() => inFlight.delete(p));
        inFlight.add(p);
        if (inFlight.size >= 4) await Promise.race(inFlight);
      }
  await Promise.all(inFlight);
  const writeS = (performance.now() - t0) / 1000;

  // Regions: slabs of 64 z-slices cut into 4 tiles in y, each tile read twice in a row by two
  // concurrent callers (the second joins the first's chunk loads), offset by half a chunk in x
  // so every read is unaligned.
  const boxes: Box3[] = [];
  const tileY = shape[1] / 4;
  for (let z = 0; z + 64 <= shape[0]; z += 64)
    for (let y = 0; y + tileY <= shape[1]; y += tileY) boxes.push({ offsetZyx: [z, y, 32], shapeZyx: [64, tileY, shape[2] - 32] });
  const regionBytes = boxes.reduce((a, b) => a + b.shapeZyx[0] * b.shapeZyx[1] * b.shapeZyx[2], 0);

  /** Reads every box with `callers` concurrent identical reads through a fresh cache. */
  const pass = async (callers: number) => {
    const cache = new ChunkCache({ maxBytes: cacheMiB * 2 ** 20 });
    const vol = await openVolume(`zarr://${target}`, { roots: [dir], cache });
    const rssBefore = process.memoryUsage().rss;
    let peakRss = rssBefore;
    let checksum = 0;
    const t = performance.now();
    for (const box of boxes) {
      const [a] = await Promise.all(Array.from({ length: callers }, () => vol.read(box, 0)));
      const [dz, dy, dx] = box.shapeZyx;
      for (let z = 0; z < dz; z += 7) for (let y = 0; y < dy; y += 7) for (let x = 0; x < dx; x += 7) checksum += a![(z * dy + y) * dx + x] as number;
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }
    return { seconds: (performance.now() - t) / 1000, rssBefore, peakRss, checksum: checksum % 2 ** 53, stats: cache.stats() };
  };
  const one = await pass(1);
  const two = await pass(2);

  const ts = JSON.parse(
    execFileSync(PYTHON, [GENERATOR, "bench-read", path.join(target, "s0"), JSON.stringify(boxes.map((b) => [b.offsetZyx, b.shapeZyx]))], {
      encoding: "utf8",
      maxBuffer: 1 << 26,
    }),
  ) as { seconds: number[]; bytes: number; max_rss_kb: number; checksum: number; tensorstore: string };
  const tsS = ts.seconds.reduce((a, b) => a + b, 0);

  const cpu = os.cpus();
  console.log(`\nmachine: ${cpu[0]?.model ?? "?"} x ${cpu.length} logical CPUs, ${fmt(os.totalmem() / 2 ** 30)} GiB RAM, ${os.type()} ${os.release()}, node ${process.version}, tensorstore ${ts.tensorstore}`);
  console.log(`write (ours, gzip 1): ${fmt(writeS, 2)} s, ${fmt(mib(voxels) / writeS)} MiB/s`);
  console.log(`regions: ${boxes.length} boxes of ${boxes[0]!.shapeZyx.join(" x ")}, ${fmt(mib(regionBytes), 0)} MiB in all, unaligned by half a chunk in x\n`);
  const rows = [
    ["reader", "seconds", "MiB/s (unique bytes)", "RSS before -> peak MiB", "checksum"],
    ["ours (openVolume, 1 caller)", fmt(one.seconds, 2), fmt(mib(regionBytes) / one.seconds), `${fmt(mib(one.rssBefore), 0)} -> ${fmt(mib(one.peakRss), 0)}`, String(one.checksum)],
    ["ours (openVolume, 2 concurrent callers)", fmt(two.seconds, 2), fmt(mib(regionBytes) / two.seconds), `${fmt(mib(two.rssBefore), 0)} -> ${fmt(mib(two.peakRss), 0)}`, String(two.checksum)],
    ["tensorstore (1 caller, no cache)", fmt(tsS, 2), fmt(mib(ts.bytes) / tsS), `max ${fmt(ts.max_rss_kb / 1024, 0)}`, String(ts.checksum)],
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join(" | "));
  const st = two.stats;
  console.log(`\ncache (2 callers): ${st.misses} chunk loads, ${st.coalesced} coalesced, ${st.hits} hits, ${st.evictions} evictions, ${fmt(mib(st.bytes), 0)} MiB held (budget ${cacheMiB} MiB)`);
  if (one.checksum !== ts.checksum || two.checksum !== ts.checksum) console.log("WARNING: checksums differ: the readers disagree");
}

try {
  await main();
} finally {
  if (!args.includes("--keep")) rmSync(dir, { recursive: true, force: true });
}
