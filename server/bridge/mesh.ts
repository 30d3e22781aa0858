// Segment meshes for the 3D panel: every segmentation volume of the bridge is also served as
// Neuroglancer precomputed LEGACY meshes, made on demand by marching cubes, one fragment per
// scale-0 chunk, cached in a byte-bounded LRU keyed by (volume, version, segment, chunk).
//
//   GET /volumes/:id/mesh/info                -> {"@type": "neuroglancer_legacy_mesh"}
//   GET /volumes/:id/mesh/<segment>:0         -> {"fragments": ["<segment>:0:<chunk>", ...]}
//   GET /volumes/:id/mesh/<segment>:0:<chunk> -> uint32 n, float32 xyz * n (nm), uint32 triangles

import type { Request, Response, NextFunction, Router } from "express";
import { invalidArgument, notFound, resourceExhausted } from "#src/errors.ts";
import { LEGACY_MESH_TYPE, encodeLegacyFragment, parseSegmentId } from "#src/mesh/legacy_mesh.ts";
import type { PrecomputedScale } from "#src/volume/precomputed_info.ts";
import type { Box3, ReadOptions, Vec3 } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { handle } from "./http_errors.ts";
import { EMPTY_MESH, maskSurface, segmentMask } from "./mesh_extract.ts";
import { parseChunkName } from "./precomputed_view.ts";
import type { RegisteredVolume } from "./volume_registry.ts";

/** The mesh folder named by the `mesh` key of a segmentation volume's info (a reserved scale key). */
export const MESH_DIR = "mesh";

export interface MeshOptions {
  /** Bytes of encoded fragments and manifests kept (default 256 MiB). */
  maxCacheBytes?: number;
  /**
   * Largest scale-0 volume (voxels) scanned to find where segments lie (default 2^28, e.g. the
   * whole Lucchi++ stack at 1.3e8); a larger one needs a `segmentChunks` index (see
   * RegisteredVolume) or its meshes answer ResourceExhausted.
   */
  maxScanVoxels?: number;
}

/** Where each segment of one volume version lies: linear indices of scale-0 chunks, and its voxel count. */
type SegmentIndex = Map<bigint, { chunks: number[]; voxels: number }>;

/** A byte-bounded LRU; Map order is insertion order, so re-inserting on a hit keeps the oldest first. */
class ByteLru<V> {
  readonly #entries = new Map<string, { value: V; bytes: number }>();
  #bytes = 0;
  constructor(readonly maxBytes: number) {}

  get(key: string): V | undefined {
    const e = this.#entries.get(key);
    if (e === undefined) return undefined;
    this.#entries.delete(key);
    this.#entries.set(key, e);
    return e.value;
  }

  set(key: string, value: V, bytes: number): void {
    const old = this.#entries.get(key);
    if (old !== undefined) {
      this.#bytes -= old.bytes;
      this.#entries.delete(key);
    }
    if (bytes > this.maxBytes) return;
    this.#entries.set(key, { value, bytes });
    this.#bytes += bytes;
    for (const [k, e] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(k);
      this.#bytes -= e.bytes;
    }
  }

  get size(): { entries: number; bytes: number } {
    return { entries: this.#entries.size, bytes: this.#bytes };
  }
}

export interface MeshStats {
  /** Fragments computed by marching cubes (cache misses). */
  fragmentsComputed: number;
  fragmentsCached: number;
  /** Scale-0 chunks read to build segment indexes. */
  chunksScanned: number;
  cacheEntries: number;
  cacheBytes: number;
}

const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];

/** The chunk grid of a scale (zyx), as the bridge exposes it. */
function gridOf(scale: PrecomputedScale) {
  const offset = xyz(scale.voxelOffsetXyz);
  const size = xyz(scale.sizeXyz);
  const chunk = xyz(scale.chunkSizeXyz);
  const counts = [0, 1, 2].map((d) => Math.ceil(size[d]! / chunk[d]!)) as Vec3;
  const boxOf = (c: Vec3): Box3 => ({
    offsetZyx: [0, 1, 2].map((d) => offset[d]! + c[d]! * chunk[d]!) as Vec3,
    shapeZyx: [0, 1, 2].map((d) => Math.min(chunk[d]!, size[d]! - c[d]! * chunk[d]!)) as Vec3,
  });
  const linear = (c: Vec3) => (c[0] * counts[1] + c[1]) * counts[2] + c[2];
  const position = (i: number): Vec3 => [Math.floor(i / (counts[1] * counts[2])), Math.floor(i / counts[2]) % counts[1], i % counts[2]];
  return { offset, size, chunk, counts, total: counts[0] * counts[1] * counts[2], boxOf, linear, position };
}

/** The chunk file name (precomputed's x0-x1_y0-y1_z0-z1) of a box. */
const chunkName = (b: Box3): string =>
  [2, 1, 0].map((d) => `${b.offsetZyx[d]!}-${b.offsetZyx[d]! + b.shapeZyx[d]!}`).join("_");

/** Ids of a chunk with their voxel counts (runs of one id are counted without a map lookup each). */
function countIds(data: ArrayLike<number | bigint>, into: Map<bigint, number>): void {
  let run = data.length > 0 ? data[0]! : 0;
  let n = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v === run) {
      n++;
      continue;
    }
    const id = BigInt(run);
    into.set(id, (into.get(id) ?? 0) + n);
    run = v;
    n = 1;
  }
  if (n > 0) into.set(BigInt(run), (into.get(BigInt(run)) ?? 0) + n);
}

export class SegmentMeshes {
  readonly #cache: ByteLru<Uint8Array | string[]>;
  readonly #indexes = new Map<string, Promise<SegmentIndex>>();
  readonly #maxScanVoxels: number;
  readonly #stats = { fragmentsComputed: 0, fragmentsCached: 0, chunksScanned: 0 };

  constructor(options: MeshOptions = {}) {
    this.#cache = new ByteLru(options.maxCacheBytes ?? 256 * 2 ** 20);
    this.#maxScanVoxels = options.maxScanVoxels ?? 2 ** 28;
  }

  get stats(): MeshStats {
    const { entries, bytes } = this.#cache.size;
    return { ...this.#stats, cacheEntries: entries, cacheBytes: bytes };
  }

  /** The `mesh` key a volume's info announces: segmentation volumes only. */
  static infoFields(v: RegisteredVolume): { mesh?: string } {
    return v.info.type === "segmentation" ? { mesh: MESH_DIR } : {};
  }

  /**
   * Segment index of the volume's current version: the volume's own `segmentChunks` hook is not
   * consulted here (it answers one segment at a time); this scans every scale-0 chunk once.
   */
  #index(v: RegisteredVolume, version: number): Promise<SegmentIndex> {
    const key = `${v.id}\n${version}`;
    let pending = this.#indexes.get(key);
    if (pending === undefined) {
      const grid = gridOf(v.info.scales[0]!);
      const voxels = grid.size[0] * grid.size[1] * grid.size[2];
      if (voxels > this.#maxScanVoxels) {
        throw resourceExhausted(
          `volume ${v.id} has ${voxels} voxels at scale 0, more than the ${this.#maxScanVoxels} the bridge scans to find a segment; it needs a segment index`,
          "segment",
        );
      }
      pending = (async () => {
        const index: SegmentIndex = new Map();
        for (let i = 0; i < grid.total; i++) {
          const ids = new Map<bigint, number>();
          countIds(await v.source.read(grid.boxOf(grid.position(i)), 0), ids);
          this.#stats.chunksScanned++;
          for (const [id, n] of ids) {
            if (id === 0n) continue;
            const e = index.get(id) ?? { chunks: [], voxels: 0 };
            e.chunks.push(i);
            e.voxels += n;
            index.set(id, e);
          }
        }
        return index;
      })();
      // Old versions' indexes are dropped: a live volume only ever asks about its newest.
      for (const k of this.#indexes.keys()) if (k.startsWith(`${v.id}\n`)) this.#indexes.delete(k);
      this.#indexes.set(key, pending);
      pending.catch(() => this.#indexes.delete(key));
    }
    return pending;
  }

  /** Scale-0 chunk positions (zyx grid) that hold voxels of `segment`. */
  async #chunksOf(v: RegisteredVolume, version: number, segment: bigint, options: ReadOptions): Promise<Vec3[]> {
    if (v.segmentChunks !== undefined) return v.segmentChunks(segment, options);
    const grid = gridOf(v.info.scales[0]!);
    return ((await this.#index(v, version)).get(segment)?.chunks ?? []).map((i) => grid.position(i));
  }

  /** Up to `limit` segment ids of the volume, largest first (undefined if it is too big to scan). */
  async largestSegments(v: RegisteredVolume, limit: number): Promise<bigint[] | undefined> {
    if (v.info.type !== "segmentation") return [];
    let index: SegmentIndex;
    try {
      index = await this.#index(v, v.version?.() ?? 0);
    } catch {
      return undefined;
    }
    return [...index.entries()]
      .sort((a, b) => b[1].voxels - a[1].voxels || (a[0] < b[0] ? -1 : 1))
      .slice(0, limit)
      .map(([id]) => id);
  }

  /**
   * The fragment names of `segment`'s mesh: chunks whose cubes meet the segment, i.e. each chunk
   * holding its voxels and the chunks just before it on each axis (a cube reaches one voxel into
   * the next chunk). Fragments that turn out empty are left out; an absent segment has none.
   */
  async manifest(v: RegisteredVolume, segment: bigint, options: ReadOptions = {}): Promise<string[]> {
    const version = v.version?.() ?? 0;
    const key = `${v.id}\n${version}\n${segment}`;
    const hit = this.#cache.get(key);
    if (Array.isArray(hit)) return hit;
    const grid = gridOf(v.info.scales[0]!);
    const candidates = new Set<number>();
    for (const c of await this.#chunksOf(v, version, segment, options)) {
      for (let dz = 0; dz <= 1; dz++)
        for (let dy = 0; dy <= 1; dy++)
          for (let dx = 0; dx <= 1; dx++) {
            const p: Vec3 = [c[0] - dz, c[1] - dy, c[2] - dx];
            if (p.every((q) => q >= 0)) candidates.add(grid.linear(p));
          }
    }
    const names: string[] = [];
    for (const i of [...candidates].sort((a, b) => a - b)) {
      const box = grid.boxOf(grid.position(i));
      const bytes = await this.#fragment(v, version, segment, box, options);
      if (bytes.byteLength > 4) names.push(`${segment}:0:${chunkName(box)}`);
    }
    this.#cache.set(key, names, 64 + names.reduce((s, n) => s + 2 * n.length, 0));
    return names;
  }

  /** One fragment: the surface of `segment` in the cubes whose lower corners lie in `chunk`. */
  async fragment(v: RegisteredVolume, segment: bigint, chunk: Box3, options: ReadOptions = {}): Promise<Uint8Array> {
    return this.#fragment(v, v.version?.() ?? 0, segment, chunk, options);
  }

  async #fragment(v: RegisteredVolume, version: number, segment: bigint, chunk: Box3, options: ReadOptions): Promise<Uint8Array> {
    const key = `${v.id}\n${version}\n${segment}\n${chunkName(chunk)}`;
    const hit = this.#cache.get(key);
    if (hit instanceof Uint8Array) {
      this.#stats.fragmentsCached++;
      return hit;
    }
    const level = v.source.metadata.scales[0]!;
    // The cubes of this chunk need one more sample on the high side (the next chunk's first
    // voxel); the first chunk on an axis also owns the cubes that close the surface at the
    // volume's low face, whose low samples lie outside (background).
    const samples: Box3 = { offsetZyx: [0, 0, 0], shapeZyx: [0, 0, 0] };
    for (let d = 0; d < 3; d++) {
      const lo = chunk.offsetZyx[d]! === level.offsetZyx[d]! ? chunk.offsetZyx[d]! - 1 : chunk.offsetZyx[d]!;
      samples.offsetZyx[d] = lo;
      samples.shapeZyx[d] = chunk.offsetZyx[d]! + chunk.shapeZyx[d]! + 1 - lo;
    }
    const inside: Box3 = { offsetZyx: [0, 0, 0], shapeZyx: [0, 0, 0] };
    for (let d = 0; d < 3; d++) {
      const lo = Math.max(samples.offsetZyx[d]!, level.offsetZyx[d]!);
      const hi = Math.min(samples.offsetZyx[d]! + samples.shapeZyx[d]!, level.offsetZyx[d]! + level.shapeZyx[d]!);
      inside.offsetZyx[d] = lo;
      inside.shapeZyx[d] = hi - lo;
    }
    const labels = await v.source.read(inside, 0, options);
    const mask = segmentMask(labels, inside, samples, segment);
    const bytes = encodeLegacyFragment(mask === undefined ? EMPTY_MESH : maskSurface(mask, samples, level.voxelSizeNm));
    this.#stats.fragmentsComputed++;
    this.#cache.set(key, bytes, bytes.byteLength + 128);
    return bytes;
  }
}

/** A single path parameter ("" if absent). */
function param(req: Request, name: string): string {
  const v: unknown = req.params[name];
  return typeof v === "string" ? v : "";
}

export interface MeshRouteOptions {
  meshes: SegmentMeshes;
  /** The registered volume of a path's `:id` (InvalidArgument / NotFound naming `id`). */
  volumeOf: (id: string) => RegisteredVolume;
  log: Logger;
}

/**
 * Adds the mesh routes to `router`; must come before the chunk route, which the same paths would
 * otherwise match. Volumes that are not segmentations fall through to it.
 */
export function addMeshRoutes(router: Router, { meshes, volumeOf, log }: MeshRouteOptions): void {
  const serveMesh = handle(log, "mesh", async (req, res) => {
    const v = volumeOf(param(req, "id"));
    const name = param(req, "name");
    // Same rule as chunks: live volumes change under the same URL.
    res.setHeader("Cache-Control", v.mutable ? "no-store" : "private, max-age=60");
    if (name === "info") {
      res.json({ "@type": LEGACY_MESH_TYPE });
      return;
    }
    const parts = name.split(":");
    if (parts.length < 2 || parts.length > 3) {
      throw invalidArgument("mesh", `expected <segment>:0 or <segment>:0:<chunk>, got ${JSON.stringify(name.slice(0, 100))}`);
    }
    const segment = parseSegmentId(parts[0]!);
    if (parts[1] !== "0") throw notFound("lod", `only level of detail 0 exists, not ${JSON.stringify(parts[1]!.slice(0, 20))}`);
    const abort = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    if (parts.length === 2) {
      res.json({ fragments: await meshes.manifest(v, segment, { signal: abort.signal }) });
      return;
    }
    const chunk = parseChunkName(parts[2]!, v.info.scales[0]!);
    const bytes = await meshes.fragment(v, segment, chunk, { signal: abort.signal });
    res.type("application/octet-stream").send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  });
  router.get(`/volumes/:id/${MESH_DIR}/:name`, (req: Request, res: Response, next: NextFunction) => {
    let segmentation = false;
    try {
      segmentation = volumeOf(param(req, "id")).info.type === "segmentation";
    } catch {
      // Unknown or malformed ids get the chunk route's answer (404 / 400 naming `id`).
    }
    if (!segmentation) {
      next();
      return;
    }
    serveMesh(req, res, next);
  });
}
