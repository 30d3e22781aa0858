// Per-slice confusion counts (foreground = nonzero) along z, for the report's IoU-along-z plot and
// its choice of overlay slices. One pass over slabs of whole slices, so memory is bounded by a slab.

import { throwIfAborted } from "#src/errors.ts";
import type { TypedArray } from "#src/dtype.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";

export interface SliceCounts {
  /** Per z slice (index = z relative to the volume's first slice). */
  tp: Float64Array;
  fp: Float64Array;
  fn: Float64Array;
}

export interface SliceStatsOptions {
  mask?: VolumeSource;
  scale?: number;
  /** Most voxels read per volume at a time (default 2^22); a slab is at least one slice. */
  maxSlabVoxels?: number;
  signal?: AbortSignal;
  onProgress?: (slicesDone: number, slicesTotal: number) => void;
}

/** Nonzero test that works for bigint and number arrays alike. */
export function isForeground(a: TypedArray, i: number): boolean {
  return a[i] !== 0 && a[i] !== 0n;
}

/** tp / (tp + fp + fn); null where neither volume has foreground in that slice. */
export function sliceIou(c: SliceCounts, z: number): number | null {
  const d = c.tp[z]! + c.fp[z]! + c.fn[z]!;
  return d === 0 ? null : c.tp[z]! / d;
}

/**
 * Counts tp/fp/fn per slice. Shapes are assumed already checked (evaluate() does it); the reads use
 * each level's own offset, like evaluate().
 */
export async function sliceCounts(pred: VolumeSource, gt: VolumeSource, options: SliceStatsOptions = {}): Promise<SliceCounts> {
  const scale = options.scale ?? 0;
  const gtLevel = gt.metadata.scales[scale]!;
  const predLevel = pred.metadata.scales[scale]!;
  const maskLevel = options.mask?.metadata.scales[scale];
  const [Z, Y, X] = gtLevel.shapeZyx;
  const plane = Y * X;
  // Whole gt chunks along z when they fit, so each chunk is decoded once.
  const budget = Math.max(1, Math.floor((options.maxSlabVoxels ?? 2 ** 22) / plane));
  const chunkZ = gtLevel.chunkShapeZyx[0];
  const slab = budget >= chunkZ ? Math.floor(budget / chunkZ) * chunkZ : budget;
  const counts: SliceCounts = { tp: new Float64Array(Z), fp: new Float64Array(Z), fn: new Float64Array(Z) };
  const box = (offset: Vec3, z: number, depth: number) => ({
    offsetZyx: [offset[0] + z, offset[1], offset[2]] as Vec3,
    shapeZyx: [depth, Y, X] as Vec3,
  });
  for (let z0 = 0; z0 < Z; z0 += slab) {
    throwIfAborted(options.signal);
    const depth = Math.min(slab, Z - z0);
    const readOpts = { signal: options.signal };
    const [g, p, m] = await Promise.all([
      gt.read(box(gtLevel.offsetZyx, z0, depth), scale, readOpts),
      pred.read(box(predLevel.offsetZyx, z0, depth), scale, readOpts),
      options.mask === undefined || maskLevel === undefined ? undefined : options.mask.read(box(maskLevel.offsetZyx, z0, depth), scale, readOpts),
    ]);
    for (let dz = 0; dz < depth; dz++) {
      let tp = 0;
      let fp = 0;
      let fn = 0;
      const end = (dz + 1) * plane;
      for (let i = dz * plane; i < end; i++) {
        if (m !== undefined && !isForeground(m, i)) continue;
        const a = isForeground(g, i);
        const b = isForeground(p, i);
        if (a) {
          if (b) tp++;
          else fn++;
        } else if (b) fp++;
      }
      counts.tp[z0 + dz] = tp;
      counts.fp[z0 + dz] = fp;
      counts.fn[z0 + dz] = fn;
    }
    options.onProgress?.(z0 + depth, Z);
  }
  return counts;
}

/**
 * Slices to show as overlays: the worst, median and best IoU among slices with foreground, plus
 * evenly spaced ones, at most `count`, sorted by z. Each comes with why it was picked.
 */
export function pickSlices(c: SliceCounts, count = 6): { z: number; why: string }[] {
  const Z = c.tp.length;
  const scored: { z: number; iou: number }[] = [];
  for (let z = 0; z < Z; z++) {
    const iou = sliceIou(c, z);
    if (iou !== null) scored.push({ z, iou });
  }
  scored.sort((a, b) => a.iou - b.iou || a.z - b.z);
  const picked = new Map<number, string>();
  const add = (z: number, why: string) => {
    if (picked.size < count && !picked.has(z)) picked.set(z, why);
  };
  if (scored.length > 0) {
    add(scored[0]!.z, "worst IoU");
    add(scored[Math.floor((scored.length - 1) / 2)]!.z, "median IoU");
    add(scored[scored.length - 1]!.z, "best IoU");
  }
  // Evenly spaced slices fill the rest; a finer spacing is tried when one lands on a slice taken.
  const want = Math.min(count, Z);
  for (let m = Math.max(1, want - picked.size); picked.size < want && m <= Z; m++) {
    for (let k = 0; k < m; k++) add(Math.floor(((k + 0.5) * Z) / m), "evenly spaced");
  }
  return [...picked].map(([z, why]) => ({ z, why })).sort((a, b) => a.z - b.z);
}
