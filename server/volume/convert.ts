// Rewrites any readable volume (every scale) as OME-Zarr or Neuroglancer precomputed, one output
// chunk at a time, so memory is bounded by a few chunks whatever the volume's size. Label volumes
// (uint32/uint64 segmentations) become compressed_segmentation in precomputed.
import { mkdir } from "node:fs/promises";
import { chunkIndices, chunkRange, product } from "#src/geometry.ts";
import { invalidArgument, throwIfAborted } from "#src/errors.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";
import { parseVolumeUrl } from "#server/volume/open_volume.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore, localPathOf } from "#server/volume/stores.ts";
import { ZarrWriter } from "#server/volume/zarr_writer.ts";

export interface ConvertOptions {
  /** Output chunk shape (zyx); default: the source level's chunk shape, capped at 64^3. */
  chunkShapeZyx?: Vec3;
  zarrFormat?: 2 | 3;
  compression?: "raw" | "gzip";
  /** Folders the output may be written in. */
  roots: string[];
  /** Chunks read and written at once. */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

type ChunkWriter = (scale: number, index: Vec3, data: Awaited<ReturnType<VolumeSource["read"]>>) => Promise<void>;

export async function convertVolume(source: VolumeSource, outUrl: string, options: ConvertOptions): Promise<{ url: string; chunks: number }> {
  const { scheme, storeUrl } = parseVolumeUrl(outUrl);
  if (scheme !== "zarr" && scheme !== "precomputed") throw invalidArgument("out", `can write zarr:// or precomputed://, not ${scheme}://`);
  if (!storeUrl.startsWith("file://") && !storeUrl.startsWith("/")) throw invalidArgument("out", "only local (file://) outputs can be written");
  const path = localPathOf(storeUrl);
  // Check the output lies inside the roots before anything is created.
  const store = await FileStore.open(path, options.roots);
  await mkdir(path, { recursive: true });
  const m = source.metadata;
  const chunkOf = (c: Vec3): Vec3 => options.chunkShapeZyx ?? (c.map((s) => Math.min(s, 64)) as Vec3);
  const levels = m.scales.map((s) => ({ ...s, outChunk: chunkOf(s.chunkShapeZyx) }));
  let write: ChunkWriter;
  if (scheme === "zarr") {
    const w = await ZarrWriter.create(store, {
      zarrFormat: options.zarrFormat ?? 3,
      dtype: m.dtype,
      compression: options.compression ?? "gzip",
      fillValue: m.fillValue,
      levels: levels.map((l) => ({ shapeZyx: l.shapeZyx, chunkShapeZyx: l.outChunk, voxelSizeNm: l.voxelSizeNm, offsetZyx: l.offsetZyx })),
    });
    write = (scale, index, data) => w.writeChunk(scale, index, data);
  } else {
    const labels = m.kind === "segmentation" && (m.dtype === "uint64" || m.dtype === "uint32");
    const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];
    const w = await PrecomputedWriter.create(store, {
      type: m.kind,
      dataType: m.dtype,
      numChannels: 1,
      scales: levels.map((l) => ({
        key: l.voxelSizeNm.slice().reverse().join("_"),
        sizeXyz: xyz(l.shapeZyx),
        resolutionXyz: xyz(l.voxelSizeNm),
        voxelOffsetXyz: xyz(l.offsetZyx),
        chunkSizeXyz: xyz(l.outChunk),
        encoding: labels ? "compressed_segmentation" : "raw",
        ...(labels ? { blockSizeXyz: [8, 8, 8] as Vec3 } : {}),
      })),
    });
    write = (scale, index, data) => w.writeChunk(scale, index, data);
  }
  const work: { scale: number; index: Vec3; box: Box3 }[] = [];
  levels.forEach((l, scale) => {
    const { startZyx, endZyx } = chunkRange({ offsetZyx: [0, 0, 0], shapeZyx: l.shapeZyx }, l.outChunk);
    for (const index of chunkIndices(startZyx, endZyx)) {
      const offsetZyx = index.map((c, d) => l.offsetZyx[d]! + c * l.outChunk[d]!) as Vec3;
      const shapeZyx = index.map((c, d) => Math.min(l.outChunk[d]!, l.shapeZyx[d]! - c * l.outChunk[d]!)) as Vec3;
      work.push({ scale, index, box: { offsetZyx, shapeZyx } });
    }
  });
  let next = 0;
  let done = 0;
  options.onProgress?.(0, work.length);
  const worker = async () => {
    while (next < work.length) {
      const item = work[next++]!;
      throwIfAborted(options.signal);
      if (product(item.box.shapeZyx) === 0) continue;
      const data = await source.read(item.box, item.scale, options.signal ? { signal: options.signal } : {});
      await write(item.scale, item.index, data);
      options.onProgress?.(++done, work.length);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency ?? 4 }, worker));
  return { url: `${scheme}://file://${path}`, chunks: work.length };
}
