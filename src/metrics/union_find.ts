// A growable union-find over dense uint32 ids, for joining block-local components across block
// borders. Memory grows with the number of provisional components, never with voxels.

export class UnionFind {
  private parent = new Uint32Array(1024);
  private n = 0;

  get size(): number {
    return this.n;
  }

  /** Adds `count` singleton sets; returns the id of the first. */
  add(count: number): number {
    const first = this.n;
    const need = first + count;
    if (need > 0xffffffff) throw new RangeError("more than 2^32 provisional components");
    if (need > this.parent.length) {
      let cap = this.parent.length;
      while (cap < need) cap *= 2;
      const p = new Uint32Array(cap);
      p.set(this.parent.subarray(0, first));
      this.parent = p;
    }
    for (let i = first; i < need; i++) this.parent[i] = i;
    this.n = need;
    return first;
  }

  find(a: number): number {
    const parent = this.parent;
    let root = a;
    while (parent[root] !== root) root = parent[root]!;
    while (parent[a] !== root) {
      const next = parent[a]!;
      parent[a] = root;
      a = next;
    }
    return root;
  }

  /** Joins the sets of a and b; the smaller root id wins so roots are the earliest-created ids. */
  union(a: number, b: number): void {
    const ra = this.find(a);
    const rb = this.find(b);
    if (ra < rb) this.parent[rb] = ra;
    else if (rb < ra) this.parent[ra] = rb;
  }
}
