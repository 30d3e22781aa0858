// 3D connected components of a label volume, computed block by block in raster order with
// union-find across block borders, so memory holds one block, one z-plane of border ids and one
// entry per provisional component, never the volume.
//
// Two voxels are connected when they are neighbours (6 or 26) and carry the same nonzero label.
// For a semantic (binary) volume these are the usual foreground components; for an instance
// volume they are the connected pieces of each instance.

import type { Vec3 } from "#src/volume/types.ts";
import type { BlockRuns, Connectivity } from "./runs.ts";
import { UnionFind } from "./union_find.ts";

/** Where a volume's instances come from. */
export type InstanceSource = "connected-components" | "labels";

/** 64-bit raw labels of a block's local values, split in 32-bit halves (value 0 is background). */
export interface RawLabelTable {
  lo: Uint32Array;
  hi: Uint32Array;
}

export interface ResolvedInstances {
  source: InstanceSource;
  /** Number of instances N; instance indices are 1..N, 0 is background. */
  count: number;
  /** Instance index of each provisional id (index 0: background). */
  instanceOfProv: Uint32Array;
  /** The id reported for instance i at [i - 1]: the label, or 1..N in raster order of first voxel for components. */
  ids: bigint[];
  /** Number of 3D connected components making up instance i, at [i]. */
  componentsPerInstance: Uint32Array;
}

export class BlockwiseComponents {
  private readonly uf = new UnionFind();
  private rawLo = new Uint32Array(1024);
  private rawHi = new Uint32Array(1024);
  /** Global C-order index of the first voxel of each provisional component. */
  private firstVoxel = new Float64Array(1024);
  private planePrev: Uint32Array;
  private planeCur: Uint32Array;
  private rowPrev: Uint32Array;
  private rowCur: Uint32Array;
  private col: Uint32Array;
  private slabZ = -1;
  private rowY = -1;
  private firstLo = 0;
  private firstHi = 0;
  private labelsSeen = 0;
  /** Provisional id of each run of the last block added (0: background or masked). */
  runProv = new Uint32Array(256);
  /** Local component c (runs.comp, 1-based) of the last block added has provisional id lastBlockBase + c. */
  lastBlockBase = 0;

  constructor(
    readonly shapeZyx: Vec3,
    maxBlockShapeZyx: Vec3,
    readonly connectivity: Connectivity,
  ) {
    const [, Y, X] = shapeZyx;
    const [bz, by] = maxBlockShapeZyx;
    this.planePrev = new Uint32Array(Y * X);
    this.planeCur = new Uint32Array(Y * X);
    this.rowPrev = new Uint32Array(bz * X);
    this.rowCur = new Uint32Array(bz * X);
    this.col = new Uint32Array(bz * by);
    this.uf.add(1); // id 0 stands for background
  }

  /** Number of distinct nonzero labels seen, saturating at 2 (enough to tell semantic from instance). */
  get distinctLabels(): number {
    return this.labelsSeen;
  }

  get provisionalCount(): number {
    return this.uf.size;
  }

  /**
   * Adds the next block in raster order (z slabs, then rows of blocks along y, then x). `runs`
   * must have been labelled with `labelComponents`. `raw` maps 64-bit labels; without it a run's
   * value is its label.
   */
  addBlock(runs: BlockRuns, originZyx: Vec3, raw?: RawLabelTable): void {
    const [oz, oy, ox] = originZyx;
    if (oz !== this.slabZ) {
      [this.planePrev, this.planeCur] = [this.planeCur, this.planePrev];
      this.slabZ = oz;
      this.rowY = -1;
    }
    if (oy !== this.rowY) {
      [this.rowPrev, this.rowCur] = [this.rowCur, this.rowPrev];
      this.rowY = oy;
    }
    this.assignProvisional(runs, originZyx, raw);
    if (oz > 0) this.joinPlane(runs, originZyx);
    if (oy > 0) this.joinRow(runs, originZyx);
    if (ox > 0) this.joinColumn(runs);
    this.writeBorders(runs, originZyx);
  }

  private assignProvisional(runs: BlockRuns, [oz, oy, ox]: Vec3, raw: RawLabelTable | undefined): void {
    const n = runs.count;
    if (this.runProv.length < n) this.runProv = new Uint32Array(runs.start.length);
    const base = this.uf.add(runs.compCount) - 1;
    this.lastBlockBase = base;
    const need = this.uf.size;
    if (need > this.rawLo.length) {
      let cap = this.rawLo.length;
      while (cap < need) cap *= 2;
      const lo = new Uint32Array(cap);
      lo.set(this.rawLo);
      const hi = new Uint32Array(cap);
      hi.set(this.rawHi);
      const fv = new Float64Array(cap);
      fv.set(this.firstVoxel);
      this.rawLo = lo;
      this.rawHi = hi;
      this.firstVoxel = fv;
    }
    const [, Y, X] = this.shapeZyx;
    const { comp, value, start, rowStart, ny } = runs;
    const runProv = this.runProv;
    let seen = 0;
    for (let r = 0, rows = runs.nz * ny; r < rows; r++) {
      for (let i = rowStart[r]!, e = rowStart[r + 1]!; i < e; i++) {
        const c = comp[i]!;
        if (c === 0) {
          runProv[i] = 0;
          continue;
        }
        const p = base + c;
        runProv[i] = p;
        if (c > seen) {
          // Components are numbered in raster order, so this run is the component's first voxel.
          seen = c;
          const v = value[i]!;
          const lo = raw === undefined ? v : raw.lo[v]!;
          const hi = raw === undefined ? 0 : raw.hi[v]!;
          this.rawLo[p] = lo;
          this.rawHi[p] = hi;
          const z = oz + Math.floor(r / ny);
          const y = oy + (r % ny);
          this.firstVoxel[p] = (z * Y + y) * X + ox + start[i]!;
          if (this.labelsSeen === 0) {
            this.firstLo = lo;
            this.firstHi = hi;
            this.labelsSeen = 1;
          } else if (this.labelsSeen === 1 && (lo !== this.firstLo || hi !== this.firstHi)) {
            this.labelsSeen = 2;
          }
        }
      }
    }
  }

  private joinRange(p: number, buf: Uint32Array, from: number, to: number): void {
    const { rawLo, rawHi } = this;
    let last = 0;
    for (let k = from; k < to; k++) {
      const q = buf[k]!;
      if (q === 0 || q === last) continue;
      last = q;
      if (rawLo[q] === rawLo[p] && rawHi[q] === rawHi[p]) this.uf.union(p, q);
    }
  }

  /** Joins with the last slice of the previous slab (every block there precedes this one). */
  private joinPlane(runs: BlockRuns, [, oy, ox]: Vec3): void {
    const [, Y, X] = this.shapeZyx;
    const d = this.connectivity === 26 ? 1 : 0;
    const { start, end, rowStart, ny } = runs;
    for (let y = 0; y < ny; y++) {
      for (let i = rowStart[y]!, e = rowStart[y + 1]!; i < e; i++) {
        const p = this.runProv[i]!;
        if (p === 0) continue;
        const xs = Math.max(0, ox + start[i]! - d);
        const xe = Math.min(X, ox + end[i]! + d);
        for (let gy = Math.max(0, oy + y - d), gyEnd = Math.min(Y - 1, oy + y + d); gy <= gyEnd; gy++) {
          this.joinRange(p, this.planePrev, gy * X + xs, gy * X + xe);
        }
      }
    }
  }

  /** Joins with the last row of the previous row of blocks in this slab (all x, all z of the slab). */
  private joinRow(runs: BlockRuns, [, , ox]: Vec3): void {
    const X = this.shapeZyx[2];
    const d = this.connectivity === 26 ? 1 : 0;
    const { start, end, rowStart, ny, nz } = runs;
    for (let z = 0; z < nz; z++) {
      const r = z * ny;
      for (let i = rowStart[r]!, e = rowStart[r + 1]!; i < e; i++) {
        const p = this.runProv[i]!;
        if (p === 0) continue;
        const xs = Math.max(0, ox + start[i]! - d);
        const xe = Math.min(X, ox + end[i]! + d);
        for (let zz = Math.max(0, z - d), zEnd = Math.min(nz - 1, z + d); zz <= zEnd; zz++) {
          this.joinRange(p, this.rowPrev, zz * X + xs, zz * X + xe);
        }
      }
    }
  }

  /** Joins with the last column of the previous block in this row (its z and y range only). */
  private joinColumn(runs: BlockRuns): void {
    const d = this.connectivity === 26 ? 1 : 0;
    const { start, rowStart, ny, nz } = runs;
    const col = this.col;
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        const i = rowStart[z * ny + y]!;
        const p = this.runProv[i]!;
        if (p === 0 || start[i] !== 0) continue;
        for (let zz = Math.max(0, z - d), zEnd = Math.min(nz - 1, z + d); zz <= zEnd; zz++) {
          const o = zz * ny;
          this.joinRange(p, col, o + Math.max(0, y - d), o + Math.min(ny, y + d + 1));
        }
      }
    }
  }

  private writeBorders(runs: BlockRuns, [, oy, ox]: Vec3): void {
    const X = this.shapeZyx[2];
    const { start, end, rowStart, ny, nz } = runs;
    const runProv = this.runProv;
    const lastSlice = (nz - 1) * ny;
    for (let y = 0; y < ny; y++) {
      const r = lastSlice + y;
      const o = (oy + y) * X + ox;
      for (let i = rowStart[r]!, e = rowStart[r + 1]!; i < e; i++) this.planeCur.fill(runProv[i]!, o + start[i]!, o + end[i]!);
    }
    for (let z = 0; z < nz; z++) {
      const r = z * ny + ny - 1;
      const o = z * X + ox;
      for (let i = rowStart[r]!, e = rowStart[r + 1]!; i < e; i++) this.rowCur.fill(runProv[i]!, o + start[i]!, o + end[i]!);
      for (let y = 0; y < ny; y++) this.col[z * ny + y] = runProv[rowStart[z * ny + y + 1]! - 1]!;
    }
  }

  /**
   * Resolves provisional ids to instances: "connected-components" numbers the final components
   * 1..N in raster order of their first voxel (as scipy.ndimage.label does); "labels" makes one
   * instance per distinct label, ids ascending.
   */
  resolve(source: InstanceSource): ResolvedInstances {
    const n = this.uf.size;
    const root = new Uint32Array(n);
    const minFirst = new Float64Array(n).fill(Infinity);
    for (let p = 1; p < n; p++) {
      const r = this.uf.find(p);
      root[p] = r;
      if (this.firstVoxel[p]! < minFirst[r]!) minFirst[r] = this.firstVoxel[p]!;
    }
    const roots: number[] = [];
    for (let p = 1; p < n; p++) if (root[p] === p) roots.push(p);
    const instanceOfProv = new Uint32Array(n);
    if (source === "connected-components") {
      roots.sort((a, b) => minFirst[a]! - minFirst[b]!);
      const index = new Uint32Array(n);
      roots.forEach((r, i) => (index[r] = i + 1));
      for (let p = 1; p < n; p++) instanceOfProv[p] = index[root[p]!]!;
      const componentsPerInstance = new Uint32Array(roots.length + 1).fill(1);
      componentsPerInstance[0] = 0;
      return { source, count: roots.length, instanceOfProv, ids: roots.map((_, i) => BigInt(i + 1)), componentsPerInstance };
    }
    const labelOf = (p: number) => (BigInt(this.rawHi[p]!) << 32n) | BigInt(this.rawLo[p]!);
    const labels = [...new Set(roots.map(labelOf))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const indexOfLabel = new Map<bigint, number>(labels.map((l, i) => [l, i + 1]));
    const componentsPerInstance = new Uint32Array(labels.length + 1);
    const indexOfRoot = new Uint32Array(n);
    for (const r of roots) {
      const i = indexOfLabel.get(labelOf(r))!;
      indexOfRoot[r] = i;
      componentsPerInstance[i]!++;
    }
    for (let p = 1; p < n; p++) instanceOfProv[p] = indexOfRoot[root[p]!]!;
    return { source, count: labels.length, instanceOfProv, ids: labels, componentsPerInstance };
  }
}
