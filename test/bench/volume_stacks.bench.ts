// Throughput of the PNG-folder, TIFF and HDF5 drivers and of the TIFF writer on the real Lucchi++
// train stack (165 x 768 x 1024 uint8), side by side with the Python readers (PIL, tifffile, h5py)
// on the same files, plus the memory and bytes one slice costs from the large files.
// Run: nice node --import tsx test/bench/volume_stacks.bench.ts

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { TypedArray } from "#src/dtype.ts";
import type { Store, Vec3, VolumeSource } from "#src/volume/types.ts";
import { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { FileStore } from "#server/volume/stores.ts";
import { openTiffFile } from "#server/volume/tiff.ts";
import { writeTiff } from "#server/volume/tiff_writer.ts";
import { PYTHON, REPO_ROOT } from "#test/helpers/volumes_stacks.ts";

const LUCCHI = path.resolve(REPO_ROOT, "../shared/data/lucchi_pp/train/image");
if (!existsSync(LUCCHI)) {
  console.log(`no ${LUCCHI}: nothing to measure`);
  process.exit(0);
}
const tmp = mkdtempSync(path.join(tmpdir(), "bench-stacks-"));
const rows: [string, string, string, string][] = [];
const mb = (bytes: number, ms: number) => (bytes / 2 ** 20 / (ms / 1000)).toFixed(0);

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

async function readAll(url: string, roots: string[]): Promise<{ data: TypedArray; shape: Vec3; ms: number; vol: VolumeSource }> {
  const [res, ms] = await timed(async () => {
    const vol = await openVolume(url, { roots, cache: new ChunkCache({ maxBytes: 0 }) });
    const shape = vol.metadata.scales[0]!.shapeZyx;
    return { vol, shape, data: await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: shape }, 0) };
  });
  return { ...res, ms };
}

/** Times a Python reader on the same file(s) (best of 2), in ms. */
function python(kind: string, target: string): number {
  const script = `
import sys, time, glob, numpy as np
kind, target = sys.argv[1], sys.argv[2]
def run():
    if kind == "png":
        from PIL import Image
        return np.stack([np.array(Image.open(f)) for f in sorted(glob.glob(target + "/*.png"))])
    if kind == "tiff":
        import tifffile
        return tifffile.imread(target)
    import h5py
    with h5py.File(target.split("#")[0]) as f:
        return f[target.split("#")[1]][...]
best = 1e9
for _ in range(2):
    t = time.perf_counter(); a = run(); best = min(best, time.perf_counter() - t)
print(best * 1000)
`;
  return Number(execFileSync(PYTHON, ["-c", script, kind, target], { encoding: "utf8" }).trim());
}

try {
  const png = await readAll(`png://file://${LUCCHI}`, [path.dirname(path.dirname(path.dirname(LUCCHI)))]);
  const bytes = png.data.byteLength;
  rows.push(["png folder read (165 slices)", png.ms.toFixed(0), mb(bytes, png.ms), `PIL: ${python("png", LUCCHI).toFixed(0)} ms`]);

  for (const compression of ["none", "deflate"] as const) {
    const file = path.join(tmp, `lucchi_${compression}.tif`);
    const [, wms] = await timed(() => writeTiff(file, png.data, "uint8", png.shape, { voxelSizeNm: [5, 5, 5], compression }));
    rows.push([`tiff write ${compression}`, wms.toFixed(0), mb(bytes, wms), `${(statSync(file).size / 2 ** 20).toFixed(1)} MiB file`]);
    const t = await readAll(`tiff://file://${file}`, [tmp]);
    const same = t.data.length === png.data.length && (t.data as Uint8Array).every((v, i) => v === png.data[i]);
    rows.push([`tiff read ${compression}`, t.ms.toFixed(0), mb(bytes, t.ms), `tifffile: ${python("tiff", file).toFixed(0)} ms; equal: ${same}`]);
  }

  const h5 = path.join(tmp, "lucchi.h5");
  execFileSync(PYTHON, [
    "-c",
    `import sys, numpy as np, tifffile, h5py
a = tifffile.imread(sys.argv[1])
with h5py.File(sys.argv[2], "w") as f:
    f.create_dataset("gzip", data=a, chunks=(32, 128, 128), compression="gzip")
    f.create_dataset("contig", data=a)`,
    path.join(tmp, "lucchi_none.tif"),
    h5,
  ]);
  for (const ds of ["gzip", "contig"]) {
    const r = await readAll(`h5://file://${h5}#/${ds}`, [tmp]);
    const same = (r.data as Uint8Array).every((v, i) => v === png.data[i]);
    rows.push([`h5 read ${ds} (chunks ${r.vol.metadata.scales[0]!.chunkShapeZyx.join("x")})`, r.ms.toFixed(0), mb(bytes, r.ms), `h5py: ${python("h5", `${h5}#${ds}`).toFixed(0)} ms; equal: ${same}`]);
  }

  // One slice from the 124 MiB uncompressed TIFF: bytes read from the store.
  const file = path.join(tmp, "lucchi_none.tif");
  const store = await FileStore.open(file, [tmp]);
  let read = 0;
  const counting: Store = { url: store.url, get: async (k, o) => ((b) => ((read += b?.length ?? 0), b))(await store.get(k, o)) };
  const src = new AssembledVolumeSource(await openTiffFile(counting, "", file), { cache: new ChunkCache({ maxBytes: 0 }) });
  const openBytes = read;
  await src.read({ offsetZyx: [100, 0, 0], shapeZyx: [1, 768, 1024] }, 0);
  rows.push(["tiff open + 1 slice: bytes read", "", "", `${(openBytes / 1024).toFixed(0)} KiB to open, ${((read - openBytes) / 1024).toFixed(0)} KiB for the slice, of ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB`]);

  // One 32x128x128 chunk from the gzip HDF5 file: resident memory growth.
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  const vol = await openVolume(`h5://file://${h5}#/gzip`, { roots: [tmp], cache: new ChunkCache({ maxBytes: 0 }) });
  await vol.read({ offsetZyx: [64, 256, 256], shapeZyx: [32, 128, 128] }, 0);
  rows.push(["h5 open + 1 chunk: RSS growth", "", "", `${((process.memoryUsage().rss - rss0) / 2 ** 20).toFixed(1)} MiB (file ${(statSync(h5).size / 2 ** 20).toFixed(0)} MiB)`]);
  await vol.close();
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

console.log(`\nLucchi++ train/image, 165 x 768 x 1024 uint8 (124 MiB), node ${process.version}`);
console.log(["what".padEnd(42), "ms".padStart(7), "MiB/s".padStart(7), "  reference / notes"].join(""));
for (const [a, b, c, d] of rows) console.log([a.padEnd(42), b.padStart(7), c.padStart(7), `  ${d}`].join(""));
