// What the page and Neuroglancer's chunk worker agree on for live refresh: the RPC that re-fetches
// only the named chunks of one precomputed scale, and how a worker chunk's precomputed name is
// computed (as Neuroglancer's precomputed backend builds its chunk URLs).

/** Page -> worker: `{queue: <ChunkQueueManager rpc id>, url: <scale URL>, chunks: [names]}`. */
export const INVALIDATE_CHUNKS_RPC = "spatialsam.invalidateChunks";

export interface InvalidateChunksMessage {
  queue: number;
  /** The scale's base URL as Neuroglancer fetches it: `<origin>/volumes/<id>/<scale key>`. */
  url: string;
  chunks: string[];
}

/**
 * Page -> worker: `{queue, url: <mesh URL>, objects: [segment ids]}`: the named objects' mesh
 * manifests and fragments are fetched again (their voxels changed).
 */
export const INVALIDATE_MESHES_RPC = "spatialsam.invalidateMeshes";

export interface InvalidateMeshesMessage {
  queue: number;
  /** The mesh source's base URL as Neuroglancer fetches it: `<origin>/volumes/<id>/mesh`. */
  url: string;
  /** Decimal uint64 segment ids. */
  objects: string[];
}

/** Neuroglancer 2.40.1's key of a segment's mesh manifest chunk (`getObjectKey`: low,high 32-bit words). */
export function meshObjectKey(id: string): string {
  const v = BigInt(id);
  return `${v & 0xffffffffn},${v >> 32n}`;
}

/** The geometry of a worker-side volume chunk source (its `spec`), in Neuroglancer's xyz order. */
export interface ChunkGridSpec {
  chunkDataSize: ArrayLike<number>;
  upperVoxelBound: ArrayLike<number>;
  baseVoxelOffset: ArrayLike<number>;
}

/** `x0-x1_y0-y1_z0-z1` of the chunk at `gridPosition` (ends clipped at the volume's upper bound). */
export function chunkNameOf(spec: ChunkGridSpec, gridPosition: ArrayLike<number>): string {
  const parts: string[] = [];
  for (let d = 0; d < 3; d++) {
    const size = spec.chunkDataSize[d]!;
    const begin = gridPosition[d]! * size;
    const end = Math.min(spec.upperVoxelBound[d]!, begin + size);
    const offset = spec.baseVoxelOffset[d]!;
    parts.push(`${begin + offset}-${end + offset}`);
  }
  return parts.join("_");
}
