// Slice-wise view of matched objects along z: the extent of each ground-truth object and the
// flicker of its matched prediction (slices where the prediction stops covering the object's
// cross-section between two slices where it covers it), the failure a slice-by-slice propagator
// is prone to and a 3D model should not show.

import type { Contingency, ProvisionalContingency } from "./contingency.ts";

export interface SliceStats {
  /** First and last z of each gt object at [g] (-1 for index 0). */
  zFirst: Int32Array;
  zLast: Int32Array;
  /**
   * Flicker slices of each gt object at [g]: slices z with the object present and no overlap with
   * its matched prediction, while the prediction overlaps the object at some z1 < z and z2 > z.
   * 0 for objects without a match.
   */
  flicker: Uint32Array;
}

/**
 * `matchOfGt[g]` is the index of the contingency pair (g, p) that matched object g, or -1.
 */
export function sliceStats(prov: ProvisionalContingency, table: Contingency, gtOfProv: Uint32Array, matchOfGt: Int32Array): SliceStats {
  const NG = table.gtCount;
  const zFirst = new Int32Array(NG + 1).fill(-1);
  const zLast = new Int32Array(NG + 1).fill(-1);
  for (let e = 0; e < prov.length; e++) {
    const g = gtOfProv[prov.gt[e]!]!;
    if (g === 0) continue;
    prov.forEachSlice(e, (z) => {
      if (zFirst[g] === -1 || z < zFirst[g]!) zFirst[g] = z;
      if (z > zLast[g]!) zLast[g] = z;
    });
  }
  // Per matched object, one byte per slice of its extent: bit 0 present, bit 1 covered by the match.
  const state = new Map<number, Uint8Array>();
  for (let g = 1; g <= NG; g++) if (matchOfGt[g]! >= 0) state.set(g, new Uint8Array(zLast[g]! - zFirst[g]! + 1));
  for (let e = 0; e < prov.length; e++) {
    const g = gtOfProv[prov.gt[e]!]!;
    const s = state.get(g);
    if (s === undefined) continue;
    const covered = table.entryPair[e] === matchOfGt[g] ? 3 : 1;
    const z0 = zFirst[g]!;
    prov.forEachSlice(e, (z) => (s[z - z0]! |= covered));
  }
  const flicker = new Uint32Array(NG + 1);
  for (const [g, s] of state) {
    let first = -1;
    let last = -1;
    for (let i = 0; i < s.length; i++) {
      if (s[i]! & 2) {
        if (first === -1) first = i;
        last = i;
      }
    }
    let n = 0;
    for (let i = first + 1; i < last; i++) if (s[i] === 1) n++;
    flicker[g] = n;
  }
  return { zFirst, zLast, flicker };
}
