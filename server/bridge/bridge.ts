// The HTTP bridge between browsers and the server: an express Router that serves the viewer
// bundle (neuroglancer-layer/dist), its default state, and every registered volume re-exposed as
// Neuroglancer precomputed (info + chunks encoded on the fly), readable by any stock Neuroglancer.

import { join } from "node:path";
import express, { Router, type NextFunction, type Request, type Response } from "express";
import { VIEWER_STATE_PATH, VOLUME_ID_PATTERN, VOLUMES_API_PATH, volumePath } from "#src/bridge_api.ts";
import { invalidArgument, notFound, permissionDenied } from "#src/errors.ts";
import type { IntensityWindow } from "#src/intensity.ts";
import { precomputedInfoToJson } from "#src/volume/precomputed_info.ts";
import type { Logger } from "#server/log.ts";
import { handle, sendError } from "./http_errors.ts";
import { liveSessionRoutes, type LiveRoutesOptions } from "./live_routes.ts";
import { addMeshRoutes, SegmentMeshes, type MeshOptions } from "./mesh.ts";
import { parseChunkName, readEncodedChunk } from "./precomputed_view.ts";
import { SdfLayer, type SdfLayerOptions } from "./sdf_layer.ts";
import { defaultViewerState } from "./viewer_state.ts";
import { VIEWER_DIST } from "./viewer_build.ts";
import { VolumeRegistry, type RegisteredVolume, type VolumeSpec } from "./volume_registry.ts";

export interface BridgeOptions {
  /** Folders file:// volume URLs may read (the server's allowlist). */
  roots: readonly string[];
  log: Logger;
  /** Registered at start-up and shown, in this order, in the default viewer state. */
  volumes?: VolumeSpec[];
  /** The built viewer (default neuroglancer-layer/dist). */
  viewerDir?: string;
  /** Origins besides the bridge's own that may read it cross-origin (e.g. a team's Neuroglancer). */
  corsOrigins?: readonly string[];
  /** Largest accepted request body (default 16 KiB). */
  maxBodyBytes?: number;
  maxVolumes?: number;
  /** Segment meshes of segmentation volumes (mesh.ts): cache size, scan limit. */
  meshes?: MeshOptions;
  /** With an SDF model, every image volume gets an on-demand `<id>-sdf` companion (sdf_layer.ts). */
  sdf?: SdfLayerOptions;
  /** Live sessions (live_routes.ts): on when `grpcTarget` names the inference server to use. */
  live?: Omit<LiveRoutesOptions, "volumes" | "log" | "grpcTarget"> & { grpcTarget?: string };
}

/** Segments the default viewer state selects (and the 3D panel meshes) per segmentation volume. */
const DEFAULT_SEGMENTS = 64;

export interface Bridge {
  router: Router;
  volumes: VolumeRegistry;
  meshes: SegmentMeshes;
  sdf: SdfLayer | undefined;
  close(): Promise<void>;
}

/** The origin the request was addressed to, i.e. the one the viewer page was served from. */
const ownOrigin = (req: Request): string => `${req.protocol}://${req.get("host") ?? ""}`;

/**
 * CORS limited to the bridge's own origin plus `allowed`. A page from any other origin gets no
 * CORS headers (its browser then hides our responses from it) and may not change state.
 */
function corsFor(allowed: ReadonlySet<string>, log: Logger) {
  return (req: Request, res: Response, next: NextFunction): void => {
    res.vary("Origin");
    const origin = req.get("origin");
    if (origin === undefined) return next();
    if (origin === ownOrigin(req) || allowed.has(origin)) {
      res.setHeader("Access-Control-Allow-Origin", origin);
      if (req.method === "OPTIONS") {
        res.setHeader("Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE");
        res.setHeader("Access-Control-Allow-Headers", "Content-Type, Range, X-Client-Id");
        res.setHeader("Access-Control-Max-Age", "600");
        res.status(204).end();
        return;
      }
      return next();
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      sendError(res, permissionDenied("origin", `requests from ${origin.slice(0, 200)} may only read`), log, "cors");
      return;
    }
    next();
  };
}

/** A single-segment path parameter ("" if absent). */
function param(req: Request, name: string): string {
  const v: unknown = req.params[name];
  return typeof v === "string" ? v : "";
}

function volumeOf(volumes: VolumeRegistry, id: string): RegisteredVolume {
  if (!VOLUME_ID_PATTERN.test(id)) {
    throw invalidArgument("id", `expected ${VOLUME_ID_PATTERN.source}, got ${JSON.stringify(id.slice(0, 100))}`);
  }
  return volumes.get(id);
}

function cacheControl(v: RegisteredVolume): string {
  // Live layers change under the same URL; the browser's HTTP cache must not answer for them.
  return v.mutable ? "no-store" : "private, max-age=60";
}

function describe(v: RegisteredVolume, req: Request) {
  return {
    id: v.id,
    url: v.url,
    name: v.name,
    type: v.info.type,
    dataType: v.info.dataType,
    ...(v.intensity === undefined ? {} : { intensityWindow: v.intensity }),
    precomputedUrl: `precomputed://${ownOrigin(req)}/${volumePath(v.id)}`,
  };
}

export async function createBridge(options: BridgeOptions): Promise<Bridge> {
  const { log } = options;
  const volumes = new VolumeRegistry({ roots: options.roots, ...(options.maxVolumes === undefined ? {} : { maxVolumes: options.maxVolumes }) });
  const startup: RegisteredVolume[] = [];
  const meshes = new SegmentMeshes(options.meshes);
  const sdf = options.sdf === undefined ? undefined : new SdfLayer(options.sdf);
  const sdfOf = new Map<string, RegisteredVolume>();
  try {
    for (const spec of options.volumes ?? []) {
      const v = await volumes.register(spec);
      startup.push(v);
      const companion = sdf?.attach(volumes, v, log);
      if (companion !== undefined) sdfOf.set(v.id, companion);
    }
  } catch (e) {
    await volumes.close();
    throw e;
  }
  const viewerDir = options.viewerDir ?? VIEWER_DIST;
  const assetsDir = join(viewerDir, "assets");
  const router = Router();
  router.use(corsFor(new Set(options.corsOrigins ?? []), log));

  router.get(
    `/${VOLUMES_API_PATH}`,
    handle(log, "list volumes", (req, res) => {
      res.setHeader("Cache-Control", "no-store");
      res.json(volumes.list().map((v) => describe(v, req)));
    }),
  );

  router.post(
    `/${VOLUMES_API_PATH}`,
    express.json({ limit: options.maxBodyBytes ?? 16 * 1024 }),
    handle(log, "register volume", async (req, res) => {
      const body: unknown = req.body;
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw invalidArgument("body", "expected a JSON object {url, id?, name?, intensityWindow?} (Content-Type: application/json)");
      }
      const { url, id, name, intensityWindow } = body as Record<string, unknown>;
      const v = await volumes.register({
        url: url as string,
        ...(id === undefined ? {} : { id: id as string }),
        ...(name === undefined ? {} : { name: name as string }),
        ...(intensityWindow === undefined ? {} : { intensityWindow: intensityWindow as IntensityWindow }),
      });
      if (sdf !== undefined && !volumes.list().some((o) => o.id === `${v.id}-sdf`)) sdf.attach(volumes, v, log);
      log.info({ id: v.id, url: v.url }, "volume registered");
      res.setHeader("Cache-Control", "no-store");
      res.status(201).json(describe(v, req));
    }),
  );

  // Bodies express.json() refused (malformed, too large) arrive here as errors with a status.
  router.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => sendError(res, err, log, "request body"));

  const grpcTarget = options.live?.grpcTarget;
  const live = grpcTarget === undefined ? undefined : liveSessionRoutes({ ...options.live, grpcTarget, volumes, log });
  if (live !== undefined) router.use(live.router);

  router.get(
    `/${VIEWER_STATE_PATH}`,
    handle(log, "viewer state", async (_req, res) => {
      res.setHeader("Cache-Control", "no-store");
      const segments = new Map<string, bigint[]>();
      for (const v of startup) segments.set(v.id, (await meshes.largestSegments(v, DEFAULT_SEGMENTS)) ?? []);
      res.json(defaultViewerState(startup, { segments, sdf: sdfOf }));
    }),
  );

  router.get(
    "/volumes/:id/info",
    handle(log, "info", (req, res) => {
      const v = volumeOf(volumes, param(req, "id"));
      res.setHeader("Cache-Control", cacheControl(v));
      res.json({ ...precomputedInfoToJson(v.info), ...SegmentMeshes.infoFields(v) });
    }),
  );

  addMeshRoutes(router, { meshes, volumeOf: (id) => volumeOf(volumes, id), log });
  router.get(
    "/volumes/:id/:scaleKey/:chunk",
    handle(log, "chunk", async (req, res) => {
      const v = volumeOf(volumes, param(req, "id"));
      const scaleKey = param(req, "scaleKey");
      const scaleIndex = v.info.scales.findIndex((s) => s.key === scaleKey);
      if (scaleIndex < 0) {
        throw notFound("scaleKey", `volume ${v.id} has no scale ${JSON.stringify(scaleKey.slice(0, 100))} (has ${v.info.scales.map((s) => s.key).join(", ")})`);
      }
      const box = parseChunkName(param(req, "chunk"), v.info.scales[scaleIndex]!);
      // A closed tab or a chunk Neuroglancer no longer wants stops the read.
      const abort = new AbortController();
      res.once("close", () => {
        if (!res.writableFinished) abort.abort();
      });
      const bytes = await readEncodedChunk(v.source, v.info, scaleIndex, box, { signal: abort.signal });
      res.setHeader("Cache-Control", cacheControl(v));
      res.type("application/octet-stream").send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    }),
  );

  router.use(
    express.static(viewerDir, {
      index: "index.html",
      setHeaders: (res, path) => {
        // Bundle files carry a content hash in their names; index.html must be refetched to find new ones.
        res.setHeader("Cache-Control", path.startsWith(assetsDir) ? "public, max-age=31536000, immutable" : "no-cache");
      },
    }),
  );
  // Reached only when the static handler found no index.html.
  router.get(
    "/",
    handle(log, "viewer", () => {
      throw notFound("viewer", `the viewer is not built (no ${join(viewerDir, "index.html")}); run \`npm run build:viewer\``);
    }),
  );

  return {
    router,
    volumes,
    meshes,
    sdf,
    close: async () => {
      await live?.close();
      await volumes.close();
    },
  };
}
