// The HTTP paths the bridge (server/bridge) serves and the viewer (neuroglancer-layer) requests,
// kept in one place so both sides agree on volume ids and URLs.

/** Volume ids the bridge hands out and accepts at registration (one URL path segment). */
export const VOLUME_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** Path (relative to the bridge's root) of a volume re-exposed as Neuroglancer precomputed. */
export const volumePath = (id: string): string => `volumes/${id}`;

/** Path of the default Neuroglancer state (JSON) for the bridge's start-up volumes. */
export const VIEWER_STATE_PATH = "api/viewer/state";

/** Path where volumes are registered (POST {url}) and listed (GET). */
export const VOLUMES_API_PATH = "api/volumes";

/** Live segmentation sessions (POST to create; `/<id>/prompts`, `/propagate`, `/objects`, `/events`, `/accept`). */
export const SESSIONS_API_PATH = "api/sessions";

/** Header with a random id per viewer tab: the bridge rate-limits prompts per tab. */
export const CLIENT_ID_HEADER = "x-client-id";

/** The bridge's default largest live session box, in voxels (sessions echo the bridge's own as `maxSessionVoxels`). */
export const DEFAULT_MAX_SESSION_VOXELS = 512 ** 3;

/** The push channel's message: the live volume's chunks (precomputed names) that changed. */
export interface LiveChangeEvent {
  generation: number;
  volumeId: string;
  scaleKey: string;
  chunks: string[];
  objects: { objectId: string; voxels: number }[];
  /** Objects whose voxels changed (their meshes are stale); after a reconnect, every current object. */
  changedObjects?: string[];
}

/** Path (under a session) of "segment everything in view": POST {box: {x0, y0, z0, x1, y1, z1}}. */
export const SEGMENT_VIEW_PATH = "segment-view";

/** Pushed as `event: progress` while a session's automatic segmentation runs. */
export interface LiveProgressEvent {
  operation: "segment";
  blocksDone: number;
  blocksTotal: number;
  objectsFound: number;
  done: boolean;
}
