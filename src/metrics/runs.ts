// Row runs of a label block and connected components over them. EM label volumes are mostly long
// runs of one value along x, so every per-block metric works on runs, not voxels: a voxel is
// touched once (to find its run) and everything after costs per run.

export type Connectivity = 6 | 26;

/**
 * The runs of one block of shape [nz, ny, nx] (C order, x fastest). Every row is covered
 * completely by its runs, background included, so two blocks' rows can be merged run by run.
 * Runs of row r = z * ny + y are [rowStart[r], rowStart[r + 1]).
 */
export class BlockRuns {
  nz = 0;
  ny = 0;
  nx = 0;
  count = 0;
  rowStart = new Int32Array(1);
  /** First x of the run (inclusive). */
  start = new Int32Array(256);
  /** Last x of the run plus one. */
  end = new Int32Array(256);
  /** Label value; 0 for background and for voxels outside the mask. */
  value = new Uint32Array(256);
  /** 1 where the run lies outside the evaluation mask (excluded from every count). */
  masked = new Uint8Array(256);
  /** Component of each foreground run (1-based, local to the block); 0 for background or masked. */
  comp = new Uint32Array(256);
  /** Number of components found by labelComponents. */
  compCount = 0;

  private grow(min: number): void {
    let n = this.start.length;
    while (n < min) n *= 2;
    const g = <T extends Int32Array | Uint32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a.subarray(0, this.count));
      return b;
    };
    this.start = g(this.start, (k) => new Int32Array(k));
    this.end = g(this.end, (k) => new Int32Array(k));
    this.value = g(this.value, (k) => new Uint32Array(k));
    this.masked = g(this.masked, (k) => new Uint8Array(k));
    this.comp = new Uint32Array(n);
  }

  /**
   * Splits `values` (shape [nz, ny, nx], C order) into runs of equal value. Where `mask` is 0 the
   * voxels form masked runs, whatever their value.
   */
  extract(values: Uint32Array, shapeZyx: readonly [number, number, number], mask?: Uint8Array): void {
    const [nz, ny, nx] = shapeZyx;
    this.nz = nz;
    this.ny = ny;
    this.nx = nx;
    const rows = nz * ny;
    if (this.rowStart.length < rows + 1) this.rowStart = new Int32Array(rows + 1);
    const rowStart = this.rowStart;
    let count = 0;
    let { start, end, value, masked } = this;
    for (let r = 0; r < rows; r++) {
      rowStart[r] = count;
      const o = r * nx;
      let x = 0;
      while (x < nx) {
        const v = values[o + x]!;
        let e = x + 1;
        let m = 0;
        if (mask === undefined) {
          while (e < nx && values[o + e] === v) e++;
        } else {
          const inside = mask[o + x] !== 0;
          m = inside ? 0 : 1;
          if (inside) while (e < nx && values[o + e] === v && mask[o + e] !== 0) e++;
          else while (e < nx && mask[o + e] === 0) e++;
        }
        if (count === start.length) {
          this.count = count;
          this.grow(count + 1);
          ({ start, end, value, masked } = this);
        }
        start[count] = x;
        end[count] = e;
        value[count] = m === 0 ? v : 0;
        masked[count] = m;
        count++;
        x = e;
      }
    }
    rowStart[rows] = count;
    this.count = count;
    if (this.comp.length < start.length) this.comp = new Uint32Array(start.length);
  }

  /**
   * Labels the 3D connected components of equal nonzero value inside the block (6-connectivity:
   * faces; 26: faces, edges and corners). Writes `comp` (1-based, numbered in raster order of
   * each component's first voxel) and `compCount`.
   */
  labelComponents(connectivity: Connectivity, scratch: { parent: Int32Array }): void {
    const n = this.count;
    if (scratch.parent.length < n) scratch.parent = new Int32Array(Math.max(n, scratch.parent.length * 2));
    const parent = scratch.parent;
    const { value, rowStart, ny, nz } = this;
    for (let i = 0; i < n; i++) parent[i] = i;
    const d = connectivity === 26 ? 1 : 0;
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        const r = z * ny + y;
        if (y > 0) this.unionRows(r, r - 1, d, parent);
        if (z > 0) {
          const below = r - ny;
          this.unionRows(r, below, d, parent);
          if (d === 1) {
            if (y > 0) this.unionRows(r, below - 1, d, parent);
            if (y + 1 < ny) this.unionRows(r, below + 1, d, parent);
          }
        }
      }
    }
    const comp = this.comp;
    let next = 0;
    // Roots get their number when first met in raster order; parent[] of a root is reused to hold
    // its number as -(number) so no second array is needed.
    for (let r = 0, rows = nz * ny; r < rows; r++) {
      for (let i = rowStart[r]!, e = rowStart[r + 1]!; i < e; i++) {
        if (value[i] === 0) {
          comp[i] = 0;
          continue;
        }
        let root = i;
        while (parent[root]! >= 0 && parent[root] !== root) root = parent[root]!;
        if (parent[root]! >= 0) {
          next++;
          parent[root] = -next;
        }
        comp[i] = -parent[root]!;
        // Path compression onto the root keeps later finds short.
        let j = i;
        while (j !== root) {
          const p = parent[j]!;
          parent[j] = root;
          j = p;
        }
      }
    }
    this.compCount = next;
  }

  /** Unions the foreground runs of row `a` with those of row `b` that touch them and share their value. */
  private unionRows(a: number, b: number, d: number, parent: Int32Array): void {
    const { start, end, value, rowStart } = this;
    let j = rowStart[b]!;
    const jEnd = rowStart[b + 1]!;
    for (let i = rowStart[a]!, iEnd = rowStart[a + 1]!; i < iEnd; i++) {
      const v = value[i]!;
      if (v === 0) continue;
      const lo = start[i]! - d;
      const hi = end[i]! + d;
      while (j < jEnd && end[j]! <= lo) j++;
      for (let k = j; k < jEnd && start[k]! < hi; k++) {
        if (value[k] !== v) continue;
        let ra = i;
        while (parent[ra] !== ra) ra = parent[ra]!;
        let rb = k;
        while (parent[rb] !== rb) rb = parent[rb]!;
        if (ra !== rb) {
          // The smaller index becomes the root so roots stay early in raster order.
          if (ra < rb) parent[rb] = ra;
          else parent[ra] = rb;
        }
        parent[i] = ra < rb ? ra : rb;
      }
    }
  }
}
