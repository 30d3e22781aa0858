// Interactive segmentation for the viewer: each live session is a gRPC session on the inference
// server (this process or a remote one) plus a live uint64 label volume that the masks coming back
// are written into, served like any registered volume, with a per-chunk generation and a push
// channel that tells viewers which chunks changed.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Box2 } from "#proto/spatial_sam/v1/common.ts";
import { DEFAULT_MAX_SESSION_VOXELS, type LiveChangeEvent, type LiveProgressEvent } from "#src/bridge_api.ts";
import { Direction, PointLabel, type ObjectMask, type PointPrompt } from "#proto/spatial_sam/v1/segmentation.ts";
import { cancelled, invalidArgument, notFound, resourceExhausted, unimplemented } from "#src/errors.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { LiveLabelVolume, type SliceMaskWrite } from "./live_volume.ts";
import type { SegmentationClient } from "./segmentation_client.ts";
import type { RegisteredVolume, VolumeRegistry } from "./volume_registry.ts";

export type LiveDirection = "forward" | "backward" | "both";

export interface PromptRequest {
  objectId: bigint;
  z: number;
  /** Volume voxel coordinates as Neuroglancer gives them (voxel i covers [i, i + 1)). */
  points: { x: number; y: number; label: "positive" | "negative" }[];
  /** Half-open voxel box on slice z. */
  box?: { x0: number; y0: number; x1: number; y1: number };
  clearOld: boolean;
}

export interface PropagateRequest {
  direction: LiveDirection;
  startZ?: number;
  /** Stop after this many slices in each direction (unset: to the volume's edge). */
  maxSlices?: number;
  objectIds: bigint[];
}

/** What viewers are told on the push channel (src/bridge_api.ts). */
export type ChangeEvent = LiveChangeEvent;

export interface LiveSessionsOptions {
  volumes: VolumeRegistry;
  client: SegmentationClient;
  log: Logger;
  /** Most sessions at once (default 8). */
  maxSessions?: number;
  /** Largest session box in voxels (default 512^3). */
  maxSessionVoxels?: number;
  /** Live chunks are the image's chunks, at most this large on each axis (default 64). */
  maxChunkEdge?: number;
  /** A session nobody watches (no event stream) and nobody used this long is closed. Default 30 min. */
  idleTimeoutMs?: number;
  /** Where accepted results are written as precomputed; accept is unavailable without it. */
  acceptDir?: string;
  /**
   * Per image volume id, the bridge volume holding its precomputed SDF (the propagator's memory),
   * for sessions that name none. Without one the server computes it with its default SDF model.
   */
  sdfVolumes?: Readonly<Record<string, string>>;
  /**
   * A folder the inference server may write to (under its roots) where "segment everything in
   * view" has SegmentVolume write its instances; the bridge reads them back over gRPC. Without it
   * segment-in-view is unavailable.
   */
  segmentOutputDir?: string;
  /** Largest box segment-in-view accepts, in voxels (default 2^22, e.g. 64 x 256 x 256). */
  maxSegmentVoxels?: number;
}

type Listener = (e: ChangeEvent) => void;
type ProgressListener = (e: LiveProgressEvent) => void;

export interface SegmentViewResult {
  generation: number;
  box: Box3;
  chunks: string[];
  /** Ids given to the instances found, ascending. */
  newObjects: string[];
  objects: { objectId: string; voxels: number }[];
  cancelled: boolean;
}

const DIRECTION: Record<LiveDirection, Direction> = {
  forward: Direction.DIRECTION_FORWARD,
  backward: Direction.DIRECTION_BACKWARD,
  both: Direction.DIRECTION_BOTH,
};

export class LiveSession {
  readonly id: string;
  readonly liveVolumeId: string;
  readonly image: RegisteredVolume;
  readonly live: LiveLabelVolume;
  readonly scaleKey: string;
  readonly box: { offsetZyx: Vec3; shapeZyx: Vec3 };
  readonly #grpcSessionId: string;
  readonly #owner: LiveSessions;
  readonly #listeners = new Set<Listener>();
  readonly #progressListeners = new Set<ProgressListener>();
  /** The server's id of the SDF volume the session uses as memory ("": the server's SDF model). */
  readonly #sdfServerVolumeId: string;
  readonly #imageServerVolumeId: string;
  /** Ids given to automatic instances (segment-in-view); they exist only in the live volume. */
  readonly #autoObjects = new Set<bigint>();
  /** The highest object id the session has used (prompted or automatic): new instances go above it, even after deletes. */
  #highestId = 0n;
  #segmentRuns = 0;
  /** Operations run one at a time, in order (the server's session does the same). */
  #tail: Promise<unknown> = Promise.resolve();
  /** The running propagation or segmentation: a newer request cancels it. */
  #job: AbortController | undefined;
  #lastPromptZ: number | undefined;
  #closed = false;
  /** Called once when the session closes (event streams end). */
  readonly #onClose = new Set<() => void>();
  /** When the last operation ended (or began, while one runs), for idle eviction. */
  lastUsed = Date.now();
  #running = 0;

  constructor(init: {
    id: string;
    image: RegisteredVolume;
    live: LiveLabelVolume;
    scaleKey: string;
    grpcSessionId: string;
    imageServerVolumeId: string;
    sdfServerVolumeId: string;
    owner: LiveSessions;
    /** The server session's box (volume coordinates); the live volume spans the whole level. */
    box: Box3;
  }) {
    this.id = init.id;
    this.liveVolumeId = `live-${init.id}`;
    this.image = init.image;
    this.live = init.live;
    this.scaleKey = init.scaleKey;
    this.box = { offsetZyx: init.box.offsetZyx, shapeZyx: init.box.shapeZyx };
    this.#grpcSessionId = init.grpcSessionId;
    this.#imageServerVolumeId = init.imageServerVolumeId;
    this.#sdfServerVolumeId = init.sdfServerVolumeId;
    this.#owner = init.owner;
  }

  get listenerCount(): number {
    return this.#listeners.size;
  }

  /** `fn` gets every change, `onProgress` the automatic segmentation's progress; `onClose` is called if the session closes first. */
  subscribe(fn: Listener, onClose: () => void, onProgress?: ProgressListener): () => void {
    this.#listeners.add(fn);
    this.#onClose.add(onClose);
    if (onProgress !== undefined) this.#progressListeners.add(onProgress);
    return () => {
      this.#listeners.delete(fn);
      this.#onClose.delete(onClose);
      if (onProgress !== undefined) this.#progressListeners.delete(onProgress);
    };
  }

  /** Nobody is watching and nothing has run for `ms`. */
  idleFor(ms: number, now = Date.now()): boolean {
    return this.#running === 0 && this.#listeners.size === 0 && now - this.lastUsed > ms;
  }

  objects(): { objectId: string; voxels: number }[] {
    return this.live.objects().map((o) => ({ objectId: o.objectId.toString(), voxels: o.voxels }));
  }

  /** All chunks changed after generation `since` (for a viewer that reconnects). */
  changesSince(since: number): ChangeEvent {
    // Over the live volume's whole grid, not the session box: chunk indices start at the level's origin.
    const [Z, Y, X] = this.live.metadata.scales[0]!.shapeZyx;
    const [cz, cy, cx] = this.live.metadata.scales[0]!.chunkShapeZyx;
    const chunks: string[] = [];
    for (let z = 0; z * cz < Z; z++)
      for (let y = 0; y * cy < Y; y++)
        for (let x = 0; x * cx < X; x++) if (this.live.chunkGeneration([z, y, x]) > since) chunks.push(this.live.chunkName([z, y, x]));
    const event = this.#event(chunks);
    // Which objects changed meanwhile is not kept: after a gap, every object's mesh may be stale.
    return chunks.length === 0 ? event : { ...event, changedObjects: event.objects.map((o) => o.objectId) };
  }

  #event(chunks: string[]): ChangeEvent {
    return { generation: this.live.generation, volumeId: this.liveVolumeId, scaleKey: this.scaleKey, chunks, objects: this.objects() };
  }

  /** Stamps changed chunks with a new generation and tells every viewer which chunks and objects changed. */
  #publish(changed: Vec3[]): ChangeEvent {
    this.live.commit(changed);
    const event: ChangeEvent = { ...this.#event(changed.map((c) => this.live.chunkName(c))), changedObjects: this.live.takeChangedObjects().map(String) };
    if (changed.length > 0) for (const fn of this.#listeners) fn(event);
    return event;
  }

  /** Writes masks into the live volume and tells every viewer which chunks changed. */
  #apply(masks: readonly ObjectMask[]): ChangeEvent {
    const writes: SliceMaskWrite[] = masks.map((m) => ({ objectId: m.objectId, z: m.z, bbox: m.bbox ?? { y0: 0, x0: 0, y1: 0, x1: 0 }, data: m.data }));
    return this.#publish(this.live.write(writes));
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    this.#running++;
    this.lastUsed = Date.now();
    const run = this.#tail.then(() => {
      if (this.#closed) throw notFound("session", `session ${this.id} is closed`);
      return fn();
    });
    this.#tail = run
      .catch(() => undefined)
      .finally(() => {
        this.#running--;
        this.lastUsed = Date.now();
      });
    return run;
  }

  /** A new request supersedes a running propagation or segmentation (the user is correcting it). */
  #cancelJob(): void {
    this.#job?.abort(cancelled("superseded by a newer request"));
  }

  /** A job's AbortController: aborted by a newer request or by `signal` (the client went away). */
  #startJob(signal: AbortSignal | undefined): { abort: AbortController; done: () => void } {
    this.#cancelJob();
    const abort = new AbortController();
    this.#job = abort;
    const onAbort = () => abort.abort(cancelled("the client went away"));
    signal?.addEventListener("abort", onAbort, { once: true });
    return {
      abort,
      done: () => {
        signal?.removeEventListener("abort", onAbort);
        if (this.#job === abort) this.#job = undefined;
      },
    };
  }

  prompt(req: PromptRequest, signal?: AbortSignal) {
    this.#cancelJob();
    return this.#serial(async () => {
      const points: PointPrompt[] = req.points.map((p) => ({
        x: Math.floor(p.x),
        y: Math.floor(p.y),
        label: p.label === "positive" ? PointLabel.POINT_LABEL_POSITIVE : PointLabel.POINT_LABEL_NEGATIVE,
      }));
      const box: Box2 | undefined = req.box === undefined ? undefined : { y0: req.box.y0, x0: req.box.x0, y1: req.box.y1, x1: req.box.x1 };
      const res = await this.#owner.client.addPrompts(
        { sessionId: this.#grpcSessionId, objectId: req.objectId, z: req.z, points, clearOld: req.clearOld, ...(box === undefined ? {} : { box }) },
        signal,
      );
      this.#lastPromptZ = req.z;
      if (req.objectId > this.#highestId) this.#highestId = req.objectId;
      const event = this.#apply(res.masks);
      return { ...event, masks: res.masks.map((m) => ({ objectId: m.objectId.toString(), z: m.z, iouScore: m.iouScore, objectScore: m.objectScore })) };
    });
  }

  /** Propagates, writing each slice as it arrives; a newer request cancels it (`cancelled: true`). */
  propagate(req: PropagateRequest, signal?: AbortSignal) {
    const { abort, done } = this.#startJob(signal);
    return this.#serial(async () => {
      const changed = new Set<string>();
      let slices = 0;
      let wasCancelled = false;
      try {
        abort.signal.throwIfAborted();
        const stream = this.#owner.client.propagate(
          {
            sessionId: this.#grpcSessionId,
            direction: DIRECTION[req.direction],
            maxSlices: req.maxSlices ?? 0,
            objectIds: req.objectIds,
            ...(req.startZ === undefined ? {} : { startZ: req.startZ }),
          },
          abort.signal,
        );
        for await (const slice of stream) {
          slices++;
          for (const c of this.#apply(slice.masks).chunks) changed.add(c);
        }
      } catch (e) {
        if (!abort.signal.aborted) throw e;
        wasCancelled = true;
      } finally {
        done();
      }
      return { generation: this.live.generation, slices, chunks: [...changed], cancelled: wasCancelled, objects: this.objects() };
    });
  }

  /**
   * "Segment everything in view": the server's SegmentVolume over `box` (inside the session's
   * volume), its instances read back and written into the live volume under new ids (above every
   * id the session has used), replacing earlier automatic instances inside the box but never the
   * user's objects. Progress goes to the event stream; a newer request or the client going away
   * cancels it (`cancelled: true`, the live volume unchanged).
   */
  segmentView(box: Box3, signal?: AbortSignal): Promise<SegmentViewResult> {
    const dir = this.#owner.segmentOutputDir;
    // Refused before it cancels anything running.
    if (dir === undefined) return Promise.reject(unimplemented("this bridge has no folder for automatic segmentation output (segmentOutputDir)"));
    const { abort, done } = this.#startJob(signal);
    return this.#serial(async () => {
      const outDir = join(dir, `${this.id}-${++this.#segmentRuns}-${randomBytes(3).toString("hex")}`);
      const client = this.#owner.client;
      const progress = (p: LiveProgressEvent) => {
        for (const fn of this.#progressListeners) fn(p);
      };
      let labels: BigUint64Array;
      try {
        abort.signal.throwIfAborted();
        let resultUrl = "";
        const wireBox = { offset: { z: box.offsetZyx[0], y: box.offsetZyx[1], x: box.offsetZyx[2] }, shape: { z: box.shapeZyx[0], y: box.shapeZyx[1], x: box.shapeZyx[2] } };
        const stream = client.segmentVolume(
          { volumeId: this.#imageServerVolumeId, box: wireBox, scale: 0, model: "", sdfModel: "", sdfVolumeId: this.#sdfServerVolumeId, outputUrl: `precomputed://file://${outDir}`, propagatedOnly: false },
          abort.signal,
        );
        for await (const p of stream) {
          progress({ operation: "segment", blocksDone: Number(p.blocksDone), blocksTotal: Number(p.blocksTotal), objectsFound: Number(p.objectsFound), done: p.done });
          if (p.done) resultUrl = p.resultUrl;
        }
        if (resultUrl === "") throw new Error("SegmentVolume ended without a result");
        const resultId = await client.openVolume(resultUrl, abort.signal);
        try {
          labels = await client.readLabels(resultId, box, abort.signal);
        } finally {
          await client.closeVolume(resultId).catch(() => undefined);
        }
      } catch (e) {
        if (!abort.signal.aborted) throw e;
        return { generation: this.live.generation, box, chunks: [], newObjects: [], objects: this.objects(), cancelled: true };
      } finally {
        done();
        // The output is the server's; when it shares this machine, nothing of it need stay.
        if (existsSync(outDir)) await rm(outDir, { recursive: true, force: true }).catch(() => undefined);
      }
      // New ids start above every id in use (prompted, automatic, or in the live volume).
      let base = this.#highestId;
      for (const o of this.live.objects()) if (o.objectId > base) base = o.objectId;
      const found = new Set<bigint>();
      for (let i = 0; i < labels.length; i++) {
        const k = labels[i]!;
        if (k === 0n) continue;
        labels[i] = base + k;
        found.add(base + k);
      }
      const auto = this.#autoObjects;
      const changed = this.live.writeBlock(box, labels, (old) => old === 0n || auto.has(old));
      for (const id of found) {
        auto.add(id);
        if (id > this.#highestId) this.#highestId = id;
      }
      const event = this.#publish(changed);
      const present = new Set(this.live.objects().map((o) => o.objectId));
      const newObjects = [...found].filter((id) => present.has(id)).sort((a, b) => (a < b ? -1 : 1)).map(String);
      return { generation: event.generation, box, chunks: event.chunks, newObjects, objects: event.objects, cancelled: false };
    });
  }

  /** The z a propagation "to z" starts from: the last prompted slice. */
  get lastPromptZ(): number | undefined {
    return this.#lastPromptZ;
  }

  removeObject(objectId: bigint) {
    this.#cancelJob();
    return this.#serial(async () => {
      // Automatic instances exist only here; the server's session holds the prompted objects.
      if (!this.#autoObjects.delete(objectId)) await this.#owner.client.removeObject(this.#grpcSessionId, objectId);
      return this.#publish(this.live.clearObject(objectId));
    });
  }

  /** Writes the live volume as precomputed under `dir` (atomically: a temp folder renamed into place). */
  accept(dir: string, volumes: VolumeRegistry) {
    this.#cancelJob();
    return this.#serial(async () => {
      const final = join(dir, this.id);
      const tmp = `${final}.tmp-${process.pid}`;
      await mkdir(dir, { recursive: true });
      await rm(tmp, { recursive: true, force: true });
      const store = await FileStore.open(tmp, [dir]);
      const liveInfo = volumes.get(this.liveVolumeId).info;
      const writer = await PrecomputedWriter.create(store, liveInfo);
      const level = this.live.metadata.scales[0]!;
      const [Z, Y, X] = level.shapeZyx;
      const [cz, cy, cx] = level.chunkShapeZyx;
      for (let z = 0; z * cz < Z; z++)
        for (let y = 0; y * cy < Y; y++)
          for (let x = 0; x * cx < X; x++) {
            // Never-written chunks read as 0, the fill value, and are left out.
            if (this.live.chunkGeneration([z, y, x]) === 0) continue;
            const box = { offsetZyx: [level.offsetZyx[0] + z * cz, level.offsetZyx[1] + y * cy, level.offsetZyx[2] + x * cx] as Vec3, shapeZyx: [Math.min(cz, Z - z * cz), Math.min(cy, Y - y * cy), Math.min(cx, X - x * cx)] as Vec3 };
            await writer.writeChunk(0, [z, y, x], await this.live.read(box, 0));
          }
      await rm(final, { recursive: true, force: true });
      await rename(tmp, final);
      const id = `accepted-${this.id}`;
      await volumes.remove(id);
      const v = await volumes.register({ id, url: `precomputed://file://${final}`, name: `accepted ${this.id}` });
      return { volumeId: v.id, url: v.url, objects: this.objects() };
    });
  }

  /** Ends the server's session and unregisters the live volume. */
  async close(volumes: VolumeRegistry): Promise<void> {
    if (this.#closed) return;
    this.#cancelJob();
    await this.#tail;
    this.#closed = true;
    this.#listeners.clear();
    this.#progressListeners.clear();
    for (const fn of this.#onClose) fn();
    this.#onClose.clear();
    await volumes.remove(this.liveVolumeId);
    await this.#owner.client.closeSession(this.#grpcSessionId).catch((e: unknown) => this.#owner.log.info({ err: String(e), session: this.id }, "closing the server's session failed"));
  }
}

export class LiveSessions {
  readonly client: SegmentationClient;
  readonly log: Logger;
  readonly #volumes: VolumeRegistry;
  readonly #sessions = new Map<string, LiveSession>();
  /** The server's volume id for each bridge volume, opened once. */
  readonly #serverVolumes = new Map<string, Promise<string>>();
  readonly #options: LiveSessionsOptions;
  #starting = 0;
  readonly #sweeper: NodeJS.Timeout;

  constructor(options: LiveSessionsOptions) {
    this.#options = options;
    this.#volumes = options.volumes;
    this.client = options.client;
    this.log = options.log;
    const idle = options.idleTimeoutMs ?? 30 * 60_000;
    this.#sweeper = setInterval(() => void this.evictIdle(), Math.max(10, Math.min(60_000, idle / 4)));
    this.#sweeper.unref();
  }

  /** Closes sessions that are idle (see `idleTimeoutMs`); their live volumes go with them. */
  async evictIdle(now = Date.now()): Promise<void> {
    const idle = this.#options.idleTimeoutMs ?? 30 * 60_000;
    for (const [id, s] of [...this.#sessions]) {
      if (!s.idleFor(idle, now)) continue;
      this.#sessions.delete(id);
      this.log.info({ session: id }, "idle live session closed");
      await s.close(this.#volumes);
    }
  }

  get segmentOutputDir(): string | undefined {
    return this.#options.segmentOutputDir;
  }

  get maxSegmentVoxels(): number {
    return this.#options.maxSegmentVoxels ?? 2 ** 22;
  }

  get acceptDir(): string | undefined {
    return this.#options.acceptDir;
  }

  get volumes(): VolumeRegistry {
    return this.#volumes;
  }

  /** Opens a bridge volume on the inference server once; resolves the server's id for it. */
  #serverVolume(v: RegisteredVolume, signal?: AbortSignal): Promise<string> {
    let id = this.#serverVolumes.get(v.id);
    if (id === undefined) {
      id = this.client.openVolume(v.url, signal, v.intensity);
      this.#serverVolumes.set(v.id, id);
      id.catch(() => this.#serverVolumes.delete(v.id));
    }
    return id;
  }

  get maxSessionVoxels(): number {
    return this.#options.maxSessionVoxels ?? DEFAULT_MAX_SESSION_VOXELS;
  }

  /**
   * Starts a session on `box` (volume voxel coordinates of the first level; default the whole
   * level, when it fits `maxSessionVoxels`) of the bridge volume `volumeId`, with the SDF memory
   * from the bridge volume `sdfVolumeId` (or the configured one, or the server's model). `startZ`,
   * the slice the user looks at, lets the server embed it and its neighbours ahead of the first click.
   */
  async create(volumeId: string, opts: { sdfVolumeId?: string; box?: Box3; startZ?: number } = {}, signal?: AbortSignal): Promise<LiveSession> {
    const { sdfVolumeId } = opts;
    const max = this.#options.maxSessions ?? 8;
    if (this.#sessions.size + this.#starting >= max) await this.evictIdle();
    if (this.#sessions.size + this.#starting >= max) throw resourceExhausted(`${max} live sessions are open; close one first`, "session");
    const image = this.#volumes.get(volumeId);
    if (image.info.type !== "image") throw invalidArgument("volumeId", `volume ${volumeId} is a ${image.info.type} volume; a session segments an image`);
    const level = image.source.metadata.scales[0]!;
    const box: Box3 = opts.box ?? { offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx };
    for (let d = 0; d < 3; d++) {
      const lo = level.offsetZyx[d]!;
      const hi = lo + level.shapeZyx[d]!;
      const a = box.offsetZyx[d]!;
      if (!(Number.isInteger(a) && Number.isInteger(box.shapeZyx[d]) && box.shapeZyx[d]! > 0 && a >= lo && a + box.shapeZyx[d]! <= hi)) {
        throw invalidArgument("box", `axis ${"zyx"[d]} [${a}, ${a + box.shapeZyx[d]!}) is not a non-empty part of the level's [${lo}, ${hi})`);
      }
    }
    const voxels = box.shapeZyx[0] * box.shapeZyx[1] * box.shapeZyx[2];
    const maxVoxels = this.maxSessionVoxels;
    if (voxels > maxVoxels) {
      throw invalidArgument("box", opts.box === undefined ? `volume ${volumeId} has ${voxels} voxels; sessions are limited to ${maxVoxels}: give a box around the part to segment` : `the box has ${voxels} voxels; sessions are limited to ${maxVoxels}`);
    }
    const { startZ } = opts;
    if (startZ !== undefined && !(Number.isInteger(startZ) && startZ >= box.offsetZyx[0] && startZ < box.offsetZyx[0] + box.shapeZyx[0])) {
      throw invalidArgument("startZ", `expected an integer slice in [${box.offsetZyx[0]}, ${box.offsetZyx[0] + box.shapeZyx[0]}), got ${startZ}`);
    }
    const scale = image.info.scales[0]!;
    const edge = this.#options.maxChunkEdge ?? 64;
    const chunkShapeZyx = [2, 1, 0].map((d) => Math.min(edge, scale.chunkSizeXyz[d]!)) as Vec3;
    const sdfId = sdfVolumeId ?? this.#options.sdfVolumes?.[volumeId];
    let sdf: RegisteredVolume | undefined;
    if (sdfId !== undefined) {
      try {
        sdf = this.#volumes.get(sdfId);
      } catch {
        throw notFound("sdfVolumeId", `no volume ${JSON.stringify(sdfId)} is registered`);
      }
    }
    this.#starting++;
    try {
      const imageServerVolumeId = await this.#serverVolume(image, signal);
      const sdfServerVolumeId = sdf === undefined ? "" : await this.#serverVolume(sdf, signal);
      const grpcSessionId = await this.client.startSession(
        {
          volumeId: imageServerVolumeId,
          box: { offset: { z: box.offsetZyx[0], y: box.offsetZyx[1], x: box.offsetZyx[2] }, shape: { z: box.shapeZyx[0], y: box.shapeZyx[1], x: box.shapeZyx[2] } },
          scale: 0,
          model: "",
          sdfModel: "",
          sdfVolumeId: sdfServerVolumeId,
          ...(startZ === undefined ? {} : { startZ }),
        },
        signal,
      );
      const id = randomBytes(6).toString("hex");
      // On the level's whole grid (chunks are allocated on first write): the server's masks come in
      // volume coordinates and land where they are, whatever the session box.
      const live = new LiveLabelVolume({ level, chunkShapeZyx });
      const session = new LiveSession({ id, image, live, scaleKey: scale.key, grpcSessionId, imageServerVolumeId, sdfServerVolumeId, owner: this, box });
      this.#volumes.add({ id: session.liveVolumeId, url: `live://${id}`, name: "spatial-sam", mutable: true, version: () => live.generation }, live);
      this.#sessions.set(id, session);
      this.log.info({ session: id, volumeId, grpcSessionId, target: this.client.target, box, startZ }, "live session started");
      return session;
    } finally {
      this.#starting--;
    }
  }

  get(id: string): LiveSession {
    const s = this.#sessions.get(id);
    if (s === undefined) throw notFound("session", `no live session ${JSON.stringify(id.slice(0, 100))}`);
    return s;
  }

  async closeSession(id: string): Promise<void> {
    const s = this.get(id);
    this.#sessions.delete(id);
    await s.close(this.#volumes);
  }

  async accept(id: string) {
    const dir = this.#options.acceptDir;
    if (dir === undefined) throw unimplemented("this bridge has no folder for accepted results (acceptDir)");
    return this.get(id).accept(dir, this.#volumes);
  }

  async close(): Promise<void> {
    clearInterval(this.#sweeper);
    const all = [...this.#sessions.values()];
    this.#sessions.clear();
    await Promise.allSettled(all.map((s) => s.close(this.#volumes)));
    this.client.close();
  }

  /** Checks a z against a session's slices (errors name `field`). */
  static checkZ(session: LiveSession, z: number, field: string): void {
    const z0 = session.box.offsetZyx[0];
    const z1 = z0 + session.box.shapeZyx[0];
    if (!Number.isInteger(z) || z < z0 || z >= z1) throw invalidArgument(field, `expected an integer slice in [${z0}, ${z1}), got ${z}`);
  }
}
