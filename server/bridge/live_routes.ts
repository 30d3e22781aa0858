// HTTP JSON API of live sessions (see README): create a session on a registered image volume, add
// prompts, propagate, list and delete objects, accept, and the Server-Sent Events channel that
// announces changed chunks. Every field is validated here, and errors name it.
import express, { Router, type NextFunction, type Request, type Response } from "express";
import { invalidArgument, resourceExhausted } from "#src/errors.ts";
import { CLIENT_ID_HEADER, SEGMENT_VIEW_PATH, SESSIONS_API_PATH, VOLUME_ID_PATTERN, type LiveProgressEvent } from "#src/bridge_api.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { handle, sendError } from "./http_errors.ts";
import { LiveSessions, type ChangeEvent, type LiveDirection, type LiveSession, type PromptRequest, type PropagateRequest } from "./live_sessions.ts";
import { RateLimiter, type RateLimitOptions } from "./rate_limit.ts";
import { SegmentationClient } from "./segmentation_client.ts";
import type { VolumeRegistry } from "./volume_registry.ts";


export interface LiveRoutesOptions {
  volumes: VolumeRegistry;
  log: Logger;
  /** host:port of the inference server's gRPC side (this process's own by default, set by serve()). */
  grpcTarget: string;
  /** Bearer token for that server, when it requires one. */
  grpcToken?: string;
  /** PEM CA certificate(s): reach that server over TLS (its certificate must verify against them). */
  grpcTlsCa?: Buffer;
  maxSessions?: number;
  maxSessionVoxels?: number;
  idleTimeoutMs?: number;
  acceptDir?: string;
  sdfVolumes?: Readonly<Record<string, string>>;
  /** Folder (on the inference server, under its roots) SegmentVolume writes segment-in-view results to. */
  segmentOutputDir?: string;
  /** Largest segment-in-view box in voxels (default 2^22). */
  maxSegmentVoxels?: number;
  /** Per tab (or per session, for clients without a client id) on prompt and propagate. Default 20 burst, 10/s. */
  rateLimit?: RateLimitOptions;
  /** Event streams per session (default 16). */
  maxSubscribers?: number;
  maxBodyBytes?: number;
  /** SSE keep-alive comment interval (default 15 s). */
  keepAliveMs?: number;
}

const SESSION_ID = /^[0-9a-f]{12}$/;
const CLIENT_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_POINTS = 64;
const MAX_OBJECT_ID = 2n ** 64n - 1n;

type Json = Record<string, unknown>;

function bodyOf(req: Request): Json {
  const body: unknown = req.body;
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw invalidArgument("body", "expected a JSON object (Content-Type: application/json)");
  }
  return body as Json;
}

const KNOWN = (body: Json, allowed: readonly string[]) => {
  for (const k of Object.keys(body)) if (!allowed.includes(k)) throw invalidArgument(k, `unknown field (expected ${allowed.join(", ")})`);
};

function int(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw invalidArgument(field, `expected an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}

/** A uint64 segment id, as a decimal string (or a safe integer); 0 is the background. */
export function objectIdOf(v: unknown, field: string): bigint {
  let id: bigint | undefined;
  if (typeof v === "string" && /^[0-9]{1,20}$/.test(v)) id = BigInt(v);
  else if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) id = BigInt(v);
  if (id === undefined || id === 0n || id > MAX_OBJECT_ID) throw invalidArgument(field, `expected a segment id in [1, 2^64) as a decimal string, got ${JSON.stringify(v)?.slice(0, 50)}`);
  return id;
}

function sessionOf(live: LiveSessions, req: Request): LiveSession {
  const id: unknown = req.params["sessionId"];
  if (typeof id !== "string" || !SESSION_ID.test(id)) throw invalidArgument("session", `expected 12 hex digits, got ${JSON.stringify(String(id).slice(0, 100))}`);
  return live.get(id);
}

function parsePrompt(body: Json, s: LiveSession): PromptRequest {
  KNOWN(body, ["objectId", "z", "points", "box", "clearOld"]);
  const objectId = objectIdOf(body["objectId"], "objectId");
  const z0 = s.box.offsetZyx[0];
  const z = int(body["z"], "z", z0, z0 + s.box.shapeZyx[0] - 1);
  const [, oy, ox] = s.box.offsetZyx;
  const [, sy, sx] = s.box.shapeZyx;
  const rawPoints = body["points"] ?? [];
  if (!Array.isArray(rawPoints) || rawPoints.length > MAX_POINTS) throw invalidArgument("points", `expected an array of at most ${MAX_POINTS} points`);
  const points = rawPoints.map((p: unknown, i) => {
    const f = `points[${i}]`;
    if (typeof p !== "object" || p === null || Array.isArray(p)) throw invalidArgument(f, "expected {x, y, label}");
    const o = p as Json;
    KNOWN(o, ["x", "y", "label"]);
    // Continuous voxel coordinates (voxel i covers [i, i + 1)), as Neuroglancer's mouse position.
    for (const [axis, lo, n] of [["x", ox, sx], ["y", oy, sy]] as const) {
      const v = o[axis];
      if (typeof v !== "number" || !Number.isFinite(v) || v < lo || v >= lo + n) throw invalidArgument(`${f}.${axis}`, `expected a number in [${lo}, ${lo + n}), got ${JSON.stringify(v)}`);
    }
    if (o["label"] !== "positive" && o["label"] !== "negative") throw invalidArgument(`${f}.label`, `expected "positive" or "negative", got ${JSON.stringify(o["label"])?.slice(0, 50)}`);
    return { x: o["x"] as number, y: o["y"] as number, label: o["label"] as "positive" | "negative" };
  });
  const out: PromptRequest = { objectId, z, points, clearOld: false };
  if (body["clearOld"] !== undefined) {
    if (typeof body["clearOld"] !== "boolean") throw invalidArgument("clearOld", "expected a boolean");
    out.clearOld = body["clearOld"];
  }
  if (body["box"] !== undefined) {
    const b = body["box"];
    if (typeof b !== "object" || b === null || Array.isArray(b)) throw invalidArgument("box", "expected {x0, y0, x1, y1} (half-open voxels)");
    KNOWN(b as Json, ["x0", "y0", "x1", "y1"]);
    const x0 = int((b as Json)["x0"], "box.x0", ox, ox + sx - 2);
    const y0 = int((b as Json)["y0"], "box.y0", oy, oy + sy - 2);
    const x1 = int((b as Json)["x1"], "box.x1", x0 + 2, ox + sx);
    const y1 = int((b as Json)["y1"], "box.y1", y0 + 2, oy + sy);
    out.box = { x0, y0, x1, y1 };
  }
  if (points.length === 0 && out.box === undefined) throw invalidArgument("points", "give at least one point or a box");
  return out;
}

function parsePropagate(body: Json, s: LiveSession): PropagateRequest {
  KNOWN(body, ["direction", "startZ", "toZ", "maxSlices", "objectIds"]);
  const z0 = s.box.offsetZyx[0];
  const z1 = z0 + s.box.shapeZyx[0] - 1;
  const out: PropagateRequest = { direction: "both", objectIds: [] };
  const d = body["direction"];
  if (d !== undefined) {
    if (d !== "forward" && d !== "backward" && d !== "both") throw invalidArgument("direction", `expected "forward", "backward" or "both", got ${JSON.stringify(d)?.slice(0, 50)}`);
    out.direction = d as LiveDirection;
  }
  if (body["startZ"] !== undefined) out.startZ = int(body["startZ"], "startZ", z0, z1);
  if (body["maxSlices"] !== undefined) out.maxSlices = int(body["maxSlices"], "maxSlices", 1, s.box.shapeZyx[0]);
  if (body["toZ"] !== undefined) {
    // Up to a z limit: from the start (default the last prompted slice) towards it, one direction.
    const toZ = int(body["toZ"], "toZ", z0, z1);
    if (body["maxSlices"] !== undefined || body["direction"] !== undefined) throw invalidArgument("toZ", "give either toZ or direction/maxSlices");
    const start = out.startZ ?? s.lastPromptZ;
    if (start === undefined) throw invalidArgument("toZ", "needs startZ or an earlier prompt to start from");
    if (toZ === start) throw invalidArgument("toZ", `is the start slice ${start}`);
    out.startZ = start;
    out.direction = toZ > start ? "forward" : "backward";
    // The server counts the start slice among maxSlices.
    out.maxSlices = Math.abs(toZ - start) + 1;
  }
  const ids = body["objectIds"];
  if (ids !== undefined) {
    if (!Array.isArray(ids) || ids.length > 10_000) throw invalidArgument("objectIds", "expected an array of segment ids");
    out.objectIds = ids.map((v: unknown, i) => objectIdOf(v, `objectIds[${i}]`));
  }
  return out;
}

/**
 * A box `{x0, y0, z0, x1, y1, z1}` (half-open voxels, e.g. the viewer's visible extent), clamped
 * to the level `level` (the view may reach past the volume: only its part inside counts).
 */
function parseBox(b: unknown, level: Box3): Box3 {
  if (typeof b !== "object" || b === null || Array.isArray(b)) throw invalidArgument("box", "expected {x0, y0, z0, x1, y1, z1} (half-open voxels)");
  const o = b as Json;
  KNOWN(o, ["x0", "y0", "z0", "x1", "y1", "z1"]);
  const lim = 2 ** 31;
  const offsetZyx = [0, 0, 0] as Vec3;
  const shapeZyx = [0, 0, 0] as Vec3;
  (["z", "y", "x"] as const).forEach((axis, d) => {
    const lo = int(o[`${axis}0`], `box.${axis}0`, -lim, lim);
    const hi = int(o[`${axis}1`], `box.${axis}1`, lo + 1, lim);
    const v0 = level.offsetZyx[d]!;
    const v1 = v0 + level.shapeZyx[d]!;
    const a = Math.max(lo, v0);
    const e = Math.min(hi, v1);
    if (e <= a) throw invalidArgument(`box.${axis}0`, `[${lo}, ${hi}) does not meet the volume's [${v0}, ${v1})`);
    offsetZyx[d] = a;
    shapeZyx[d] = e - a;
  });
  return { offsetZyx, shapeZyx };
}

/**
 * The segment-in-view box (see parseBox), clamped to the volume, at most `maxVoxels`, and inside
 * the session's box (the server's session covers no more).
 */
function parseSegmentView(body: Json, s: LiveSession, maxVoxels: number): Box3 {
  KNOWN(body, ["box"]);
  const level = s.live.metadata.scales[0]!;
  const { offsetZyx, shapeZyx } = parseBox(body["box"], level);
  const voxels = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
  if (voxels > maxVoxels) throw invalidArgument("box", `${shapeZyx[2]} x ${shapeZyx[1]} x ${shapeZyx[0]} = ${voxels} voxels inside the volume; segment-in-view is limited to ${maxVoxels} (zoom in or narrow the z range)`);
  for (let d = 0; d < 3; d++) {
    const lo = s.box.offsetZyx[d]!;
    const hi = lo + s.box.shapeZyx[d]!;
    if (offsetZyx[d]! < lo || offsetZyx[d]! + shapeZyx[d]! > hi) {
      throw invalidArgument("box", `axis ${"zyx"[d]} [${offsetZyx[d]!}, ${offsetZyx[d]! + shapeZyx[d]!}) reaches outside the session's box [${lo}, ${hi}); start a session around it`);
    }
  }
  return { offsetZyx, shapeZyx };
}

function describeSession(s: LiveSession, maxSegmentVoxels: number, maxSessionVoxels: number) {
  return {
    sessionId: s.id,
    volumeId: s.image.id,
    liveVolumeId: s.liveVolumeId,
    source: `spatialsam://${s.liveVolumeId}`,
    scaleKey: s.scaleKey,
    box: s.box,
    /** The image's first level (the live volume's grid), which the session box lies in. */
    level: { offsetZyx: s.live.metadata.scales[0]!.offsetZyx, shapeZyx: s.live.metadata.scales[0]!.shapeZyx },
    maxSessionVoxels,
    chunkCount: s.live.chunkCount,
    generation: s.live.generation,
    objects: s.objects(),
    maxSegmentVoxels,
  };
}

/** An AbortSignal that fires when the client goes away before the answer is sent. */
function clientGone(res: Response): AbortSignal {
  const abort = new AbortController();
  res.once("close", () => {
    if (!res.writableFinished) abort.abort();
  });
  return abort.signal;
}

export function liveSessionRoutes(options: LiveRoutesOptions): { router: Router; sessions: LiveSessions; close(): Promise<void> } {
  const { log } = options;
  const client = new SegmentationClient({
    target: options.grpcTarget,
    ...(options.grpcToken === undefined ? {} : { token: options.grpcToken }),
    ...(options.grpcTlsCa === undefined ? {} : { tlsCa: options.grpcTlsCa }),
  });
  const sessions = new LiveSessions({
    volumes: options.volumes,
    client,
    log,
    ...(options.maxSessions === undefined ? {} : { maxSessions: options.maxSessions }),
    ...(options.maxSessionVoxels === undefined ? {} : { maxSessionVoxels: options.maxSessionVoxels }),
    ...(options.acceptDir === undefined ? {} : { acceptDir: options.acceptDir }),
    ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }),
    ...(options.sdfVolumes === undefined ? {} : { sdfVolumes: options.sdfVolumes }),
    ...(options.segmentOutputDir === undefined ? {} : { segmentOutputDir: options.segmentOutputDir }),
    ...(options.maxSegmentVoxels === undefined ? {} : { maxSegmentVoxels: options.maxSegmentVoxels }),
  });
  const limiter = new RateLimiter(options.rateLimit ?? { burst: 20, perSecond: 10 });
  const maxSubscribers = options.maxSubscribers ?? 16;
  const keepAliveMs = options.keepAliveMs ?? 15_000;
  const streams = new Set<Response>();
  const router = Router();
  const json = express.json({ limit: options.maxBodyBytes ?? 64 * 1024 });

  /** One token from the tab's bucket (its client id header), else from the session's. */
  const rateLimited = (req: Request, res: Response, s: LiveSession) => {
    const header = req.get(CLIENT_ID_HEADER);
    if (header !== undefined && !CLIENT_ID.test(header)) throw invalidArgument(CLIENT_ID_HEADER, `expected ${CLIENT_ID.source}`);
    const [key, field] = header === undefined ? [`session:${s.id}`, "session"] : [`client:${header}`, CLIENT_ID_HEADER];
    const wait = limiter.take(key);
    if (wait > 0) {
      res.setHeader("Retry-After", String(Math.ceil(wait)));
      throw resourceExhausted(`too many requests from this ${field === "session" ? "session" : "tab"}; retry in ${wait.toFixed(2)} s`, field);
    }
  };

  router.post(
    `/${SESSIONS_API_PATH}`,
    json,
    handle(log, "create session", async (req, res) => {
      const body = bodyOf(req);
      KNOWN(body, ["volumeId", "sdfVolumeId", "box", "startZ"]);
      const volumeId = (field: string) => {
        const id = body[field];
        if (typeof id !== "string" || !VOLUME_ID_PATTERN.test(id)) throw invalidArgument(field, `expected ${VOLUME_ID_PATTERN.source}, got ${JSON.stringify(id)?.slice(0, 100)}`);
        return id;
      };
      const imageId = volumeId("volumeId");
      const opts: { sdfVolumeId?: string; box?: Box3; startZ?: number } = {};
      if (body["sdfVolumeId"] !== undefined) opts.sdfVolumeId = volumeId("sdfVolumeId");
      const level = options.volumes.get(imageId).source.metadata.scales[0]!;
      if (body["box"] !== undefined) opts.box = parseBox(body["box"], level);
      if (body["startZ"] !== undefined) {
        const z0 = (opts.box ?? level).offsetZyx[0];
        opts.startZ = int(body["startZ"], "startZ", z0, z0 + (opts.box ?? level).shapeZyx[0] - 1);
      }
      const s = await sessions.create(imageId, opts, clientGone(res));
      res.setHeader("Cache-Control", "no-store");
      res.status(201).json(describeSession(s, sessions.maxSegmentVoxels, sessions.maxSessionVoxels));
    }),
  );

  router.get(
    `/${SESSIONS_API_PATH}/:sessionId`,
    handle(log, "session", (req, res) => {
      res.setHeader("Cache-Control", "no-store");
      res.json(describeSession(sessionOf(sessions, req), sessions.maxSegmentVoxels, sessions.maxSessionVoxels));
    }),
  );

  router.post(
    `/${SESSIONS_API_PATH}/:sessionId/prompts`,
    json,
    handle(log, "prompts", async (req, res) => {
      const s = sessionOf(sessions, req);
      const prompt = parsePrompt(bodyOf(req), s);
      rateLimited(req, res, s);
      res.json(await s.prompt(prompt, clientGone(res)));
    }),
  );

  router.post(
    `/${SESSIONS_API_PATH}/:sessionId/propagate`,
    json,
    handle(log, "propagate", async (req, res) => {
      const s = sessionOf(sessions, req);
      const request = parsePropagate(bodyOf(req), s);
      rateLimited(req, res, s);
      res.json(await s.propagate(request, clientGone(res)));
    }),
  );

  router.post(
    `/${SESSIONS_API_PATH}/:sessionId/${SEGMENT_VIEW_PATH}`,
    json,
    handle(log, "segment view", async (req, res) => {
      const s = sessionOf(sessions, req);
      const box = parseSegmentView(bodyOf(req), s, sessions.maxSegmentVoxels);
      rateLimited(req, res, s);
      res.json(await s.segmentView(box, clientGone(res)));
    }),
  );

  router.get(
    `/${SESSIONS_API_PATH}/:sessionId/objects`,
    handle(log, "objects", (req, res) => {
      res.setHeader("Cache-Control", "no-store");
      res.json(sessionOf(sessions, req).objects());
    }),
  );

  router.delete(
    `/${SESSIONS_API_PATH}/:sessionId/objects/:objectId`,
    handle(log, "delete object", async (req, res) => {
      const s = sessionOf(sessions, req);
      res.json(await s.removeObject(objectIdOf(req.params["objectId"], "objectId")));
    }),
  );

  router.post(
    `/${SESSIONS_API_PATH}/:sessionId/accept`,
    handle(log, "accept", async (req, res) => {
      const s = sessionOf(sessions, req);
      res.status(201).json(await sessions.accept(s.id));
    }),
  );

  router.delete(
    `/${SESSIONS_API_PATH}/:sessionId`,
    handle(log, "close session", async (req, res) => {
      const s = sessionOf(sessions, req);
      await sessions.closeSession(s.id);
      res.status(204).end();
    }),
  );

  router.get(
    `/${SESSIONS_API_PATH}/:sessionId/events`,
    handle(log, "events", (req, res) => {
      const s = sessionOf(sessions, req);
      if (s.listenerCount >= maxSubscribers) throw resourceExhausted(`${maxSubscribers} event streams are open on this session`, "session");
      // EventSource sends the last id it saw when it reconnects: it gets every chunk changed since.
      const lastHeader = req.get("last-event-id");
      const last = lastHeader === undefined ? undefined : Number(lastHeader);
      if (last !== undefined && !(Number.isInteger(last) && last >= 0)) throw invalidArgument("last-event-id", `expected a generation, got ${JSON.stringify(lastHeader)}`);
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-store", Connection: "keep-alive", "X-Accel-Buffering": "no" });
      const send = (e: ChangeEvent) => res.write(`id: ${e.generation}\nevent: chunks\ndata: ${JSON.stringify(e)}\n\n`);
      res.write("retry: 1000\n\n");
      send(last === undefined ? { ...s.changesSince(Number.MAX_SAFE_INTEGER), chunks: [] } : s.changesSince(last));
      const progress = (p: LiveProgressEvent) => res.write(`event: progress\ndata: ${JSON.stringify(p)}\n\n`);
      const unsubscribe = s.subscribe(send, () => res.end(), progress);
      const ping = setInterval(() => res.write(": keep-alive\n\n"), keepAliveMs);
      ping.unref();
      streams.add(res);
      res.once("close", () => {
        clearInterval(ping);
        unsubscribe();
        streams.delete(res);
      });
    }),
  );

  router.use(`/${SESSIONS_API_PATH}`, (err: unknown, _req: Request, res: Response, _next: NextFunction) => sendError(res, err, log, "session request body"));

  return {
    router,
    sessions,
    close: async () => {
      for (const r of streams) r.end();
      await sessions.close();
    },
  };
}
