// Runs inside Neuroglancer's chunk worker (vite.config.ts appends its import to the worker bundle):
// re-queues only the named chunks of a live layer, and the mesh manifests and fragments of the
// named objects, so they are downloaded again while the page keeps showing the old ones until the
// new data arrives. Neuroglancer's own `invalidateCache` drops every chunk of the source at once
// (the layer goes blank and everything is refetched).
import { ChunkState } from "neuroglancer/unstable/chunk_manager/base.js";
import { registerRPC, type RPC } from "neuroglancer/unstable/worker_rpc.js";
import {
  chunkNameOf,
  INVALIDATE_CHUNKS_RPC,
  INVALIDATE_MESHES_RPC,
  meshObjectKey,
  type ChunkGridSpec,
  type InvalidateChunksMessage,
  type InvalidateMeshesMessage,
} from "./live_refresh.ts";

/** The parts of the worker's chunk and source objects used here (chunk_manager/backend.js has no typings). */
interface WorkerChunk {
  state: ChunkState;
  chunkGridPosition: ArrayLike<number>;
  downloadCancellationToken?: { cancel(): void };
  freeSystemMemory(): void;
}

interface WorkerSource {
  parameters?: { url?: unknown };
  spec?: ChunkGridSpec;
  chunks: Map<string, WorkerChunk>;
  /** Mesh sources only: where their fragments live (keys `<manifest key>/<fragment id>`). */
  fragmentSource?: WorkerSource;
}

interface WorkerQueueManager {
  sources: Set<WorkerSource>;
  updateChunkState(chunk: WorkerChunk, state: ChunkState): void;
  scheduleUpdate(): void;
}

const trimSlash = (u: string) => u.replace(/\/+$/, "");

/** Puts a chunk back in the download queue (a download in flight is cancelled: its answer may predate the change). */
function requeue(queue: WorkerQueueManager, chunk: WorkerChunk): void {
  switch (chunk.state) {
    case ChunkState.DOWNLOADING: {
      const token = chunk.downloadCancellationToken;
      chunk.downloadCancellationToken = undefined;
      token?.cancel();
      break;
    }
    case ChunkState.SYSTEM_MEMORY_WORKER:
      chunk.freeSystemMemory();
      break;
    case ChunkState.GPU_MEMORY:
    case ChunkState.SYSTEM_MEMORY:
    case ChunkState.FAILED:
      // The page keeps its copy (and shows it) until the downloaded one replaces it.
      break;
    default:
      // Queued or new: its download has not started, it will fetch the new data anyway.
      return;
  }
  queue.updateChunkState(chunk, ChunkState.QUEUED);
}

registerRPC(INVALIDATE_CHUNKS_RPC, function (this: RPC, x: InvalidateChunksMessage) {
  const queue = this.get(x.queue) as unknown as WorkerQueueManager | undefined;
  if (queue === undefined) return;
  const wanted = new Set(x.chunks);
  const url = trimSlash(x.url);
  for (const source of queue.sources) {
    const u = source.parameters?.url;
    if (typeof u !== "string" || trimSlash(u) !== url || source.spec === undefined) continue;
    for (const chunk of source.chunks.values()) if (wanted.has(chunkNameOf(source.spec, chunk.chunkGridPosition))) requeue(queue, chunk);
  }
  queue.scheduleUpdate();
});

registerRPC(INVALIDATE_MESHES_RPC, function (this: RPC, x: InvalidateMeshesMessage) {
  const queue = this.get(x.queue) as unknown as WorkerQueueManager | undefined;
  if (queue === undefined) return;
  const keys = new Set(x.objects.map(meshObjectKey));
  const url = trimSlash(x.url);
  for (const source of queue.sources) {
    const u = source.parameters?.url;
    const fragments = source.fragmentSource;
    if (typeof u !== "string" || trimSlash(u) !== url || fragments === undefined) continue;
    for (const key of keys) {
      const manifest = source.chunks.get(key);
      if (manifest !== undefined) requeue(queue, manifest);
    }
    for (const [key, fragment] of fragments.chunks) if (keys.has(key.slice(0, key.indexOf("/")))) requeue(queue, fragment);
  }
  queue.scheduleUpdate();
});
