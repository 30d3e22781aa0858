// N5 driver (n5://): a dataset (attributes.json with dataType/dimensions/blockSize/compression), or
// a multiscale group of s0, s1, ... datasets with Janelia/Neuroglancer attributes (scales or
// downsamplingFactors, pixelResolution or resolution). N5 lists axes x-first; we reverse to zyx.

import { DATA_TYPES, isDataType, viewBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, isSpatialSamError, notFound, throwIfAborted } from "#src/errors.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, ScaleLevel, Store, Vec3, VolumeMetadata } from "#src/volume/types.ts";
import { checkedBlosc, gunzipBytes, inflateBytes } from "./codecs.ts";
import { registerFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";
import { UNIT_TO_NM } from "./zarr.ts";

type Decompress = (bytes: Uint8Array) => Promise<Uint8Array>;

interface Dataset {
  key: string;
  dtype: DataType;
  shapeZyx: Vec3;
  blockZyx: Vec3;
  decompress: Decompress;
}

async function readAttributes(store: Store, path: string): Promise<{ file: string; attrs: Record<string, unknown> } | undefined> {
  const key = path === "" ? "attributes.json" : `${path}/attributes.json`;
  const file = `${store.url.replace(/\/+$/, "")}/${key}`;
  const bytes = await store.get(key);
  if (bytes === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw invalidArgument(file, `invalid JSON: ${(e as Error).message}`, e);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw invalidArgument(file, "expected a JSON object");
  return { file, attrs: v as Record<string, unknown> };
}

function ints3(v: unknown, field: string, min: number): Vec3 {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= min)) {
    throw invalidArgument(field, `expected 3 integers >= ${min} (x, y, z), got ${JSON.stringify(v)}`);
  }
  return [v[2], v[1], v[0]] as Vec3;
}

function nums3(v: unknown, field: string): Vec3 {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isFinite(x) && x > 0)) {
    throw invalidArgument(field, `expected 3 positive numbers (x, y, z), got ${JSON.stringify(v)}`);
  }
  return [v[2], v[1], v[0]] as Vec3;
}

async function decompressor(compression: unknown, field: string): Promise<Decompress> {
  // N5 before 2.0 wrote "compressionType": "gzip" instead of a compression object.
  const c = (typeof compression === "string" ? { type: compression } : compression) as { type?: unknown; useZlib?: unknown } | undefined;
  const type = c?.type ?? "raw";
  switch (type) {
    case "raw":
      return async (b) => b;
    case "gzip":
      return c?.useZlib === true ? inflateBytes : gunzipBytes;
    case "blosc": {
      const codec = await checkedBlosc();
      return async (b) => codec.decode(b);
    }
    case "zstd": {
      const Zstd = (await import("numcodecs/zstd")).default;
      const codec = Zstd.fromConfig({ id: "zstd" });
      return async (b) => codec.decode(b);
    }
    default:
      throw invalidArgument(field, `unknown or unsupported N5 compression ${JSON.stringify(type)} (supported: raw, gzip, blosc, zstd)`);
  }
}

async function openDataset(store: Store, key: string, file: string, attrs: Record<string, unknown>): Promise<Dataset> {
  const dtype = attrs.dataType;
  if (!isDataType(dtype)) throw invalidArgument(`${file}: dataType`, `unsupported data type ${JSON.stringify(dtype)}`);
  const shapeZyx = ints3(attrs.dimensions, `${file}: dimensions`, 0);
  const blockZyx = ints3(attrs.blockSize, `${file}: blockSize`, 1);
  const compression = attrs.compression ?? attrs.compressionType;
  return { key, dtype, shapeZyx, blockZyx, decompress: await decompressor(compression, `${file}: compression`) };
}

/** Big-endian element bytes to a native (little-endian) typed array, in place when aligned. */
function fromBigEndian(dtype: DataType, bytes: Uint8Array): TypedArray {
  const size = DATA_TYPES[dtype].bytes;
  const copy = new Uint8Array(bytes);
  if (size > 1) {
    for (let i = 0; i < copy.length; i += size) {
      for (let a = i, b = i + size - 1; a < b; a++, b--) {
        const t = copy[a]!;
        copy[a] = copy[b]!;
        copy[b] = t;
      }
    }
  }
  return viewBytes(dtype, copy);
}

/** Decodes one N5 block: header (mode, ndim, dims; count in varlength mode) then compressed big-endian data. */
export async function decodeN5Block(bytes: Uint8Array, ds: Dataset, where: string): Promise<DecodedChunk> {
  if (bytes.length < 4) throw dataCorruption(where, `block of ${bytes.length} bytes is shorter than its header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const mode = view.getUint16(0);
  const ndim = view.getUint16(2);
  if (mode !== 0 && mode !== 1) throw dataCorruption(where, `unsupported block mode ${mode} (0 default, 1 varlength)`);
  if (ndim !== 3) throw dataCorruption(where, `block header says ${ndim} dimensions, the dataset has 3`);
  let off = 4;
  const dimsXyz: number[] = [];
  for (let i = 0; i < ndim; i++) {
    if (off + 4 > bytes.length) throw dataCorruption(where, "truncated block header");
    dimsXyz.push(view.getUint32(off));
    off += 4;
  }
  const shapeZyx = [dimsXyz[2]!, dimsXyz[1]!, dimsXyz[0]!] as Vec3;
  if (shapeZyx.some((s, d) => s > ds.blockZyx[d]!)) {
    throw dataCorruption(where, `block dimensions [${dimsXyz.join(", ")}] exceed blockSize [${[...ds.blockZyx].reverse().join(", ")}]`);
  }
  let count = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
  if (mode === 1) {
    if (off + 4 > bytes.length) throw dataCorruption(where, "truncated block header");
    count = view.getUint32(off);
    off += 4;
  }
  let raw: Uint8Array;
  try {
    raw = await ds.decompress(bytes.subarray(off));
  } catch (e) {
    throw dataCorruption(where, `cannot decompress: ${(e as Error).message}`, e);
  }
  const need = count * DATA_TYPES[ds.dtype].bytes;
  if (raw.length < need) throw dataCorruption(where, `block holds ${raw.length} bytes, expected ${need}`);
  if (mode === 1 && count !== shapeZyx[0] * shapeZyx[1] * shapeZyx[2]) {
    throw dataCorruption(where, `varlength block of ${count} elements does not fill its ${shapeZyx.join("x")} shape`);
  }
  return { data: fromBigEndian(ds.dtype, raw.subarray(0, need)), shapeZyx };
}

class N5ChunkSource implements ChunkSource {
  readonly metadata: VolumeMetadata;
  readonly cacheKey: string;
  readonly #store: Store;
  readonly #datasets: Dataset[];

  constructor(store: Store, metadata: VolumeMetadata, datasets: Dataset[]) {
    this.#store = store;
    this.metadata = metadata;
    this.cacheKey = `n5://${store.url}`;
    this.#datasets = datasets;
  }

  async readChunk(scale: number, chunkIndexZyx: Vec3, options: ReadOptions = {}): Promise<DecodedChunk | undefined> {
    const ds = this.#datasets[scale]!;
    // Block paths are in N5 (x, y, z) order.
    const key = [ds.key, chunkIndexZyx[2], chunkIndexZyx[1], chunkIndexZyx[0]].filter((p) => p !== "").join("/");
    const bytes = await this.#store.get(key, options.signal === undefined ? {} : { signal: options.signal });
    throwIfAborted(options.signal);
    if (bytes === undefined) return undefined;
    try {
      return await decodeN5Block(bytes, ds, `${this.#store.url.replace(/\/+$/, "")}/${key}`);
    } catch (e) {
      if (isSpatialSamError(e)) throw e;
      throw dataCorruption(key, (e as Error).message, e);
    }
  }
}

function unitFactor(unit: unknown, field: string): number {
  if (unit === undefined) return 1;
  const f = typeof unit === "string" ? UNIT_TO_NM[unit.toLowerCase()] : undefined;
  if (f === undefined) throw invalidArgument(field, `unknown unit ${JSON.stringify(unit)}`);
  return f;
}

/** Voxel size (nm, zyx) from `pixelResolution: {dimensions, unit}` or `resolution`, if either is present. */
function resolutionOf(attrs: Record<string, unknown>, file: string): Vec3 | undefined {
  const pr = attrs.pixelResolution as { dimensions?: unknown; unit?: unknown } | undefined;
  if (pr !== undefined) {
    const f = unitFactor(pr.unit, `${file}: pixelResolution.unit`);
    return nums3(pr.dimensions, `${file}: pixelResolution.dimensions`).map((v) => v * f) as Vec3;
  }
  if (attrs.resolution !== undefined) {
    const f = unitFactor(attrs.units === undefined ? undefined : (attrs.units as unknown[])[0], `${file}: units`);
    return nums3(attrs.resolution, `${file}: resolution`).map((v) => v * f) as Vec3;
  }
  return undefined;
}

/** Opens `n5://<store>`: a dataset, or a multiscale group of s0, s1, ... datasets. */
export async function openN5(store: Store, ctx: FormatContext): Promise<ChunkSource> {
  const top = await readAttributes(store, "");
  if (top === undefined) throw notFound(ctx.storeUrl, "no N5 attributes.json here");
  const datasets: Dataset[] = [];
  const scales: ScaleLevel[] = [];
  if (top.attrs.dataType !== undefined || top.attrs.dimensions !== undefined) {
    const ds = await openDataset(store, "", top.file, top.attrs);
    datasets.push(ds);
    const res = resolutionOf(top.attrs, top.file) ?? [1, 1, 1];
    scales.push({ index: 0, key: "", shapeZyx: ds.shapeZyx, chunkShapeZyx: ds.blockZyx, voxelSizeNm: res, offsetZyx: [0, 0, 0] });
  } else {
    const base = resolutionOf(top.attrs, top.file) ?? [1, 1, 1];
    const groupFactors = top.attrs.scales ?? top.attrs.downsamplingFactors;
    if (groupFactors !== undefined && !Array.isArray(groupFactors)) throw invalidArgument(`${top.file}: scales`, "expected a list of [x, y, z] factors");
    for (let i = 0; ; i++) {
      const key = `s${i}`;
      const a = await readAttributes(store, key);
      if (a === undefined) break;
      const ds = await openDataset(store, key, a.file, a.attrs);
      const own = a.attrs.downsamplingFactors;
      const factors =
        own !== undefined
          ? nums3(own, `${a.file}: downsamplingFactors`)
          : Array.isArray(groupFactors) && groupFactors[i] !== undefined
            ? nums3(groupFactors[i], `${top.file}: scales[${i}]`)
            : i === 0
              ? ([1, 1, 1] as Vec3)
              : undefined;
      if (factors === undefined) throw invalidArgument(`${a.file}: downsamplingFactors`, `level ${key} has no downsampling factors (neither in its attributes nor the group's scales)`);
      const ownRes = resolutionOf(a.attrs, a.file);
      // A level's own pixelResolution is already in its voxels; the group's is level 0's.
      const voxelSizeNm = ownRes ?? (base.map((b, d) => b * factors[d]!) as Vec3);
      datasets.push(ds);
      scales.push({ index: i, key, shapeZyx: ds.shapeZyx, chunkShapeZyx: ds.blockZyx, voxelSizeNm, offsetZyx: [0, 0, 0] });
    }
    if (datasets.length === 0) throw notFound(ctx.storeUrl, "an N5 group with neither dataset attributes nor s0, s1, ... datasets");
    const dtypes = new Set(datasets.map((d) => d.dtype));
    if (dtypes.size !== 1) throw invalidArgument(`${top.file}: dataType`, `levels have different data types: ${[...dtypes].join(", ")}`);
  }
  const dtype = datasets[0]!.dtype;
  const metadata: VolumeMetadata = {
    format: "n5",
    dtype,
    scales,
    fillValue: DATA_TYPES[dtype].isBigInt ? 0n : 0,
    kind: DATA_TYPES[dtype].isBigInt ? "segmentation" : "image",
  };
  return new N5ChunkSource(store, metadata, datasets);
}

registerFormat("n5", openN5);
