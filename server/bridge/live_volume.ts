// A live uint64 label volume: the masks of one interactive session, held in memory on the grid of
// the session's image level, readable as a VolumeSource (so the bridge serves it as precomputed like
// any other volume) and writable slice by slice, with a generation number per chunk.
//
// Chunks are allocated on first write (absent chunks read as 0), so memory follows what was
// segmented, not the volume's size.

import { invalidArgument } from "#src/errors.ts";
import type { Box3, ReadOptions, ScaleLevel, Vec3, VolumeMetadata, VolumeSource } from "#src/volume/types.ts";

/** A half-open box on one slice, in volume voxel coordinates (y, x). */
export interface SliceBox {
  y0: number;
  x0: number;
  y1: number;
  x1: number;
}

/** One object's mask on slice z, cropped to `bbox` (uint8 0/1, C order y, x); empty bbox: no pixels. */
export interface SliceMaskWrite {
  objectId: bigint;
  z: number;
  bbox: SliceBox;
  data: Uint8Array;
}

export interface LiveVolumeOptions {
  /** The image level the masks live on: its shape, offset and voxel size are the live volume's. */
  level: Pick<ScaleLevel, "key" | "shapeZyx" | "offsetZyx" | "voxelSizeNm">;
  /** Chunking of the live volume (the unit of refresh in the viewer). */
  chunkShapeZyx: Vec3;
}

const EMPTY: SliceBox = { y0: 0, x0: 0, y1: 0, x1: 0 };

const isEmpty = (b: SliceBox) => b.y1 <= b.y0 || b.x1 <= b.x0;

function union(a: SliceBox, b: SliceBox): SliceBox {
  if (isEmpty(a)) return b;
  if (isEmpty(b)) return a;
  return { y0: Math.min(a.y0, b.y0), x0: Math.min(a.x0, b.x0), y1: Math.max(a.y1, b.y1), x1: Math.max(a.x1, b.x1) };
}

export class LiveLabelVolume implements VolumeSource {
  readonly metadata: VolumeMetadata;
  readonly #level: ScaleLevel;
  readonly #chunks = new Map<string, BigUint64Array>();
  /** Generation of the last change of each chunk (absent: never changed, generation 0). */
  readonly #chunkGeneration = new Map<string, number>();
  /** Voxel count per object. */
  readonly #counts = new Map<bigint, number>();
  /** Per object, per slice: a box (volume coordinates) holding all its voxels on that slice. */
  readonly #extent = new Map<bigint, Map<number, SliceBox>>();
  #generation = 0;
  /** Objects whose voxels changed since the last `commit` (announced with it: their meshes are stale). */
  readonly #touched = new Set<bigint>();

  constructor(options: LiveVolumeOptions) {
    const { level, chunkShapeZyx } = options;
    this.#level = { index: 0, key: level.key, shapeZyx: [...level.shapeZyx], offsetZyx: [...level.offsetZyx], voxelSizeNm: [...level.voxelSizeNm], chunkShapeZyx: [...chunkShapeZyx] };
    this.metadata = { format: "live", dtype: "uint64", scales: [this.#level], fillValue: 0n, kind: "segmentation" };
  }

  get generation(): number {
    return this.#generation;
  }

  /** Voxels per object, objects with at least one voxel, ascending by id. */
  objects(): { objectId: bigint; voxels: number }[] {
    return [...this.#counts]
      .filter(([, n]) => n > 0)
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .map(([objectId, voxels]) => ({ objectId, voxels }));
  }

  chunkGeneration(chunkIndexZyx: Vec3): number {
    return this.#chunkGeneration.get(chunkIndexZyx.join(",")) ?? 0;
  }

  /** The precomputed chunk name (`x0-x1_y0-y1_z0-z1`, volume coordinates) of a chunk index. */
  chunkName(chunkIndexZyx: Vec3): string {
    const { offsetZyx, shapeZyx, chunkShapeZyx } = this.#level;
    const part = (d: number) => {
      const b = offsetZyx[d]! + chunkIndexZyx[d]! * chunkShapeZyx[d]!;
      return `${b}-${Math.min(b + chunkShapeZyx[d]!, offsetZyx[d]! + shapeZyx[d]!)}`;
    };
    return `${part(2)}_${part(1)}_${part(0)}`;
  }

  get chunkCount(): number {
    const { shapeZyx, chunkShapeZyx } = this.#level;
    return [0, 1, 2].reduce((n, d) => n * Math.ceil(shapeZyx[d]! / chunkShapeZyx[d]!), 1);
  }

  /**
   * Writes masks: on each mask's slice, the object's voxels become exactly the mask (voxels it
   * leaves are cleared, voxels of other objects under it are taken over). Returns the indices
   * (zyx) of chunks whose content changed; the caller publishes them with `commit`.
   */
  write(masks: readonly SliceMaskWrite[]): Vec3[] {
    const changed = new Map<string, Vec3>();
    const { offsetZyx, shapeZyx, chunkShapeZyx } = this.#level;
    const [, oy, ox] = offsetZyx;
    const [, sy, sx] = shapeZyx;
    for (const m of masks) {
      const lz = m.z - offsetZyx[0];
      if (!Number.isInteger(lz) || lz < 0 || lz >= shapeZyx[0]) throw invalidArgument("z", `${m.z} is outside the live volume`);
      const b = m.bbox;
      if (!isEmpty(b) && (b.y0 < oy || b.x0 < ox || b.y1 > oy + sy || b.x1 > ox + sx || m.data.length !== (b.y1 - b.y0) * (b.x1 - b.x0))) {
        throw invalidArgument("bbox", `mask box [${b.y0}, ${b.x0}, ${b.y1}, ${b.x1}) with ${m.data.length} bytes does not fit the live volume`);
      }
      const extents = this.#extent.get(m.objectId) ?? new Map<number, SliceBox>();
      this.#extent.set(m.objectId, extents);
      const area = union(extents.get(m.z) ?? EMPTY, b);
      if (isEmpty(area)) continue;
      const w = b.x1 - b.x0;
      const cz = Math.floor(lz / chunkShapeZyx[0]);
      const z0 = lz - cz * chunkShapeZyx[0];
      let newExtent = EMPTY;
      for (let cy = Math.floor((area.y0 - oy) / chunkShapeZyx[1]); cy * chunkShapeZyx[1] < area.y1 - oy; cy++) {
        for (let cx = Math.floor((area.x0 - ox) / chunkShapeZyx[2]); cx * chunkShapeZyx[2] < area.x1 - ox; cx++) {
          const key = `${cz},${cy},${cx}`;
          const [dz, dy, dx] = this.#chunkDims([cz, cy, cx]);
          let chunk = this.#chunks.get(key);
          const yLo = Math.max(area.y0 - oy, cy * chunkShapeZyx[1]);
          const yHi = Math.min(area.y1 - oy, cy * chunkShapeZyx[1] + dy);
          const xLo = Math.max(area.x0 - ox, cx * chunkShapeZyx[2]);
          const xHi = Math.min(area.x1 - ox, cx * chunkShapeZyx[2] + dx);
          let dirty = false;
          for (let y = yLo; y < yHi; y++) {
            for (let x = xLo; x < xHi; x++) {
              const vy = y + oy;
              const vx = x + ox;
              const inMask = vy >= b.y0 && vy < b.y1 && vx >= b.x0 && vx < b.x1 && m.data[(vy - b.y0) * w + (vx - b.x0)] !== 0;
              const i = (z0 * dy + (y - cy * chunkShapeZyx[1])) * dx + (x - cx * chunkShapeZyx[2]);
              const old = chunk === undefined ? 0n : chunk[i]!;
              if (inMask) newExtent = union(newExtent, { y0: vy, x0: vx, y1: vy + 1, x1: vx + 1 });
              const next = inMask ? m.objectId : old === m.objectId ? 0n : old;
              if (next === old) continue;
              if (chunk === undefined) {
                chunk = new BigUint64Array(dz * dy * dx);
                this.#chunks.set(key, chunk);
              }
              chunk[i] = next;
              this.#count(old, next);
              dirty = true;
            }
          }
          if (dirty) changed.set(key, [cz, cy, cx]);
        }
      }
      if (isEmpty(newExtent)) extents.delete(m.z);
      else extents.set(m.z, newExtent);
    }
    return [...changed.values()];
  }

  #count(old: bigint, next: bigint): void {
    if (old !== 0n) {
      this.#counts.set(old, (this.#counts.get(old) ?? 0) - 1);
      this.#touched.add(old);
    }
    if (next !== 0n) {
      this.#counts.set(next, (this.#counts.get(next) ?? 0) + 1);
      this.#touched.add(next);
    }
  }

  /**
   * Writes a labelled block (uint64, C order z, y, x; volume coordinates) inside `box`: where the
   * block is non-zero and `replaceable(old)` holds, the voxel takes the block's id; voxels with a
   * replaceable id that the block leaves at 0 are cleared; all others keep their id. Returns the
   * indices (zyx) of changed chunks, as `write` does.
   */
  writeBlock(box: Box3, labels: BigUint64Array, replaceable: (old: bigint) => boolean): Vec3[] {
    const { offsetZyx, shapeZyx, chunkShapeZyx } = this.#level;
    const local = box.offsetZyx.map((o, d) => o - offsetZyx[d]!) as Vec3;
    const [bz, by, bx] = box.shapeZyx;
    for (let d = 0; d < 3; d++) {
      if (!(local[d]! >= 0 && box.shapeZyx[d]! > 0 && local[d]! + box.shapeZyx[d]! <= shapeZyx[d]!)) {
        throw invalidArgument("box", `[${box.offsetZyx.join(", ")}] + [${box.shapeZyx.join(", ")}] is outside the live volume`);
      }
    }
    if (labels.length !== bz * by * bx) throw invalidArgument("labels", `${labels.length} labels for a box of ${bz * by * bx} voxels`);
    const changed: Vec3[] = [];
    const cLo = [0, 1, 2].map((d) => Math.floor(local[d]! / chunkShapeZyx[d]!));
    const cHi = [0, 1, 2].map((d) => Math.ceil((local[d]! + box.shapeZyx[d]!) / chunkShapeZyx[d]!));
    for (let cz = cLo[0]!; cz < cHi[0]!; cz++)
      for (let cy = cLo[1]!; cy < cHi[1]!; cy++)
        for (let cx = cLo[2]!; cx < cHi[2]!; cx++) {
          const index: Vec3 = [cz, cy, cx];
          const key = index.join(",");
          const dims = this.#chunkDims(index);
          const c0 = [cz * chunkShapeZyx[0], cy * chunkShapeZyx[1], cx * chunkShapeZyx[2]] as Vec3;
          const lo = [0, 1, 2].map((d) => Math.max(local[d]!, c0[d]!));
          const hi = [0, 1, 2].map((d) => Math.min(local[d]! + box.shapeZyx[d]!, c0[d]! + dims[d]!));
          let chunk = this.#chunks.get(key);
          let dirty = false;
          for (let z = lo[0]!; z < hi[0]!; z++) {
            const extents = new Map<bigint, SliceBox>();
            for (let y = lo[1]!; y < hi[1]!; y++) {
              const src = ((z - local[0]) * by + (y - local[1])) * bx - local[2];
              const dst = ((z - c0[0]) * dims[1] + (y - c0[1])) * dims[2] - c0[2];
              for (let x = lo[2]!; x < hi[2]!; x++) {
                const old = chunk === undefined ? 0n : chunk[dst + x]!;
                if (!replaceable(old)) continue;
                const next = labels[src + x]!;
                if (next !== 0n) {
                  const vy = y + offsetZyx[1];
                  const vx = x + offsetZyx[2];
                  extents.set(next, union(extents.get(next) ?? EMPTY, { y0: vy, x0: vx, y1: vy + 1, x1: vx + 1 }));
                }
                if (next === old) continue;
                if (chunk === undefined) {
                  chunk = new BigUint64Array(dims[0] * dims[1] * dims[2]);
                  this.#chunks.set(key, chunk);
                }
                chunk[dst + x] = next;
                this.#count(old, next);
                dirty = true;
              }
            }
            // Extents only grow here (a cleared voxel may stay inside its old box): they bound an object's voxels, they need not be tight.
            const vz = z + offsetZyx[0];
            for (const [id, b] of extents) {
              const perSlice = this.#extent.get(id) ?? new Map<number, SliceBox>();
              this.#extent.set(id, perSlice);
              perSlice.set(vz, union(perSlice.get(vz) ?? EMPTY, b));
            }
          }
          if (dirty) changed.push(index);
        }
    return changed;
  }

  /** Objects whose voxels changed since the last call (ascending). */
  takeChangedObjects(): bigint[] {
    const out = [...this.#touched].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    this.#touched.clear();
    return out;
  }

  /** Clears every voxel of `objectId`; returns the changed chunks. */
  clearObject(objectId: bigint): Vec3[] {
    const extents = this.#extent.get(objectId);
    if (extents === undefined) return [];
    const changed = this.write([...extents.keys()].map((z) => ({ objectId, z, bbox: EMPTY, data: new Uint8Array(0) })));
    this.#extent.delete(objectId);
    this.#counts.delete(objectId);
    return changed;
  }

  /** Stamps the changed chunks with a new generation; returns it (unchanged if nothing changed). */
  commit(chunks: readonly Vec3[]): number {
    if (chunks.length === 0) return this.#generation;
    this.#generation++;
    for (const c of chunks) this.#chunkGeneration.set(c.join(","), this.#generation);
    return this.#generation;
  }

  #chunkDims(index: Vec3): Vec3 {
    const { shapeZyx, chunkShapeZyx } = this.#level;
    return [0, 1, 2].map((d) => Math.min(chunkShapeZyx[d]!, shapeZyx[d]! - index[d]! * chunkShapeZyx[d]!)) as Vec3;
  }

  async read(box: Box3, scale: number, options: ReadOptions = {}): Promise<BigUint64Array> {
    options.signal?.throwIfAborted();
    if (scale !== 0) throw invalidArgument("scale", `a live volume has one scale; ${scale} does not exist`);
    const { offsetZyx, shapeZyx, chunkShapeZyx } = this.#level;
    const local = box.offsetZyx.map((o, d) => o - offsetZyx[d]!) as Vec3;
    for (let d = 0; d < 3; d++) {
      if (!(local[d]! >= 0 && box.shapeZyx[d]! >= 0 && local[d]! + box.shapeZyx[d]! <= shapeZyx[d]!)) {
        throw invalidArgument("box", `[${box.offsetZyx.join(", ")}] + [${box.shapeZyx.join(", ")}] is outside the live volume`);
      }
    }
    const [bz, by, bx] = box.shapeZyx;
    const out = new BigUint64Array(bz * by * bx);
    for (let cz = Math.floor(local[0] / chunkShapeZyx[0]); cz * chunkShapeZyx[0] < local[0] + bz; cz++) {
      for (let cy = Math.floor(local[1] / chunkShapeZyx[1]); cy * chunkShapeZyx[1] < local[1] + by; cy++) {
        for (let cx = Math.floor(local[2] / chunkShapeZyx[2]); cx * chunkShapeZyx[2] < local[2] + bx; cx++) {
          const chunk = this.#chunks.get(`${cz},${cy},${cx}`);
          if (chunk === undefined) continue;
          const [, dy, dx] = this.#chunkDims([cz, cy, cx]);
          const c0 = [cz * chunkShapeZyx[0], cy * chunkShapeZyx[1], cx * chunkShapeZyx[2]];
          const lo = [0, 1, 2].map((d) => Math.max(local[d]!, c0[d]!));
          const hi = [0, 1, 2].map((d) => Math.min(local[d]! + box.shapeZyx[d]!, c0[d]! + this.#chunkDims([cz, cy, cx])[d]!));
          for (let z = lo[0]!; z < hi[0]!; z++) {
            for (let y = lo[1]!; y < hi[1]!; y++) {
              const src = ((z - c0[0]!) * dy + (y - c0[1]!)) * dx;
              const dst = ((z - local[0]) * by + (y - local[1])) * bx;
              for (let x = lo[2]!; x < hi[2]!; x++) out[dst + x - local[2]] = chunk[src + x - c0[2]!]!;
            }
          }
        }
      }
    }
    return out;
  }

  close(): Promise<void> {
    this.#chunks.clear();
    return Promise.resolve();
  }
}
