// Automatic segmentation of a box: SDF (given, or computed blockwise by the SdfEngine), seeds from
// its connected components (blockwise, ids global), one propagation per seed, and the uint64
// instance volume written chunk by chunk (precomputed compressed_segmentation or OME-Zarr), the SDF's
// foreground voxels that no propagated mask claims going to their component's seed (unless
// `propagatedOnly`).
// Mirrors models/spatialsam/predictor.py's segment_volume; state for resuming lives in the output
// store under `segment_work/` (the run's seeds, one file per propagated object), and an output
// chunk that exists is a finished block.
import { DATA_TYPES } from "#src/dtype.ts";
import { type IntensityWindow, intensityKey, modelImage, modelIntensity } from "#src/intensity.ts";
import { BlockGrid } from "#src/blocks.ts";
import { failedPrecondition, invalidArgument, throwIfAborted } from "#src/errors.ts";
import { validateBox } from "#src/geometry.ts";
import { chunkName } from "#src/volume/precomputed_info.ts";
import type { Box3, Store, Vec3, VolumeSource } from "#src/volume/types.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import { EmbeddingCache } from "#server/engine/propagation/embedding_cache.ts";
import type { LoadedPropagator } from "#server/engine/propagation/propagator.ts";
import { PropagationSession, type PromptInput, type SliceProvider } from "#server/engine/propagation/session.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { ZarrWriter } from "#server/volume/zarr_writer.ts";
import { lockOutput } from "./output_lock.ts";
import { findSeeds, type Seed, type SeedComponents, seedLabelsOfBlock } from "./seeds.ts";

/** Where the SDF comes from: a volume on the image level's grid, or the SdfEngine's cache. */
export type AutoSdfSource =
  | { kind: "volume"; volume: VolumeSource; scale: number; key: string }
  | { kind: "model"; engine: SdfEngine; model: string; openVolume: (url: string) => Promise<VolumeSource> };

export type OutputFormat = "precomputed" | "zarr2" | "zarr3";

export interface SegmentProgress {
  stage: "sdf" | "seeds" | "objects" | "write";
  /** Work units over all stages (SDF blocks, seed blocks, objects, output chunks); the total grows once the seeds are known. */
  blocksDone: number;
  blocksTotal: number;
  objectsFound: number;
}

export interface SegmentRequest {
  volume: VolumeSource;
  /** Identity of the volume (its URL), part of the run's fingerprint and embedding keys. */
  volumeKey: string;
  /** Raw values shown as black and white; required unless the volume is uint8 (see src/intensity.ts). */
  intensity?: IntensityWindow;
  box: Box3;
  scale: number;
  sdf: AutoSdfSource;
  propagator: LoadedPropagator;
  embeddings?: EmbeddingCache;
  /**
   * The output store (writable) and its format; `url` is reported as the result. With `lockPath`
   * the run holds that lock file for its whole length (one run per output; see output_lock.ts).
   */
  out: { store: Store; format: OutputFormat; url: string; lockPath?: string };
  /** Seed blocks and output chunks. Default [32, 128, 128]. */
  blockShapeZyx?: Vec3;
  /** sdf_seeds' min_voxels, segment_volume's crop and patience (the Python defaults). */
  minVoxels?: number;
  crop?: number;
  patience?: number;
  /** Propagate at most this many slices beyond the seed component's z-extent; default: no bound (as Python). */
  zMargin?: number;
  /**
   * Only the propagated masks (segment_volume's fill=False). By default a voxel inside the SDF that
   * no object claims goes to the object seeded in its SDF component, so the output keeps all of the
   * SDF's foreground (in components of at least minVoxels) and the masks decide instances and add
   * what they find beyond it.
   */
  propagatedOnly?: boolean;
  signal?: AbortSignal;
  /** Who the model runs are for: the ONNX pool and the SDF engine serve clients in turn. */
  client?: string;
  onProgress?: (p: SegmentProgress) => void;
  /** Bytes of object logits kept in memory while chunks are written. Default 256 MiB. */
  recordCacheBytes?: number;
  /** Called per object: `computed` false when its result was found from an earlier run. */
  onObject?: (id: number, computed: boolean) => void;
}

export interface SegmentResult {
  resultUrl: string;
  objects: number;
  objectsComputed: number;
  chunksWritten: number;
  chunksCached: number;
}

/** One propagated object: mask logits per box-local z inside its window (box-local [y0, x0, h, w]). */
interface ObjectRecord {
  id: number;
  window: [number, number, number, number];
  logits: Map<number, Float32Array>;
}

const WORK = "segment_work";
const objectKey = (id: number) => `${WORK}/objects/${id}.bin`;
const COMPONENTS_KEY = `${WORK}/components.bin`;

/** SeedComponents as a file: uint32 block count, uint32 provisional count, then both arrays (little-endian uint32). */
function encodeComponents(c: SeedComponents): Uint8Array {
  const out = new Uint32Array(2 + c.blockBase.length + c.seedOfProv.length);
  out[0] = c.blockBase.length;
  out[1] = c.seedOfProv.length;
  out.set(c.blockBase, 2);
  out.set(c.seedOfProv, 2 + c.blockBase.length);
  return new Uint8Array(out.buffer);
}

function decodeComponents(bytes: Uint8Array, blocks: number): SeedComponents {
  const words = bytes.length >= 8 && bytes.length % 4 === 0 ? new Uint32Array(bytes.slice().buffer) : undefined;
  if (words === undefined || words[0] !== blocks || words.length !== 2 + words[0] + words[1]!) {
    throw failedPrecondition(`${COMPONENTS_KEY}: unreadable (${bytes.length} bytes for ${blocks} blocks); delete ${WORK}/ to start over`, "out");
  }
  return { blockBase: words.subarray(2, 2 + blocks), seedOfProv: words.subarray(2 + blocks) };
}

/** Where an object's logits lie (box-local), kept for every object while its logits stay on disk. */
interface ObjectExtent {
  id: number;
  window: [number, number, number, number];
  /** Slices with logits, [z0, z1]; z0 > z1 when none. */
  z0: number;
  z1: number;
}

function extentOf(r: ObjectRecord): ObjectExtent {
  const zs = [...r.logits.keys()];
  return { id: r.id, window: r.window, z0: zs.length ? Math.min(...zs) : 1, z1: zs.length ? Math.max(...zs) : 0 };
}

/** Object records read back from the output store, least recently used dropped beyond a byte bound. */
class RecordCache {
  private readonly entries = new Map<number, { record: ObjectRecord; bytes: number }>();
  private bytes = 0;
  constructor(
    private readonly store: Store,
    private readonly maxBytes: number,
    private readonly opts: { signal?: AbortSignal },
  ) {}

  async get(id: number): Promise<ObjectRecord> {
    const hit = this.entries.get(id);
    if (hit !== undefined) {
      this.entries.delete(id);
      this.entries.set(id, hit);
      return hit.record;
    }
    const key = objectKey(id);
    const data = await this.store.get(key, this.opts);
    if (data === undefined) throw failedPrecondition(`${key} disappeared during the run`, "out");
    const record = decodeRecord(data, key);
    this.entries.set(id, { record, bytes: data.length });
    this.bytes += data.length;
    for (const [k, v] of this.entries) {
      if (this.bytes <= this.maxBytes || k === id) break;
      this.entries.delete(k);
      this.bytes -= v.bytes;
    }
    return record;
  }
}

/** Python's round(): halves to even. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** predictor._crop_window on one axis: at least `size` (and the extent + size/2, in strides), clipped. */
function cropAxis(center: number, extent: number, n: number, size: number, stride: number): [number, number] {
  const w = Math.min(n, Math.max(size, Math.ceil((extent + Math.floor(size / 2)) / stride) * stride));
  const lo = Math.max(0, Math.min(roundHalfEven(center - w / 2), n - w));
  return [lo, w];
}

/** predictor._seed_prompt: the window around the seed's box and the prompt in window pixels. */
export function seedPrompt(seed: Seed, shapeYx: [number, number], crop: number, stride: number): { window: [number, number, number, number]; prompt: PromptInput } {
  const [x0, y0, x1, y1] = seed.box;
  const [oy, h] = cropAxis((y0 + y1) / 2, y1 - y0 + 1, shapeYx[0], crop, stride);
  const [ox, w] = cropAxis((x0 + x1) / 2, x1 - x0 + 1, shapeYx[1], crop, stride);
  const clip = (v: number, hi: number) => Math.min(Math.max(v, 0), hi);
  const b: [number, number, number, number] = [clip(x0 - ox, w - 1), clip(y0 - oy, h - 1), clip(x1 - ox, w - 1), clip(y1 - oy, h - 1)];
  const prompt: PromptInput = { points: [{ x: clip(seed.x - ox, w - 1), y: clip(seed.y - oy, h - 1), label: 1 }] };
  if (b[2] > b[0] && b[3] > b[1]) prompt.box = b;
  return { window: [oy, ox, h, w], prompt };
}

function encodeRecord(r: ObjectRecord): Uint8Array {
  const zs = [...r.logits.keys()].sort((a, b) => a - b);
  // The header is padded to a multiple of 4 bytes so the float32 slices that follow are aligned.
  const json = JSON.stringify({ id: r.id, window: r.window, zs });
  const header = new TextEncoder().encode(json.padEnd(Math.ceil((json.length + 4) / 4) * 4 - 4, " "));
  const n = r.window[2] * r.window[3] * 4;
  const out = new Uint8Array(4 + header.length + zs.length * n);
  new DataView(out.buffer).setUint32(0, header.length, true);
  out.set(header, 4);
  zs.forEach((z, i) => out.set(new Uint8Array(r.logits.get(z)!.buffer), 4 + header.length + i * n));
  return out;
}

function decodeRecord(bytes: Uint8Array, key: string): ObjectRecord {
  try {
    const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
    const h = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + len))) as { id: number; window: [number, number, number, number]; zs: number[] };
    const n = h.window[2] * h.window[3] * 4;
    if (bytes.length !== 4 + len + h.zs.length * n) throw new Error("length does not match its header");
    const logits = new Map<number, Float32Array>();
    h.zs.forEach((z, i) => logits.set(z, new Float32Array(bytes.slice(4 + len + i * n, 4 + len + (i + 1) * n).buffer)));
    return { id: h.id, window: h.window, logits };
  } catch (e) {
    throw failedPrecondition(`${key}: unreadable object record (${(e as Error).message}); delete ${WORK}/ to start over`, "out");
  }
}

function toFloat32(a: ArrayLike<number>): Float32Array {
  return a instanceof Float32Array ? a : Float32Array.from(a);
}

/** Checks the request's box and scale; errors name the field. */
export function checkSegmentBox(volume: VolumeSource, box: Box3, scale: number): void {
  const level = volume.metadata.scales[scale];
  if (!Number.isInteger(scale) || level === undefined) throw invalidArgument("scale", `volume has ${volume.metadata.scales.length} scales; ${scale} does not exist`);
  validateBox(box, level.shapeZyx, level.offsetZyx, Number.MAX_SAFE_INTEGER);
}

export async function segmentVolume(req: SegmentRequest): Promise<SegmentResult> {
  const { volume, box, scale } = req;
  checkSegmentBox(volume, box, scale);
  if (DATA_TYPES[volume.metadata.dtype].isBigInt) throw invalidArgument("volume", "automatic segmentation needs image intensities, not a 64-bit label volume");
  modelIntensity(volume.metadata.dtype, req.intensity); // a missing or bad window fails before any work
  const blockShape = req.blockShapeZyx ?? [32, 128, 128];
  blockShape.forEach((s, d) => {
    if (!Number.isInteger(s) || s < 1) throw invalidArgument(`block_shape[${d}]`, `must be a positive integer, got ${s}`);
  });
  const minVoxels = req.minVoxels ?? 64;
  const crop = req.crop ?? 128;
  const patience = req.patience ?? 3;
  if (!Number.isInteger(patience) || patience < 1) throw invalidArgument("patience", `must be a positive integer, got ${patience}`);
  const { store } = req.out;
  if (store.put === undefined) throw invalidArgument("out", `${store.url} is read-only`);
  const put = store.put.bind(store);
  const progress: SegmentProgress = { stage: "sdf", blocksDone: 0, blocksTotal: 0, objectsFound: 0 };
  const report = () => req.onProgress?.({ ...progress });
  const unlock = req.out.lockPath === undefined ? undefined : await lockOutput(req.out.lockPath, req.out.url, "out", req.signal);
  try {
    return await run(req, { blockShape, minVoxels, crop, patience, put, progress, report });
  } finally {
    await unlock?.();
  }
}

interface RunSettings {
  blockShape: Vec3;
  minVoxels: number;
  crop: number;
  patience: number;
  put: NonNullable<Store["put"]>;
  progress: SegmentProgress;
  report: () => void;
}

/** The stages of segmentVolume, on a validated request (and, for a local output, under its lock). */
async function run(req: SegmentRequest, { blockShape, minVoxels, crop, patience, put, progress, report }: RunSettings): Promise<SegmentResult> {
  const { volume, box, scale, signal, propagator } = req;
  const { store, format } = req.out;
  const opts = signal ? { signal } : {};

  // (a) The SDF over the box.
  let sdf: VolumeSource;
  let sdfScale: number;
  let sdfKey: string;
  let closeSdf = false;
  if (req.sdf.kind === "volume") {
    sdf = req.sdf.volume;
    sdfScale = req.sdf.scale;
    sdfKey = req.sdf.key;
    checkSegmentBox(sdf, box, sdfScale);
  } else {
    let sdfTotal = 0;
    const r = await req.sdf.engine.compute({
      volume,
      volumeKey: req.volumeKey,
      ...(req.intensity === undefined ? {} : { intensity: req.intensity }),
      box,
      scale,
      model: req.sdf.model,
      ...opts,
      ...(req.client === undefined ? {} : { client: req.client }),
      onProgress: (p) => {
        progress.blocksTotal += p.blocksTotal - sdfTotal;
        sdfTotal = p.blocksTotal;
        progress.blocksDone = p.blocksDone;
        report();
      },
    });
    sdf = await req.sdf.openVolume(r.resultUrl);
    sdfScale = 0;
    sdfKey = r.resultUrl;
    closeSdf = true;
  }
  try {
    // (b) Seeds, or those of the interrupted run this one resumes.
    const fingerprint = {
      volume: req.volumeKey,
      ...(req.intensity === undefined ? {} : { intensity: req.intensity }),
      sdf: sdfKey,
      scale,
      box,
      propagator: `${propagator.config.name}@${propagator.config.version}`,
      minVoxels,
      crop,
      patience,
      zMargin: req.zMargin ?? null,
      fill: req.propagatedOnly !== true,
      blockShapeZyx: blockShape,
      format,
    };
    const runKey = `${WORK}/run.json`;
    let seeds: Seed[] | undefined;
    let components: SeedComponents | undefined;
    const previous = await store.get(runKey, opts);
    if (previous !== undefined) {
      const run = JSON.parse(new TextDecoder().decode(previous)) as { fingerprint: unknown; seeds: Seed[] };
      if (JSON.stringify(run.fingerprint) !== JSON.stringify(fingerprint)) {
        throw failedPrecondition(`${req.out.url} holds another segmentation run (different inputs or settings); choose another output or delete it`, "out");
      }
      seeds = run.seeds;
    }
    const outGrid = new BlockGrid(box, blockShape, [0, 0, 0]);
    const outBlocks = [...outGrid.blocksIntersecting(box)];
    if (seeds === undefined) {
      progress.stage = "seeds";
      progress.blocksTotal += outBlocks.length;
      const before = progress.blocksDone;
      const found = await findSeeds({ sdf, scale: sdfScale, box, blockShapeZyx: blockShape, minVoxels, ...opts, onBlock: (d) => ((progress.blocksDone = before + d), report()) });
      ({ seeds, components } = found);
      // run.json last: its presence says the seed stage is complete.
      await put(COMPONENTS_KEY, encodeComponents(found.components));
      await put(runKey, new TextEncoder().encode(JSON.stringify({ fingerprint, seeds })));
    } else {
      if (fingerprint.fill) {
        const bytes = await store.get(COMPONENTS_KEY, opts);
        if (bytes === undefined) throw failedPrecondition(`${COMPONENTS_KEY} is missing; delete ${WORK}/ to start over`, "out");
        components = decodeComponents(bytes, outBlocks.length);
      }
      progress.blocksTotal += outBlocks.length;
      progress.blocksDone += outBlocks.length;
    }
    progress.objectsFound = seeds.length;
    progress.stage = "objects";
    progress.blocksTotal += seeds.length + outBlocks.length;
    report();

    // (c) One propagation per seed, each in its own crop window, each result written as a file.
    // Objects run side by side when the propagator has several workers: the result does not depend
    // on their order, as voxels are assigned only when the chunks are written.
    const embeddings = req.embeddings ?? new EmbeddingCache(256 << 20);
    const [, Y, X] = box.shapeZyx;
    const extents: ObjectExtent[] = new Array<ObjectExtent>(seeds.length);
    let objectsComputed = 0;
    let next = 0;
    let stop = false;
    const worker = async () => {
      while (!stop && next < seeds.length) {
        const i = next++;
        throwIfAborted(signal);
        const id = i + 1;
        const key = objectKey(id);
        const cached = await store.get(key, opts);
        let r: ObjectRecord;
        if (cached !== undefined) {
          r = decodeRecord(cached, key);
          req.onObject?.(id, false);
        } else {
          r = await propagateSeed(req, seeds[i]!, id, [Y, X], crop, patience, sdf, sdfScale, embeddings);
          await put(key, encodeRecord(r));
          objectsComputed++;
          req.onObject?.(id, true);
        }
        extents[i] = extentOf(r);
        progress.blocksDone++;
        report();
      }
    };
    const settled = await Promise.allSettled(
      Array.from({ length: Math.max(1, Math.min(seeds.length, propagator.registry.stats().ready)) }, () =>
        worker().catch((e: unknown) => {
          stop = true;
          throw e;
        }),
      ),
    );
    for (const s of settled) if (s.status === "rejected") throw s.reason;
    const records = new RecordCache(store, req.recordCacheBytes ?? 256 << 20, opts);

    // (d) The instance volume, chunk by chunk; an existing chunk is a finished block.
    progress.stage = "write";
    const level = volume.metadata.scales[scale]!;
    const xyz = (v: Vec3): Vec3 => [v[2], v[1], v[0]];
    let chunkKey: (index: Vec3) => string;
    let writeChunk: (index: Vec3, data: BigUint64Array) => Promise<void>;
    if (format === "precomputed") {
      const writer = await PrecomputedWriter.create(store, {
        type: "segmentation",
        dataType: "uint64",
        numChannels: 1,
        scales: [
          {
            key: "s0",
            sizeXyz: xyz(box.shapeZyx),
            resolutionXyz: xyz(level.voxelSizeNm),
            voxelOffsetXyz: xyz(box.offsetZyx),
            chunkSizeXyz: xyz(blockShape),
            encoding: "compressed_segmentation",
            blockSizeXyz: [8, 8, 8],
          },
        ],
      });
      const scaleInfo = writer.info.scales[0]!;
      chunkKey = (index) => `${scaleInfo.key}/${chunkName(scaleInfo, xyz(index))}`;
      writeChunk = (index, data) => writer.writeChunk(0, index, data);
    } else {
      const writer = await ZarrWriter.create(store, {
        zarrFormat: format === "zarr2" ? 2 : 3,
        dtype: "uint64",
        levels: [{ shapeZyx: box.shapeZyx, chunkShapeZyx: blockShape, voxelSizeNm: level.voxelSizeNm, offsetZyx: box.offsetZyx }],
        name: "mitochondria",
      });
      chunkKey = (index) => writer.chunkKey(0, index);
      writeChunk = (index, data) => writer.writeChunk(0, index, data);
    }
    let chunksWritten = 0;
    let chunksCached = 0;
    for (const [k, block] of outBlocks.entries()) {
      throwIfAborted(signal);
      if ((await store.get(chunkKey(block.index), opts)) !== undefined) {
        chunksCached++;
      } else {
        const labels = await paint(block.writeBox, box, extents, records);
        if (fingerprint.fill) {
          const sdfBlock = (await sdf.read(block.writeBox, sdfScale, opts)) as ArrayLike<number>;
          const bySeed = seedLabelsOfBlock(sdfBlock, block.writeBox.shapeZyx, k, components!);
          for (let i = 0; i < labels.length; i++) if (labels[i] === 0n && bySeed[i] !== 0) labels[i] = BigInt(bySeed[i]!);
        }
        await writeChunk(block.index, labels);
        chunksWritten++;
      }
      progress.blocksDone++;
      report();
    }
    return { resultUrl: req.out.url, objects: seeds.length, objectsComputed, chunksWritten, chunksCached };
  } finally {
    if (closeSdf) await sdf.close();
  }
}

/**
 * Labels of one output block as segment_volume assigns them: each voxel goes to the object with the
 * highest logit among those > 0 (ties: the earlier seed).
 */
async function paint(writeBox: Box3, box: Box3, extents: ObjectExtent[], records: RecordCache): Promise<BigUint64Array> {
  const [nz, ny, nx] = writeBox.shapeZyx;
  const [bz, by, bx] = [0, 1, 2].map((d) => writeBox.offsetZyx[d]! - box.offsetZyx[d]!) as Vec3;
  const out = new BigUint64Array(nz * ny * nx);
  const best = new Float32Array(out.length);
  for (const e of extents) {
    const [wy, wx, h, w] = e.window;
    const y0 = Math.max(by, wy);
    const y1 = Math.min(by + ny, wy + h);
    const x0 = Math.max(bx, wx);
    const x1 = Math.min(bx + nx, wx + w);
    if (y0 >= y1 || x0 >= x1 || e.z1 < bz || e.z0 >= bz + nz) continue;
    const r = await records.get(e.id);
    const label = BigInt(r.id);
    for (const [z, lg] of r.logits) {
      if (z < bz || z >= bz + nz) continue;
      for (let y = y0; y < y1; y++) {
        const src = (y - wy) * w - wx;
        const dst = ((z - bz) * ny + (y - by)) * nx - bx;
        for (let x = x0; x < x1; x++) {
          const v = lg[src + x]!;
          if (v > best[dst + x]!) {
            best[dst + x] = v;
            out[dst + x] = label;
          }
        }
      }
    }
  }
  return out;
}

/** predictor._propagate_object: prompt the seed's slice, then forward and backward with `patience`. */
async function propagateSeed(
  req: SegmentRequest,
  seed: Seed,
  id: number,
  shapeYx: [number, number],
  crop: number,
  patience: number,
  sdf: VolumeSource,
  sdfScale: number,
  embeddings: EmbeddingCache,
): Promise<ObjectRecord> {
  const { box, volume, scale, signal, propagator } = req;
  const { window, prompt } = seedPrompt(seed, shapeYx, crop, propagator.config.stride);
  const toModel = modelIntensity(volume.metadata.dtype, req.intensity);
  const [wy, wx, h, w] = window;
  const sliceBox = (z: number): Box3 => ({
    offsetZyx: [box.offsetZyx[0] + z, box.offsetZyx[1] + wy, box.offsetZyx[2] + wx],
    shapeZyx: [1, h, w],
  });
  const slices: SliceProvider = {
    shapeZyx: [box.shapeZyx[0], h, w],
    imageKey: `${req.volumeKey}${intensityKey(req.intensity)}|${scale}|${sliceBox(0).offsetZyx.join(",")}|${box.shapeZyx[0]},${h},${w}`,
    image: async (z, s) => modelImage(await volume.read(sliceBox(z), scale, s ? { signal: s } : {}), toModel),
    sdf: async (z, s) => toFloat32((await sdf.read(sliceBox(z), sdfScale, s ? { signal: s } : {})) as ArrayLike<number>),
  };
  const session = new PropagationSession({ propagator, slices, embeddings, keepLogits: true });
  const logits = new Map<number, Float32Array>();
  // Only logits > 0 can label a voxel; slices without any are not kept.
  const keep = (z: number, lg: Float32Array) => {
    if (lg.some((v) => v > 0)) logits.set(z, lg);
    else logits.delete(z);
  };
  try {
    await session.addPrompts(1n, seed.z, prompt, signal, req.client);
    for (const direction of ["forward", "backward"] as const) {
      let maxSlices: number | undefined;
      if (req.zMargin !== undefined) {
        maxSlices = Math.max(1, direction === "forward" ? seed.zRange[1] + req.zMargin - seed.z + 1 : seed.z - (seed.zRange[0] - req.zMargin) + 1);
      }
      let misses = 0;
      const run = { ...(signal ? { signal } : {}), ...(req.client === undefined ? {} : { client: req.client }) };
      for await (const { z, masks: out } of session.propagate({ startZ: seed.z, direction, ...(maxSlices === undefined ? {} : { maxSlices }), ...run })) {
        const m = out[0]!.mask;
        keep(z, out[0]!.logits!);
        misses = m.some((v) => v !== 0) ? 0 : misses + 1;
        if (misses >= patience) break;
      }
    }
  } finally {
    session.close();
  }
  return { id, window, logits };
}
