// The server side of interactive propagation: the loaded propagator, the embedding cache all
// sessions share, and the session table (a maximum count, idle eviction, a byte bound per session).
// Slices come from open volumes; the SDF memory from a precomputed SDF volume or from the SdfEngine's
// cache, whose missing blocks are computed on demand, slice by slice, as the session first needs them.
import { randomUUID } from "node:crypto";
import { DATA_TYPES } from "#src/dtype.ts";
import { type IntensityWindow, intensityKey, modelImage, modelIntensity } from "#src/intensity.ts";
import { invalidArgument, notFound, resourceExhausted } from "#src/errors.ts";
import { validateBox } from "#src/geometry.ts";
import type { Box3, Vec3, VolumeSource } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import type { ModelRegistry } from "#server/onnx/model_registry.ts";
import { EmbeddingCache } from "./embedding_cache.ts";
import type { LoadedPropagator } from "./propagator.ts";
import { PropagationSession, type SliceProvider } from "./session.ts";

export interface PropagationEngineOptions {
  /** The default propagator (a request that names none gets it). */
  propagator: LoadedPropagator;
  /** More propagators a request may name (`propagator.json`'s `name`); names must be unique. */
  more?: LoadedPropagator[];
  log: Logger;
  /** The SDF engine and its model registry, for sessions that compute their SDF memory. */
  sdf?: { engine: SdfEngine; registry: ModelRegistry; defaultModel?: string };
  /** Opens the SdfEngine's result URLs (precomputed://file://...). */
  openVolume?: (url: string) => Promise<VolumeSource>;
  maxSessions?: number;
  /** A session untouched this long is closed. Default 30 minutes. */
  idleTimeoutMs?: number;
  /** Bytes of state per session. Default 2 GiB. */
  maxSessionBytes?: number;
  /** Largest slice (y * x voxels) a session box may have. Default 4096 * 4096. */
  maxSliceVoxels?: number;
  /** Bytes of image embeddings kept across sessions. Default 1 GiB. */
  embeddingCacheBytes?: number;
  /**
   * Slices on each side of a session's start slice, and of each prompted slice, that are embedded
   * speculatively at the pool's lowest priority (cancelled on close, overtaken by any real request).
   * Default 2; 0 turns speculation off.
   */
  prefetchRadius?: number;
  /** SessionOptions.readAhead for every session (default true). */
  readAhead?: boolean;
}

/** Where a session's SDF memory comes from. */
export type SdfSource =
  | { kind: "volume"; volume: VolumeSource }
  | { kind: "model"; model: string; volumeKey: string };

export interface StartRequest {
  volume: VolumeSource;
  volumeKey: string;
  /** Raw values shown as black and white; required unless the volume is uint8 (see src/intensity.ts). */
  intensity?: IntensityWindow;
  box: Box3;
  scale: number;
  sdf: SdfSource;
  /** A propagator's name; undefined or "": the default. */
  model?: string;
  /** Box-local slice the user starts on: it and its neighbours are embedded ahead of the first click. */
  startZ?: number;
  /** Who the speculative runs are for. */
  client?: string;
}

interface Entry {
  session: PropagationSession;
  box: Box3;
  lastUsed: number;
  busy: number;
  close: () => Promise<void>;
  /** Whether SDF slices are plain reads (worth reading ahead) rather than model runs. */
  sdfIsRead: boolean;
}

function sliceBox(box: Box3, z: number): Box3 {
  return { offsetZyx: [box.offsetZyx[0] + z, box.offsetZyx[1], box.offsetZyx[2]], shapeZyx: [1, box.shapeZyx[1], box.shapeZyx[2]] };
}

function toFloat32(a: ArrayLike<number>): Float32Array {
  return a instanceof Float32Array ? a : Float32Array.from(a);
}

export class PropagationEngine {
  readonly embeddings: EmbeddingCache;
  private readonly sessions = new Map<string, Entry>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly idleTimeoutMs: number;
  private readonly byName = new Map<string, LoadedPropagator>();

  constructor(private readonly options: PropagationEngineOptions) {
    for (const p of [options.propagator, ...(options.more ?? [])]) {
      if (this.byName.has(p.config.name)) throw invalidArgument("propagators", `two propagators are named ${JSON.stringify(p.config.name)}`);
      this.byName.set(p.config.name, p);
    }
    this.embeddings = new EmbeddingCache(options.embeddingCacheBytes ?? 1 << 30);
    this.idleTimeoutMs = options.idleTimeoutMs ?? 30 * 60_000;
    this.sweeper = setInterval(() => void this.evictIdle(), Math.max(10, Math.min(60_000, this.idleTimeoutMs / 4)));
    this.sweeper.unref();
  }

  /** The default propagator. */
  get propagator(): LoadedPropagator {
    return this.options.propagator;
  }

  /** Names of every loaded propagator, the default first. */
  get propagatorNames(): string[] {
    return [...this.byName.keys()];
  }

  /** The propagator named `name` ("" or undefined: the default); unknown: NotFound naming `field`. */
  propagatorNamed(name: string | undefined, field = "model"): LoadedPropagator {
    if (name === undefined || name === "") return this.options.propagator;
    const p = this.byName.get(name);
    if (p === undefined) throw notFound(field, `no propagator ${JSON.stringify(name)} on this server (it has ${this.propagatorNames.map((n) => JSON.stringify(n)).join(", ")})`);
    return p;
  }

  /** The SDF model a session uses when the request names none (undefined: none configured). */
  get defaultSdfModel(): string | undefined {
    return this.options.sdf?.defaultModel;
  }

  hasSdfModel(name: string): boolean {
    return this.options.sdf?.registry.get(name) !== undefined;
  }

  /** Checks that `box` lies inside level `scale` of `volume` (errors name `field`). */
  static checkBox(volume: VolumeSource, box: Box3, scale: number, field = "box"): void {
    const level = volume.metadata.scales[scale];
    if (!Number.isInteger(scale) || level === undefined) {
      throw invalidArgument("scale", `volume has ${volume.metadata.scales.length} scales; ${scale} does not exist`);
    }
    try {
      validateBox(box, level.shapeZyx, level.offsetZyx, Number.MAX_SAFE_INTEGER);
    } catch (e) {
      const err = e as Error & { field?: string };
      throw invalidArgument(err.field?.replace(/^box/, field) ?? field, err.message.replace(/^[^:]*: /, ""));
    }
  }

  async start(req: StartRequest): Promise<string> {
    if (this.sessions.size >= (this.options.maxSessions ?? 64)) {
      await this.evictIdle();
      if (this.sessions.size >= (this.options.maxSessions ?? 64)) {
        throw resourceExhausted(`${this.sessions.size} sessions are open; close one first`, "session_id");
      }
    }
    const { volume, box, scale } = req;
    const propagator = this.propagatorNamed(req.model);
    const maxSlice = this.options.maxSliceVoxels ?? 4096 * 4096;
    if (box.shapeZyx[1] * box.shapeZyx[2] > maxSlice) {
      throw invalidArgument("box.shape", `slices of ${box.shapeZyx[1]} x ${box.shapeZyx[2]} voxels are more than this server's limit of ${maxSlice}`);
    }
    if (DATA_TYPES[volume.metadata.dtype].isBigInt) throw invalidArgument("volume_id", "a session needs image intensities, not a 64-bit label volume");
    const toModel = modelIntensity(volume.metadata.dtype, req.intensity);
    let sdfVolume: Promise<VolumeSource> | undefined;
    const slices: SliceProvider = {
      shapeZyx: [...box.shapeZyx] as Vec3,
      imageKey: `${req.volumeKey}${intensityKey(req.intensity)}|${scale}|${box.offsetZyx.join(",")}|${box.shapeZyx.join(",")}`,
      image: async (z, signal) => modelImage(await volume.read(sliceBox(box, z), scale, signal ? { signal } : {}), toModel),
      sdf: async (z, signal, client) => {
        const opts = signal ? { signal } : {};
        if (req.sdf.kind === "volume") return toFloat32((await req.sdf.volume.read(sliceBox(box, z), scale, opts)) as ArrayLike<number>);
        // Computes the blocks this slice touches that are not cached yet (a no-op once they are).
        const r = await this.options.sdf!.engine.compute({
          volume,
          volumeKey: req.sdf.volumeKey,
          ...(req.intensity === undefined ? {} : { intensity: req.intensity }),
          box: sliceBox(box, z),
          scale,
          model: req.sdf.model,
          ...opts,
          ...(client === undefined ? {} : { client }),
        });
        sdfVolume ??= this.options.openVolume!(r.resultUrl);
        // The cached SDF is one level on the grid of the volume's level `scale`.
        return toFloat32((await (await sdfVolume).read(sliceBox(box, z), 0, opts)) as ArrayLike<number>);
      },
    };
    const session = new PropagationSession({
      propagator,
      slices,
      embeddings: this.embeddings,
      maxBytes: this.options.maxSessionBytes ?? 2 ** 31,
      readAhead: this.options.readAhead ?? true,
    });
    const id = randomUUID();
    const sdfIsRead = req.sdf.kind === "volume";
    this.sessions.set(id, {
      session,
      box,
      lastUsed: Date.now(),
      busy: 0,
      sdfIsRead,
      close: async () => {
        session.close();
        if (req.sdf.kind === "model" && sdfVolume !== undefined) await (await sdfVolume).close();
      },
    });
    this.options.log.info({ sessionId: id, box, scale, sdf: req.sdf.kind, model: propagator.config.name }, "session started");
    if (req.startZ !== undefined) this.prefetch(id, req.startZ, req.client);
    return id;
  }

  /**
   * Embeds slice z of session `id` and its neighbours (z, z+1, z-1, z+2, ... within the radius) at
   * the lowest priority, and reads their SDF slices when those are reads. Nothing waits for it.
   */
  prefetch(id: string, z: number, client?: string): void {
    const r = this.options.prefetchRadius ?? 2;
    const e = this.sessions.get(id);
    if (e === undefined || r <= 0) return;
    const zs = [z];
    for (let i = 1; i <= r; i++) zs.push(z + i, z - i);
    e.session.prefetch(zs, { sdf: e.sdfIsRead, ...(client === undefined ? {} : { client }) });
  }

  /** Runs `fn` on a session, which counts as in use (never evicted) until it settles. */
  async use<T>(id: string, fn: (session: PropagationSession, box: Box3) => Promise<T>): Promise<T> {
    const e = this.entry(id);
    e.busy++;
    try {
      return await fn(e.session, e.box);
    } finally {
      e.busy--;
      e.lastUsed = Date.now();
    }
  }

  /** A streaming use: the session stays in use while the stream runs. */
  async *useStream<T>(id: string, fn: (session: PropagationSession, box: Box3) => AsyncGenerator<T>): AsyncGenerator<T> {
    const e = this.entry(id);
    e.busy++;
    try {
      for await (const v of fn(e.session, e.box)) {
        e.lastUsed = Date.now();
        yield v;
      }
    } finally {
      e.busy--;
      e.lastUsed = Date.now();
    }
  }

  private entry(id: string): Entry {
    const e = this.sessions.get(id);
    if (e === undefined) throw notFound("session_id", `no session "${id}" (closed, evicted after ${this.idleTimeoutMs} ms idle, or never started)`);
    return e;
  }

  async close(id: string): Promise<void> {
    const e = this.entry(id);
    this.sessions.delete(id);
    await e.close();
    this.options.log.info({ sessionId: id }, "session closed");
  }

  /** Closes sessions idle for longer than the timeout (never one in use). */
  async evictIdle(now = Date.now()): Promise<void> {
    for (const [id, e] of [...this.sessions]) {
      if (e.busy === 0 && now - e.lastUsed > this.idleTimeoutMs) {
        this.sessions.delete(id);
        await e.close().catch(() => undefined);
        this.options.log.info({ sessionId: id }, "idle session evicted");
      }
    }
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Closes every session and the propagator's workers. */
  async shutdown(): Promise<void> {
    clearInterval(this.sweeper);
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.allSettled(all.map((e) => e.close()));
    await Promise.allSettled([...this.byName.values()].map((p) => p.close()));
  }
}
