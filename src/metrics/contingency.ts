// The sparse contingency table of (ground-truth instance, predicted instance) voxel overlaps,
// background (0) included, accumulated block by block. Every metric except connected components
// is computed from it, so one pass over the volumes feeds all of them.

import type { ResolvedInstances } from "./components.ts";
import type { BlockRuns } from "./runs.ts";

/**
 * Overlaps between provisional components (block-local pieces, see components.ts), with the set
 * of z slices each overlap occurs in (a bit mask per block slab) for the slice-wise metrics.
 */
export class ProvisionalContingency {
  length = 0;
  gt = new Uint32Array(1024);
  pred = new Uint32Array(1024);
  count = new Float64Array(1024);
  /** First z of the slab the entry comes from; bit k of its mask words is slice z0 + k. */
  z0 = new Int32Array(1024);
  masks: Uint32Array;
  /** Mask words per entry. */
  readonly words: number;
  private readonly blockIndex = new Map<number, number>();

  constructor(maxBlockDepth: number) {
    this.words = Math.ceil(maxBlockDepth / 32);
    this.masks = new Uint32Array(1024 * this.words);
  }

  private push(g: number, p: number, z0: number): number {
    const i = this.length;
    if (i === this.gt.length) {
      const cap = i * 2;
      const grow = <T extends Uint32Array | Int32Array | Float64Array>(a: T, b: T): T => (b.set(a), b);
      this.gt = grow(this.gt, new Uint32Array(cap));
      this.pred = grow(this.pred, new Uint32Array(cap));
      this.count = grow(this.count, new Float64Array(cap));
      this.z0 = grow(this.z0, new Int32Array(cap));
      this.masks = grow(this.masks, new Uint32Array(cap * this.words));
    }
    this.gt[i] = g;
    this.pred[i] = p;
    this.count[i] = 0;
    this.z0[i] = z0;
    this.masks.fill(0, i * this.words, (i + 1) * this.words);
    this.length = i + 1;
    return i;
  }

  /**
   * Adds the overlaps of one block: `gtRuns`/`predRuns` are the labelled runs of the same block,
   * `gtProv`/`predProv` the provisional id of each run (components.ts), `z0` the block's first z.
   * Masked runs are skipped.
   */
  addBlock(gtRuns: BlockRuns, gtProv: Uint32Array, predRuns: BlockRuns, predProv: Uint32Array, z0: number): void {
    const map = this.blockIndex;
    map.clear();
    const stride = predRuns.compCount + 1;
    const W = this.words;
    const { nz, ny, nx } = gtRuns;
    const gStart = gtRuns.rowStart;
    const pStart = predRuns.rowStart;
    const gEnd = gtRuns.end;
    const pEnd = predRuns.end;
    const gMasked = gtRuns.masked;
    const pMasked = predRuns.masked;
    const gComp = gtRuns.comp;
    const pComp = predRuns.comp;
    let lastKey = -1;
    let lastIdx = -1;
    for (let z = 0; z < nz; z++) {
      const word = z >> 5;
      const bit = 1 << (z & 31);
      for (let y = 0; y < ny; y++) {
        const r = z * ny + y;
        let i = gStart[r]!;
        let j = pStart[r]!;
        let x = 0;
        while (x < nx) {
          const ge = gEnd[i]!;
          const pe = pEnd[j]!;
          const e = ge < pe ? ge : pe;
          if (gMasked[i] === 0 && pMasked[j] === 0) {
            const key = gComp[i]! * stride + pComp[j]!;
            let idx = lastIdx;
            if (key !== lastKey) {
              const found = map.get(key);
              if (found === undefined) {
                idx = this.push(gtProv[i]!, predProv[j]!, z0);
                map.set(key, idx);
              } else idx = found;
              lastKey = key;
              lastIdx = idx;
            }
            this.count[idx]! += e - x;
            this.masks[idx * W + word]! |= bit;
          }
          x = e;
          if (ge === e) i++;
          if (pe === e) j++;
        }
      }
    }
  }

  /** Calls fn(entry, z) for every slice z of an entry's mask. */
  forEachSlice(entry: number, fn: (z: number) => void): void {
    const W = this.words;
    const base = this.z0[entry]!;
    for (let w = 0; w < W; w++) {
      let m = this.masks[entry * W + w]!;
      while (m !== 0) {
        const b = 31 - Math.clz32(m & -m);
        fn(base + w * 32 + b);
        m &= m - 1;
      }
    }
  }

  /** Merges provisional entries into the instance-level table. */
  resolve(gt: ResolvedInstances, pred: ResolvedInstances): Contingency {
    const NG = gt.count;
    const NP = pred.count;
    const stride = NP + 1;
    if ((NG + 1) * stride > Number.MAX_SAFE_INTEGER) throw new RangeError("too many instances for a contingency key");
    const index = new Map<number, number>();
    const g: number[] = [];
    const p: number[] = [];
    const n: number[] = [];
    const entryPair = new Int32Array(this.length);
    for (let e = 0; e < this.length; e++) {
      const gi = gt.instanceOfProv[this.gt[e]!]!;
      const pi = pred.instanceOfProv[this.pred[e]!]!;
      const key = gi * stride + pi;
      let k = index.get(key);
      if (k === undefined) {
        k = g.length;
        index.set(key, k);
        g.push(gi);
        p.push(pi);
        n.push(0);
      }
      n[k]! += this.count[e]!;
      entryPair[e] = k;
    }
    const gtSize = new Float64Array(NG + 1);
    const predSize = new Float64Array(NP + 1);
    let total = 0;
    for (let k = 0; k < g.length; k++) {
      gtSize[g[k]!]! += n[k]!;
      predSize[p[k]!]! += n[k]!;
      total += n[k]!;
    }
    return {
      gtCount: NG,
      predCount: NP,
      gt: Uint32Array.from(g),
      pred: Uint32Array.from(p),
      count: Float64Array.from(n),
      gtSize,
      predSize,
      total,
      entryPair,
    };
  }
}

/** Instance-level contingency table; instance 0 is background on both sides. */
export interface Contingency {
  gtCount: number;
  predCount: number;
  /** Pair k overlaps gt instance gt[k] and predicted instance pred[k] in count[k] voxels. */
  gt: Uint32Array;
  pred: Uint32Array;
  count: Float64Array;
  /** Voxels of each gt instance (index 0: background) inside the evaluated region. */
  gtSize: Float64Array;
  predSize: Float64Array;
  /** Voxels evaluated (inside the mask). */
  total: number;
  /** For each provisional entry, the pair it was merged into. */
  entryPair: Int32Array;
}
