// Seeds for automatic segmentation, computed block by block: the 3D connected components of
// SDF > 0 (6-connectivity, joined across block faces by union-find, so ids are global), one seed
// per component of at least `minVoxels` voxels, exactly as models/spatialsam/predictor.py's sdf_seeds;
// and which seed each component belongs to, so the write stage can label a block's SDF voxels by
// their component's seed without labelling the volume again (segment_volume's `fill`).
import { DATA_TYPES } from "#src/dtype.ts";
import { invalidArgument, throwIfAborted } from "#src/errors.ts";
import { BlockGrid } from "#src/blocks.ts";
import { BlockwiseComponents } from "#src/metrics/components.ts";
import { BlockRuns } from "#src/metrics/runs.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";

/** One seed, in box-local voxels. */
export interface Seed {
  /** Slice of the component's largest cross-section (first on ties). */
  z: number;
  /** Deepest point there: argmax of the SDF inside the cross-section, first in C order on ties. */
  x: number;
  y: number;
  /** Cross-section bounding box [x0, y0, x1, y1], corners included. */
  box: [number, number, number, number];
  /** Voxels of the component and its slice range [z0, z1]. */
  voxels: number;
  zRange: [number, number];
}

interface SliceStat {
  area: number;
  x0: number;
  y0: number;
  x1: number;
  y1: number;
  best: number;
  /** C-order index y * X + x of the best voxel, for ties. */
  bestAt: number;
}

function mergeStat(into: SliceStat | undefined, s: SliceStat): SliceStat {
  if (into === undefined) return { ...s };
  into.area += s.area;
  into.x0 = Math.min(into.x0, s.x0);
  into.y0 = Math.min(into.y0, s.y0);
  into.x1 = Math.max(into.x1, s.x1);
  into.y1 = Math.max(into.y1, s.y1);
  if (s.best > into.best || (s.best === into.best && s.bestAt < into.bestAt)) {
    into.best = s.best;
    into.bestAt = s.bestAt;
  }
  return into;
}

export interface SeedOptions {
  /** The SDF (positive inside), read at `scale` over `box` (volume coordinates). */
  sdf: VolumeSource;
  scale: number;
  box: Box3;
  blockShapeZyx: Vec3;
  minVoxels: number;
  signal?: AbortSignal;
  onBlock?: (done: number, total: number) => void;
}

/**
 * The seed of every SDF component, by the provisional ids of the seed pass: block k of the seed grid
 * (in `BlockGrid.blocksIntersecting` order), its SDF > 0 extracted and labelled by `sdfRuns`, has
 * runs whose local component c has provisional id `blockBase[k] + c`, and `seedOfProv[id]` is that
 * component's seed id (1-based, in seed order; 0 for components under `minVoxels`). Memory: one
 * number per block and per block-local component, never per voxel.
 */
export interface SeedComponents {
  blockBase: Uint32Array;
  seedOfProv: Uint32Array;
}

/** Row runs of SDF > 0 in one block, labelled (6-connected) as the seed pass labels them. */
function sdfRuns(data: ArrayLike<number>, shapeZyx: Vec3, runs: BlockRuns, scratch: { parent: Int32Array }): void {
  const fg = new Uint32Array(shapeZyx[0] * shapeZyx[1] * shapeZyx[2]);
  for (let i = 0; i < fg.length; i++) fg[i] = data[i]! > 0 ? 1 : 0;
  runs.extract(fg, shapeZyx);
  runs.labelComponents(6, scratch);
}

/**
 * Seed ids of one block's voxels (0 outside the SDF or in a component without a seed), from the SDF
 * block the seed pass read as block `ordinal`.
 */
export function seedLabelsOfBlock(data: ArrayLike<number>, shapeZyx: Vec3, ordinal: number, components: SeedComponents): Uint32Array {
  const runs = new BlockRuns();
  sdfRuns(data, shapeZyx, runs, { parent: new Int32Array(1024) });
  const out = new Uint32Array(shapeZyx[0] * shapeZyx[1] * shapeZyx[2]);
  const base = components.blockBase[ordinal]!;
  const nx = shapeZyx[2];
  for (let r = 0, rows = runs.nz * runs.ny; r < rows; r++) {
    for (let i = runs.rowStart[r]!, e = runs.rowStart[r + 1]!; i < e; i++) {
      const c = runs.comp[i]!;
      if (c !== 0) out.fill(components.seedOfProv[base + c]!, r * nx + runs.start[i]!, r * nx + runs.end[i]!);
    }
  }
  return out;
}

/** Seeds ordered as scipy.ndimage.label numbers components: by the C-order index of their first voxel. */
export async function findSeeds(o: SeedOptions): Promise<{ seeds: Seed[]; components: SeedComponents }> {
  if (DATA_TYPES[o.sdf.metadata.dtype].isBigInt) throw invalidArgument("sdf", "an SDF must be a float volume");
  const X = o.box.shapeZyx[2];
  const grid = new BlockGrid(o.box, o.blockShapeZyx, [0, 0, 0]);
  const blocks = [...grid.blocksIntersecting(o.box)];
  const cc = new BlockwiseComponents(o.box.shapeZyx, o.blockShapeZyx, 6);
  const runs = new BlockRuns();
  const scratch = { parent: new Int32Array(1024) };
  // Per provisional component: voxel count and per-slice statistics (keyed by box-local z).
  const voxels = new Map<number, number>();
  const slices = new Map<number, Map<number, SliceStat>>();
  const blockBase = new Uint32Array(blocks.length);
  let done = 0;
  for (const [k, block] of blocks.entries()) {
    throwIfAborted(o.signal);
    const wb = block.writeBox;
    const data = (await o.sdf.read(wb, o.scale, o.signal ? { signal: o.signal } : {})) as ArrayLike<number>;
    const [nz, ny, nx] = wb.shapeZyx;
    sdfRuns(data, wb.shapeZyx, runs, scratch);
    const origin = [0, 1, 2].map((d) => wb.offsetZyx[d]! - o.box.offsetZyx[d]!) as Vec3;
    cc.addBlock(runs, origin);
    blockBase[k] = cc.lastBlockBase;
    for (let r = 0; r < nz * ny; r++) {
      const lz = Math.floor(r / ny);
      const ly = r % ny;
      const z = origin[0] + lz;
      const y = origin[1] + ly;
      for (let i = runs.rowStart[r]!, e = runs.rowStart[r + 1]!; i < e; i++) {
        const p = cc.runProv[i]!;
        if (p === 0) continue;
        const s = runs.start[i]!;
        const t = runs.end[i]!;
        let best = -Infinity;
        let bestX = s;
        const row = (lz * ny + ly) * nx;
        for (let x = s; x < t; x++) {
          const v = data[row + x]!;
          if (v > best) {
            best = v;
            bestX = x;
          }
        }
        const stat: SliceStat = { area: t - s, x0: origin[2] + s, x1: origin[2] + t - 1, y0: y, y1: y, best, bestAt: y * X + origin[2] + bestX };
        voxels.set(p, (voxels.get(p) ?? 0) + t - s);
        let m = slices.get(p);
        if (m === undefined) slices.set(p, (m = new Map()));
        m.set(z, mergeStat(m.get(z), stat));
      }
    }
    o.onBlock?.(++done, blocks.length);
  }
  const resolved = cc.resolve("connected-components");
  const instVoxels = new Array<number>(resolved.count + 1).fill(0);
  const instSlices = Array.from({ length: resolved.count + 1 }, () => new Map<number, SliceStat>());
  for (const [p, n] of voxels) {
    const i = resolved.instanceOfProv[p]!;
    instVoxels[i]! += n;
    for (const [z, s] of slices.get(p)!) instSlices[i]!.set(z, mergeStat(instSlices[i]!.get(z), s));
  }
  const seeds: Seed[] = [];
  const seedOfInstance = new Uint32Array(resolved.count + 1);
  for (let i = 1; i <= resolved.count; i++) {
    if (instVoxels[i]! < o.minVoxels) continue;
    seedOfInstance[i] = seeds.length + 1;
    const zs = [...instSlices[i]!.keys()].sort((a, b) => a - b);
    let z = zs[0]!;
    for (const zz of zs) if (instSlices[i]!.get(zz)!.area > instSlices[i]!.get(z)!.area) z = zz;
    const s = instSlices[i]!.get(z)!;
    seeds.push({
      z,
      x: s.bestAt % X,
      y: Math.floor(s.bestAt / X),
      box: [s.x0, s.y0, s.x1, s.y1],
      voxels: instVoxels[i]!,
      zRange: [zs[0]!, zs[zs.length - 1]!],
    });
  }
  const seedOfProv = new Uint32Array(resolved.instanceOfProv.length);
  for (let p = 1; p < seedOfProv.length; p++) seedOfProv[p] = seedOfInstance[resolved.instanceOfProv[p]!]!;
  return { seeds, components: { blockBase, seedOfProv } };
}
