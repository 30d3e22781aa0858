// One interactive propagation session: SAM2's video-predictor lifecycle over the z slices of a box,
// driving the propagator's three ONNX graphs exactly as models/spatialsam/predictor.py does (the
// rules are those written in propagator.json's `loop` and `image` sections).
//
// State: objects in insertion order (a user's uint64 id; its batch index is its position), each
// with its prompts per slice and two output maps, `cond` (prompted slices: always in the object's
// memory, never overwritten by propagation) and `noncond` (propagated slices). An output keeps the
// padded binary mask, the object pointer and, once a later slice needs it, its memory encoding.
import { getMaxListeners, setMaxListeners } from "node:events";
import { cancelled, failedPrecondition, invalidArgument, notFound, resourceExhausted, SpatialSamError, throwIfAborted } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";
import type { RunOptions, TensorData } from "#server/onnx/model_registry.ts";
import type { Embedding, EmbeddingCache } from "./embedding_cache.ts";
import type { LoadedPropagator, PropagatorConfig } from "./propagator.ts";

/** Where a session's slices come from (z is local to the session box: 0..Z-1). */
export interface SliceProvider {
  readonly shapeZyx: Vec3;
  /** Identifies the image slices for the shared embedding cache (volume, scale, box). */
  readonly imageKey: string;
  /** Raw intensities of slice z, C order [Y, X]. */
  image(z: number, signal?: AbortSignal): Promise<ArrayLike<number>>;
  /** Normalised SDF of slice z (positive inside), float32 C order [Y, X]; model runs it needs are for `client`. */
  sdf(z: number, signal?: AbortSignal, client?: string): Promise<Float32Array>;
}

export interface PointInput {
  /** Pixels of the slice (x fastest axis), not necessarily integers. */
  x: number;
  y: number;
  /** 1 positive, 0 negative (the Python predictor's labels). */
  label: 0 | 1;
}

export interface PromptInput {
  points?: PointInput[];
  /** [x0, y0, x1, y1] pixels, corners included (the predictor's box). */
  box?: [number, number, number, number];
  /** uint8 0/1 over the whole slice, C order [Y, X]. */
  mask?: Uint8Array;
  /** Replace this object's earlier prompts on this slice instead of adding to them. */
  clearOld?: boolean;
}

export type Direction = "forward" | "backward" | "both";

export interface PropagateOptions {
  startZ?: number;
  direction?: Direction;
  /** Slices per run, start included; undefined runs to the box's edge. */
  maxSlices?: number;
  /** Objects to propagate; undefined or empty: every prompted object. */
  objectIds?: bigint[];
  signal?: AbortSignal;
  /** Who the graph runs are for (the ONNX pool serves clients in turn). */
  client?: string;
}

/** One object's mask on one slice. */
export interface SliceMask {
  objectId: bigint;
  z: number;
  /** uint8 0/1, C order [Y, X] of the unpadded slice. */
  mask: Uint8Array;
  iou: number;
  /** Presence logit (> 0: the object is on this slice). */
  objectScore: number;
  /** Mask logits, float32 C order [Y, X], only with SessionOptions.keepLogits (automatic mode ranks objects by them). */
  logits?: Float32Array;
}

export interface SessionOptions {
  propagator: LoadedPropagator;
  slices: SliceProvider;
  embeddings: EmbeddingCache;
  /** Bytes of per-session state (outputs, memory, SDF slices) before ResourceExhausted. */
  maxBytes?: number;
  /** Keep each output's mask logits and return them with its SliceMask. */
  keepLogits?: boolean;
  /**
   * Read ahead (default true): a slice's image, SDF and memory entries are fetched side by side, and
   * propagation reads and encodes the next slice while this one decodes even with one ONNX worker.
   * false: one at a time, and the next slice ahead only with several workers (kept to measure).
   */
  readAhead?: boolean;
}

interface SliceOutput {
  /** Binary mask over the padded slice [Hp, Wp] (what the memory encoder sees). */
  mask: Uint8Array;
  iou: number;
  objectScore: number;
  objPtr: Float32Array;
  /** Padded mask logits [Hp, Wp], kept only with SessionOptions.keepLogits. */
  logits?: Float32Array;
  /** Memory encoder output [Dm, Hp/s, Wp/s], encoded when a later slice first needs it. */
  memory?: Float32Array;
}

interface SlicePrompts {
  points: PointInput[];
  box: [number, number, number, number] | undefined;
  mask: Uint8Array | undefined;
}

class ObjectTrack {
  readonly prompts = new Map<number, SlicePrompts>();
  readonly cond = new Map<number, SliceOutput>();
  readonly noncond = new Map<number, SliceOutput>();
  constructor(readonly id: bigint) {}
  output(z: number): SliceOutput | undefined {
    return this.cond.get(z) ?? this.noncond.get(z);
  }
}

interface BankEntry {
  z: number;
  isCond: boolean;
  out: SliceOutput;
}

const LISTENERS = 1000;
const MASK_PROMPT_LOGIT = 10; // |logit| of a user-given mask, input and output (propagator.json loop rules)
const LABEL_PAD = -1;
const LABEL_BOX_TL = 2;
const LABEL_BOX_BR = 3;

const f32 = (dims: number[], data: Float32Array): TensorData => ({ dtype: "float32", dims, data });

// exactOptionalPropertyTypes: absent, not undefined.
// Every chunk read in flight listens to the signal: a slice read ahead and one being decoded
// (16 chunks each at 256x256 in 64x64 chunks) pass Node's default of 10, a false leak warning.
function roomForReads(signal: AbortSignal | undefined): void {
  if (signal !== undefined && getMaxListeners(signal) < LISTENERS) setMaxListeners(LISTENERS, signal);
}

const runOptions = (signal: AbortSignal | undefined, client: string | undefined): RunOptions => {
  roomForReads(signal);
  return {
    ...(signal === undefined ? {} : { signal }),
    ...(client === undefined ? {} : { client }),
  };
};

function tensor(outputs: Record<string, TensorData>, name: string): Float32Array {
  const t = outputs[name];
  if (t === undefined || !(t.data instanceof Float32Array)) throw invalidArgument("model", `graph output ${name} is missing or not float32`);
  return t.data;
}

/** A small FIFO lock: session operations run one at a time, in arrival order. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async acquire(signal?: AbortSignal): Promise<() => void> {
    let release!: () => void;
    const prev = this.tail;
    this.tail = new Promise<void>((r) => (release = r));
    if (signal === undefined) {
      await prev;
    } else {
      let onAbort: (() => void) | undefined;
      try {
        await Promise.race([
          prev,
          new Promise<never>((_, reject) => {
            onAbort = () => reject(cancelled());
            if (signal.aborted) onAbort();
            else signal.addEventListener("abort", onAbort, { once: true });
          }),
        ]);
      } catch (e) {
        // Give our turn up only once the previous holder is done, so order is kept.
        void prev.then(release);
        throw e;
      } finally {
        if (onAbort) signal.removeEventListener("abort", onAbort);
      }
    }
    return release;
  }
}

export class PropagationSession {
  readonly shapeZyx: Vec3;
  /** Padded slice size [Hp, Wp]. */
  readonly paddedHw: [number, number];
  private readonly cfg: PropagatorConfig;
  private readonly objects = new Map<bigint, ObjectTrack>();
  private readonly sdfSlices = new Map<number, Float32Array>();
  /** SDF slices being read (a read-ahead and a decode may ask at once). */
  private readonly sdfReads = new Map<number, Promise<Float32Array>>();
  private readonly lock = new Mutex();
  private closed = false;
  /** Fires on close: cancels the session's speculative work (one listener per prefetch call in progress). */
  private readonly closing = new AbortController();
  private readonly maxBytes: number;

  constructor(private readonly options: SessionOptions) {
    this.cfg = options.propagator.config;
    this.shapeZyx = options.slices.shapeZyx;
    const [, y, x] = this.shapeZyx;
    const [minH, minW] = this.cfg.minHw;
    if (y < minH || x < minW) throw invalidArgument("box.shape", `slices must be at least ${minH} x ${minW} (y, x), got ${y} x ${x}`);
    const m = this.cfg.multipleOf;
    this.paddedHw = [Math.ceil(y / m) * m, Math.ceil(x / m) * m];
    this.maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    // Quick clicks can leave many prefetch calls in progress, each listening until it ends.
    setMaxListeners(LISTENERS, this.closing.signal);
  }

  /** User object ids in batch-index order. */
  objectIds(): bigint[] {
    return [...this.objects.keys()];
  }

  /** Bytes of state this session holds (outputs, memory encodings, cached SDF slices). */
  bytes(): number {
    let n = 0;
    for (const s of this.sdfSlices.values()) n += s.byteLength;
    for (const t of this.objects.values()) {
      for (const o of [...t.cond.values(), ...t.noncond.values()]) n += o.mask.byteLength + o.objPtr.byteLength + (o.memory?.byteLength ?? 0) + (o.logits?.byteLength ?? 0);
    }
    return n;
  }

  // ---- inputs -------------------------------------------------------------------------------------
  private checkOpen(): void {
    if (this.closed) throw failedPrecondition("the session is closed", "session_id");
  }

  private checkZ(z: number, field: string): void {
    if (!Number.isInteger(z) || z < 0 || z >= this.shapeZyx[0]) {
      throw invalidArgument(field, `expected an integer slice index in [0, ${this.shapeZyx[0]}), got ${z}`);
    }
  }

  private pad(src: ArrayLike<number>, value: number, map: (v: number) => number = (v) => v): Float32Array {
    const [, y, x] = this.shapeZyx;
    const [hp, wp] = this.paddedHw;
    const out = new Float32Array(hp * wp).fill(value);
    for (let r = 0; r < y; r++) {
      for (let c = 0; c < x; c++) out[r * wp + c] = map(src[r * x + c]!);
    }
    return out;
  }

  private featureKey(z: number): string {
    const { name, version } = this.options.propagator.config;
    return `${this.options.slices.imageKey}|${name}@${version}|${z}`;
  }

  private async encode(z: number, run: RunOptions, onRead?: () => void): Promise<Embedding> {
    const p = this.options.propagator;
    roomForReads(run.signal);
    const raw = await this.options.slices.image(z, run.signal);
    onRead?.();
    const { normMean, normStd } = this.cfg;
    // Padding is 0 after normalisation (the mean intensity).
    const image = this.pad(raw, 0, (v) => (v - normMean) / normStd);
    const [hp, wp] = this.paddedHw;
    return p.registry.run(p.graphs.image_encoder, { image: f32([1, 1, hp, wp], image) }, run);
  }

  private async features(z: number, run: RunOptions): Promise<Embedding> {
    const { signal } = run;
    const key = this.featureKey(z);
    const compute = () => this.encode(z, run);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.options.embeddings.get(key, compute);
      } catch (e) {
        // We joined another session's computation and its client cancelled: compute it ourselves.
        if (e instanceof SpatialSamError && e._tag === "Cancelled" && !signal?.aborted && attempt < 3) continue;
        throw e;
      }
    }
  }

  private async sdfSlice(z: number, run: RunOptions): Promise<Float32Array> {
    const s = this.sdfSlices.get(z);
    if (s !== undefined) return s;
    let reading = this.sdfReads.get(z);
    if (reading === undefined) {
      // Padding is -1: background.
      reading = this.options.slices.sdf(z, run.signal, run.client).then((v) => this.pad(v, -1));
      this.sdfReads.set(z, reading);
      const done = () => {
        if (this.sdfReads.get(z) === reading) this.sdfReads.delete(z);
      };
      reading.then((v) => {
        done();
        if (!this.closed) this.sdfSlices.set(z, v);
      }, done);
    }
    return reading;
  }

  /**
   * Speculatively encodes slices `zs` at the pool's background priority, so a later click or
   * propagation finds them embedded; with `sdf` also reads their SDF slices (only when that is a
   * read, not a model run). Slices go one after the other, each read before the next starts, so the
   * first is ready first and reads (on the main thread) do not pile up. Nothing waits for it; a
   * request for one of the slices overtakes it, and `signal` (or closing the session) cancels what
   * has not run yet. Slices outside the box or already embedded are skipped.
   */
  prefetch(zs: number[], options: { signal?: AbortSignal; client?: string; sdf?: boolean } = {}): void {
    if (this.closed) return;
    // One signal for this call, fired by closing the session or by the caller's signal; each slice
    // waiting for a worker and each chunk being read listens to it.
    const batch = new AbortController();
    const signal = batch.signal;
    setMaxListeners(LISTENERS, signal);
    const sources = [this.closing.signal, ...(options.signal === undefined ? [] : [options.signal])];
    const abort = () => batch.abort();
    for (const s of sources) s.addEventListener("abort", abort, { once: true });
    if (sources.some((s) => s.aborted)) batch.abort();
    const untie = () => {
      for (const s of sources) s.removeEventListener("abort", abort);
    };
    const client = options.client === undefined ? {} : { client: options.client };
    const computing: Promise<void>[] = [];
    const one = async (z: number) => {
      let read!: () => void;
      const wasRead = new Promise<void>((r) => (read = r));
      const started = this.options.embeddings.prefetch(
        this.featureKey(z),
        (sig, onStart) => this.encode(z, { signal: sig, background: true, onStart, ...client }, read),
        signal,
      );
      // Until its image is read (or the computation ended early: cancelled, overtaken).
      if (started !== undefined) {
        computing.push(started);
        await Promise.race([wasRead, started]);
      }
      if (options.sdf && !signal.aborted) await this.sdfSlice(z, { signal });
    };
    void (async () => {
      for (const z of zs) {
        if (signal.aborted) break;
        if (Number.isInteger(z) && z >= 0 && z < this.shapeZyx[0]) await one(z).catch(() => undefined);
      }
      // Encoder runs may still wait for a worker: closing must reach them until they end.
      await Promise.all(computing);
      untie();
    })();
  }

  private async memory(z: number, out: SliceOutput, run: RunOptions): Promise<Float32Array> {
    if (out.memory !== undefined) return out.memory;
    const p = this.options.propagator;
    const [hp, wp] = this.paddedHw;
    const inputs: Record<string, TensorData> = {
      feat: (await this.features(z, run)).feat!,
      mask: f32([1, 1, hp, wp], Float32Array.from(out.mask)),
    };
    if (this.cfg.memory === "sdf") inputs.sdf_slice = f32([1, 1, hp, wp], await this.sdfSlice(z, run));
    const res = await p.registry.run(p.graphs.memory_encoder, inputs, run);
    out.memory = tensor(res, "memory");
    return out.memory;
  }

  /** memory.select_memory: (spatial entries, pointer entries) of `track` for slice z. */
  private bank(track: ObjectTrack, z: number, direction: 1 | -1, withRecent: boolean): [BankEntry[], BankEntry[]] {
    const conds = [...track.cond.entries()]
      .filter(([zz]) => zz !== z)
      .sort((a, b) => Math.abs(a[0] - z) - Math.abs(b[0] - z) || a[0] - b[0])
      .slice(0, this.cfg.maxCond)
      .map(([zz, out]) => ({ z: zz, isCond: true, out }));
    const recent = (n: number) => {
      const r: BankEntry[] = [];
      if (!withRecent) return r;
      for (let i = 1; i <= n; i++) {
        const zz = z - direction * i;
        const out = track.noncond.get(zz);
        if (out !== undefined) r.push({ z: zz, isCond: false, out });
      }
      return r;
    };
    return [[...conds, ...recent(this.cfg.numRecent)], [...conds, ...recent(this.cfg.maxPtrs - 1)]];
  }

  /** One decoder call for one object (batch 1); empty banks get one padding entry (valid 0). */
  private async decode(
    z: number,
    [spatial, pointers]: [BankEntry[], BankEntry[]],
    coords: number[],
    labels: number[],
    maskInput: Float32Array | undefined,
    run: RunOptions,
  ): Promise<SliceOutput> {
    const p = this.options.propagator;
    const { dim, memDim, stride } = this.cfg;
    const [hp, wp] = this.paddedHw;
    const h = hp / stride;
    const w = wp / stride;
    const per = memDim * h * w;
    const n = Math.max(1, spatial.length);
    const np = Math.max(1, pointers.length);
    const mem = new Float32Array(n * per);
    const memDz = new Float32Array(n);
    const memCond = new Float32Array(n);
    const memValid = new Float32Array(n);
    const sdf = this.cfg.memory === "sdf";
    let feats: Embedding;
    let sdfSlice: Float32Array | undefined;
    if (this.options.readAhead ?? true) {
      // Image, SDF and memory entries side by side: the slice reads (main thread) overlap the
      // encoder runs (worker threads). The results are the same as one at a time.
      const [f, s, memories] = await Promise.all([
        this.features(z, run),
        sdf ? this.sdfSlice(z, run) : undefined,
        Promise.all(spatial.map((e) => this.memory(e.z, e.out, run))),
      ]);
      feats = f;
      sdfSlice = s;
      memories.forEach((m, j) => mem.set(m, j * per));
    } else {
      for (let j = 0; j < spatial.length; j++) mem.set(await this.memory(spatial[j]!.z, spatial[j]!.out, run), j * per);
      feats = await this.features(z, run);
      if (sdf) sdfSlice = await this.sdfSlice(z, run);
    }
    spatial.forEach((e, j) => {
      memDz[j] = e.z - z;
      memCond[j] = e.isCond ? 1 : 0;
      memValid[j] = 1;
    });
    const ptrs = new Float32Array(np * dim);
    const ptrDz = new Float32Array(np);
    const ptrValid = new Float32Array(np);
    pointers.forEach((e, j) => {
      ptrs.set(e.out.objPtr, j * dim);
      ptrDz[j] = e.z - z;
      ptrValid[j] = 1;
    });
    const k = labels.length;
    const inputs: Record<string, TensorData> = {
      feat: feats.feat!,
      skip8: feats.skip8!,
      skip4: feats.skip4!,
      mem_tokens: f32([n, memDim, h, w], mem),
      mem_dz: f32([n], memDz),
      mem_cond: f32([n], memCond),
      mem_valid: f32([n], memValid),
      obj_ptrs: f32([np, dim], ptrs),
      ptr_dz: f32([np], ptrDz),
      ptr_valid: f32([np], ptrValid),
      point_coords: f32([1, k, 2], Float32Array.from(coords)),
      point_labels: f32([1, k], Float32Array.from(labels)),
      mask_input: f32([1, 1, hp / 4, wp / 4], maskInput ?? new Float32Array((hp / 4) * (wp / 4))),
      has_mask_input: f32([1], Float32Array.of(maskInput === undefined ? 0 : 1)),
    };
    if (sdfSlice !== undefined) inputs.sdf_slice = f32([1, 1, hp, wp], sdfSlice);
    const res = await p.registry.run(p.graphs.memory_decoder, inputs, run);
    const logits = tensor(res, "mask_logits");
    const mask = new Uint8Array(logits.length);
    const t = this.cfg.maskThreshold;
    for (let i = 0; i < logits.length; i++) mask[i] = logits[i]! > t ? 1 : 0;
    const out: SliceOutput = { mask, iou: tensor(res, "iou")[0]!, objectScore: tensor(res, "object_score")[0]!, objPtr: tensor(res, "obj_ptr").slice() };
    if (this.options.keepLogits) out.logits = logits.slice();
    return out;
  }

  private sliceMask(track: ObjectTrack, z: number): SliceMask {
    const out = track.output(z);
    const [, y, x] = this.shapeZyx;
    const mask = new Uint8Array(y * x);
    if (out !== undefined) {
      const wp = this.paddedHw[1];
      for (let r = 0; r < y; r++) mask.set(out.mask.subarray(r * wp, r * wp + x), r * x);
    }
    const res: SliceMask = { objectId: track.id, z, mask, iou: out?.iou ?? 0, objectScore: out?.objectScore ?? this.cfg.noObjectLogit };
    if (out?.logits !== undefined) {
      const wp = this.paddedHw[1];
      const logits = new Float32Array(y * x);
      for (let r = 0; r < y; r++) logits.set(out.logits.subarray(r * wp, r * wp + x), r * x);
      res.logits = logits;
    }
    return res;
  }

  private checkBudget(): void {
    if (this.bytes() <= this.maxBytes) return;
    // SDF slices can be read again; outputs cannot be dropped without changing results.
    this.sdfSlices.clear();
    const n = this.bytes();
    if (n > this.maxBytes) {
      throw resourceExhausted(`the session holds ${n} bytes, more than its limit of ${this.maxBytes}; remove objects or reset it`, "session_id");
    }
  }

  private validatePrompt(prompt: PromptInput): void {
    const [, y, x] = this.shapeZyx;
    (prompt.points ?? []).forEach((pt, i) => {
      for (const [axis, v, hi] of [["x", pt.x, x], ["y", pt.y, y]] as const) {
        if (!Number.isFinite(v)) throw invalidArgument(`points[${i}].${axis}`, `must be a finite number, got ${v}`);
        if (v < 0 || v > hi - 1) throw invalidArgument(`points[${i}].${axis}`, `${v} lies outside the slice [0, ${hi - 1}]`);
      }
      if (pt.label !== 0 && pt.label !== 1) throw invalidArgument(`points[${i}].label`, `must be positive or negative, got ${String(pt.label)}`);
    });
    if (prompt.box !== undefined) {
      const [x0, y0, x1, y1] = prompt.box;
      if (!prompt.box.every(Number.isFinite)) throw invalidArgument("box", "contains NaN or infinite values");
      if (!(x0 >= 0 && x0 < x1 && x1 <= x - 1 && y0 >= 0 && y0 < y1 && y1 <= y - 1)) {
        throw invalidArgument("box", `expected x0 < x1, y0 < y1 inside the slice, got [${prompt.box.join(", ")}]`);
      }
    }
    if (prompt.mask !== undefined && prompt.mask.length !== y * x) throw invalidArgument("mask", `expected ${y} x ${x} values, got ${prompt.mask.length}`);
    if ((prompt.points ?? []).length === 0 && prompt.box === undefined && prompt.mask === undefined) {
      throw invalidArgument("points", "empty prompt (give points, a box or a mask)");
    }
  }

  // ---- lifecycle ----------------------------------------------------------------------------------
  /**
   * Adds prompts for `objectId` on slice z and segments that slice: clicks accumulate (unless
   * clearOld), a new box or mask replaces the old one, the slice becomes a prompted slice. Memory
   * for this step: the object's other prompted slices only. Returns the masks of every object with
   * an output on z, in batch-index order. Its graph runs are for `client` (see PropagateOptions).
   */
  async addPrompts(objectId: bigint, z: number, prompt: PromptInput, signal?: AbortSignal, client?: string): Promise<SliceMask[]> {
    const run = runOptions(signal, client);
    this.checkOpen();
    this.checkZ(z, "z");
    this.validatePrompt(prompt);
    const release = await this.lock.acquire(signal);
    try {
      this.checkOpen();
      const track = this.objects.get(objectId) ?? new ObjectTrack(objectId);
      const old = track.prompts.get(z);
      const p: SlicePrompts = old === undefined || prompt.clearOld ? { points: [], box: undefined, mask: undefined } : { ...old, points: [...old.points] };
      p.points.push(...(prompt.points ?? []));
      if (prompt.box !== undefined) p.box = prompt.box;
      if (prompt.mask !== undefined) p.mask = Uint8Array.from(prompt.mask, (v) => (v ? 1 : 0));

      // Point order: box corners first, then clicks, then one padding point when there is no box.
      const coords: number[] = [];
      const labels: number[] = [];
      if (p.box !== undefined) {
        coords.push(...p.box);
        labels.push(LABEL_BOX_TL, LABEL_BOX_BR);
      }
      for (const pt of p.points) {
        coords.push(pt.x, pt.y);
        labels.push(pt.label);
      }
      if (p.box === undefined) {
        coords.push(0, 0);
        labels.push(LABEL_PAD);
      }
      let maskInput: Float32Array | undefined;
      let padded: Float32Array | undefined;
      if (p.mask !== undefined) {
        padded = this.pad(p.mask, 0);
        maskInput = this.maskPrompt(padded);
      }
      const out = await this.decode(z, this.bank(track, z, 1, false), coords, labels, maskInput, run);
      if (padded !== undefined && p.points.length === 0 && p.box === undefined) {
        // A mask alone is the output (logits +-10); the decoder still supplies the object pointer.
        out.mask = Uint8Array.from(padded);
        out.objectScore = p.mask!.some((v) => v !== 0) ? MASK_PROMPT_LOGIT : -MASK_PROMPT_LOGIT;
      }
      // Only now, after every step that can fail, does the session change.
      this.objects.set(objectId, track);
      track.prompts.set(z, p);
      track.noncond.delete(z);
      track.cond.set(z, out);
      this.checkBudget();
      return [...this.objects.values()].filter((t) => t.output(z) !== undefined).map((t) => this.sliceMask(t, z));
    } finally {
      release();
    }
  }

  /** Dense prompt [Hp/4, Wp/4]: 4x4 average of the padded 0/1 mask, as logits 20 * avg - 10. */
  private maskPrompt(padded: Float32Array): Float32Array {
    const [hp, wp] = this.paddedHw;
    const h4 = hp / 4;
    const w4 = wp / 4;
    const out = new Float32Array(h4 * w4);
    for (let r = 0; r < h4; r++) {
      for (let c = 0; c < w4; c++) {
        let s = 0;
        for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) s += padded[(4 * r + i) * wp + 4 * c + j]!;
        out[r * w4 + c] = (s / 16) * (2 * MASK_PROMPT_LOGIT) - MASK_PROMPT_LOGIT;
      }
    }
    return out;
  }

  /**
   * Yields (z, masks of the propagated objects) slice by slice from startZ (included). startZ
   * defaults to the lowest prompted slice (forward, both) or the highest (backward); "both" runs
   * forward, then backward from startZ. Prompted slices keep their prompted output; every other
   * slice is recomputed from the bank and replaces earlier outputs there. Stops between slices
   * (and inside graph runs) when `signal` fires.
   */
  async *propagate(options: PropagateOptions = {}): AsyncGenerator<{ z: number; masks: SliceMask[] }> {
    this.checkOpen();
    const { signal } = options;
    const run = runOptions(signal, options.client);
    const direction = options.direction ?? "forward";
    if (direction !== "forward" && direction !== "backward" && direction !== "both") {
      throw invalidArgument("direction", `expected forward, backward or both, got ${String(direction)}`);
    }
    if (options.maxSlices !== undefined && (!Number.isInteger(options.maxSlices) || options.maxSlices < 1)) {
      throw invalidArgument("max_slices", `expected a positive integer, got ${options.maxSlices}`);
    }
    if (options.startZ !== undefined) this.checkZ(options.startZ, "start_z");
    const release = await this.lock.acquire(signal);
    try {
      this.checkOpen();
      const wanted = options.objectIds?.length ? options.objectIds : undefined;
      wanted?.forEach((id, i) => {
        if (!this.objects.has(id)) throw notFound(`object_ids[${i}]`, `no object ${id} in this session`);
      });
      const tracks = [...this.objects.values()].filter((t) => t.cond.size > 0 && (wanted === undefined || wanted.includes(t.id)));
      if (tracks.length === 0) throw failedPrecondition("no object has prompts; call AddPrompts first", "object_ids");
      const conds = tracks.flatMap((t) => [...t.cond.keys()]);
      const startZ = options.startZ ?? (direction === "backward" ? Math.max(...conds) : Math.min(...conds));
      const runs: (1 | -1)[] = direction === "both" ? [1, -1] : [direction === "forward" ? 1 : -1];
      const nz = this.shapeZyx[0];
      for (const d of runs) {
        let count = 0;
        for (let z = startZ; z >= 0 && z < nz; z += d) {
          if (options.maxSlices !== undefined && count >= options.maxSlices) break;
          count++;
          throwIfAborted(signal);
          this.checkOpen();
          // The next slice is read and encoded while this one decodes (with one worker the reads
          // still overlap the runs); with more than one ONNX worker the objects of a slice decode
          // side by side (their banks are independent).
          const parallel = this.options.propagator.registry.stats().ready > 1;
          const next = z + d;
          if ((parallel || (this.options.readAhead ?? true)) && next >= 0 && next < nz && (options.maxSlices === undefined || count < options.maxSlices)) {
            this.features(next, run).catch(() => undefined);
            if (this.cfg.memory === "sdf" && (this.options.readAhead ?? true)) this.sdfSlice(next, run).catch(() => undefined);
          }
          const todo = tracks.filter((t) => !t.cond.has(z));
          const decodeOne = (t: ObjectTrack) => this.decode(z, this.bank(t, z, d, true), [0, 0], [LABEL_PAD], undefined, run);
          const outs: SliceOutput[] = [];
          if (parallel) outs.push(...(await Promise.all(todo.map(decodeOne))));
          else for (const t of todo) outs.push(await decodeOne(t));
          todo.forEach((t, i) => t.noncond.set(z, outs[i]!));
          this.checkBudget();
          throwIfAborted(signal);
          yield { z, masks: tracks.map((t) => this.sliceMask(t, z)) };
        }
      }
    } finally {
      release();
    }
  }

  /** Forgets one object; the others keep their ids (their batch indices shift down). */
  async removeObject(objectId: bigint): Promise<bigint[]> {
    this.checkOpen();
    const release = await this.lock.acquire();
    try {
      if (!this.objects.delete(objectId)) throw notFound("object_id", `no object ${objectId} in this session (known: ${this.objectIds().join(", ") || "none"})`);
      return this.objectIds();
    } finally {
      release();
    }
  }

  /** Drops every object, prompt and output; image embeddings stay in the shared cache. */
  async reset(): Promise<void> {
    this.checkOpen();
    const release = await this.lock.acquire();
    try {
      this.objects.clear();
    } finally {
      release();
    }
  }

  /** Frees the session's state at once; a running propagation stops at its next slice. */
  close(): void {
    this.closed = true;
    this.closing.abort();
    this.objects.clear();
    this.sdfSlices.clear();
  }
}
