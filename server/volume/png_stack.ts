// PNG slice folders (`png://file:///data/lucchi_pp/train/image`): one 8- or 16-bit grayscale PNG
// per z slice, in natural name order, one slice per chunk, each decoded only when read.
//
// Voxel size: `?voxel_size_nm=z,y,x` in the URL, else `voxel_size_nm_zyx` of the dataset's
// meta.json when the folder follows the ../shared/data layout (<dataset>/<split>/{image,label}/ with
// <dataset>/meta.json), else DEFAULT_VOXEL_SIZE_NM (1 nm). A `label` folder opens as a segmentation.

import { promisify } from "node:util";
import { inflate } from "node:zlib";
import { PNG } from "pngjs";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, isSpatialSamError, notFound, SpatialSamError, throwIfAborted } from "#src/errors.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, Store, Vec3 } from "#src/volume/types.ts";
import { registerFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";
import { baseName, decodeFailure, DEFAULT_VOXEL_SIZE_NM, listSliceKeys, voxelSizeFromQuery, withoutQuery } from "./stack_common.ts";
import { openStore } from "./stores.ts";

const inflateAsync = promisify(inflate);
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** Signature (8) + IHDR length, type and 13 data bytes: all a header check needs. */
const HEADER_BYTES = 8 + 8 + 13;

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
}

/** Parses the signature and IHDR chunk; DataCorruption naming `file` when they are not a PNG's. */
export function parsePngHeader(bytes: Uint8Array, file: string): PngHeader {
  if (bytes.length < HEADER_BYTES || PNG_SIGNATURE.some((b, i) => bytes[i] !== b)) throw dataCorruption(file, "not a PNG file");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (String.fromCharCode(...bytes.subarray(12, 16)) !== "IHDR") throw dataCorruption(file, "PNG without an IHDR chunk");
  const header = { width: dv.getUint32(16), height: dv.getUint32(20), bitDepth: bytes[24]!, colorType: bytes[25]! };
  if (header.width === 0 || header.height === 0) throw dataCorruption(file, `invalid PNG size ${header.width} x ${header.height}`);
  return header;
}

function dtypeOf(h: PngHeader, file: string): DataType {
  const colours: Record<number, string> = { 0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale + alpha", 6: "RGBA" };
  if (h.colorType !== 0 || (h.bitDepth !== 8 && h.bitDepth !== 16)) {
    throw new SpatialSamError(
      "Unimplemented",
      `${h.bitDepth}-bit ${colours[h.colorType] ?? `colour type ${h.colorType}`} PNG; only 8- and 16-bit grayscale slices are read`,
      { field: file },
    );
  }
  return h.bitDepth === 8 ? "uint8" : "uint16";
}

/** Decodes with pngjs, which expands to RGBA; we keep the first channel. Used for interlaced PNGs. */
function decodeWithPngjs(bytes: Uint8Array, h: PngHeader, file: string): TypedArray {
  let rgba: Uint8Array | Uint16Array;
  try {
    rgba = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { skipRescale: true }).data as unknown as Uint8Array | Uint16Array;
  } catch (e) {
    throw decodeFailure(e, file, "the PNG");
  }
  const n = h.width * h.height;
  const out = h.bitDepth === 8 ? new Uint8Array(n) : new Uint16Array(n);
  if (rgba.length !== 4 * n || (h.bitDepth === 16) !== rgba instanceof Uint16Array) {
    throw dataCorruption(file, `decoded PNG does not hold ${h.width} x ${h.height} ${h.bitDepth}-bit samples`);
  }
  for (let i = 0; i < n; i++) out[i] = rgba[4 * i]!;
  return out;
}

/** The concatenated IDAT payload of a PNG (chunks walked from the IHDR on). */
function idatOf(bytes: Uint8Array, file: string): Uint8Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts: Uint8Array[] = [];
  let total = 0;
  for (let p = 8; p + 8 <= bytes.length; ) {
    const len = dv.getUint32(p);
    const type = String.fromCharCode(bytes[p + 4]!, bytes[p + 5]!, bytes[p + 6]!, bytes[p + 7]!);
    if (p + 12 + len > bytes.length) throw dataCorruption(file, `PNG chunk ${type} runs past the end of the file`);
    if (type === "IDAT") {
      parts.push(bytes.subarray(p + 8, p + 8 + len));
      total += len;
    }
    if (type === "IEND") break;
    p += 12 + len;
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(total);
  let o = 0;
  for (const part of parts) {
    out.set(part, o);
    o += part.length;
  }
  return out;
}

/**
 * Reverses the PNG row filters of a non-interlaced grayscale image in place and returns its
 * samples (16-bit samples are big-endian in the file).
 */
function unfilter(raw: Uint8Array, h: PngHeader, file: string): TypedArray {
  const bpp = h.bitDepth / 8;
  const stride = h.width * bpp;
  if (raw.length < h.height * (stride + 1)) throw dataCorruption(file, `PNG image data holds ${raw.length} bytes, ${h.height * (stride + 1)} expected`);
  const out = new Uint8Array(h.height * stride);
  for (let y = 0; y < h.height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = out.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? out.subarray((y - 1) * stride, y * stride) : undefined;
    switch (filter) {
      case 0:
        row.set(src);
        break;
      case 1:
        for (let i = 0; i < stride; i++) row[i] = src[i]! + (i >= bpp ? row[i - bpp]! : 0);
        break;
      case 2:
        for (let i = 0; i < stride; i++) row[i] = src[i]! + (prev ? prev[i]! : 0);
        break;
      case 3:
        for (let i = 0; i < stride; i++) row[i] = src[i]! + (((i >= bpp ? row[i - bpp]! : 0) + (prev ? prev[i]! : 0)) >> 1);
        break;
      case 4:
        for (let i = 0; i < stride; i++) {
          const a = i >= bpp ? row[i - bpp]! : 0;
          const b = prev ? prev[i]! : 0;
          const c = i >= bpp && prev ? prev[i - bpp]! : 0;
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          row[i] = src[i]! + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
        }
        break;
      default:
        throw dataCorruption(file, `unknown PNG filter type ${filter} in row ${y}`);
    }
  }
  if (bpp === 1) return out;
  const samples = new Uint16Array(h.width * h.height);
  for (let i = 0; i < samples.length; i++) samples[i] = (out[2 * i]! << 8) | out[2 * i + 1]!;
  return samples;
}

/**
 * Decodes a grayscale PNG to its samples: Node's zlib (on the libuv pool, so slices inflate in
 * parallel) and our own unfiltering, 2x faster than pngjs on one thread (which also expands every
 * sample to RGBA); interlaced (Adam7) files go through pngjs.
 */
async function decodeGray(bytes: Uint8Array, h: PngHeader, file: string): Promise<TypedArray> {
  if (bytes[28] !== 0) return decodeWithPngjs(bytes, h, file); // IHDR interlace method (Adam7)
  let raw: Uint8Array;
  try {
    raw = await inflateAsync(idatOf(bytes, file));
  } catch (e) {
    throw decodeFailure(e, file, "the PNG image data");
  }
  return unfilter(raw, h, file);
}

/** The dataset folder two levels above an image/label folder URL, or undefined when not that layout. */
function datasetUrlOf(folderUrl: string): string | undefined {
  const trimmed = folderUrl.replace(/\/+$/, "");
  const name = trimmed.slice(trimmed.lastIndexOf("/") + 1);
  if (name !== "image" && name !== "label") return undefined;
  const split = trimmed.slice(0, trimmed.lastIndexOf("/"));
  const dataset = split.slice(0, split.lastIndexOf("/"));
  return /^[a-z][a-z0-9+.-]*:\/\/\/?$/i.test(dataset) || dataset === "" ? undefined : dataset;
}

/**
 * `voxel_size_nm_zyx` from <dataset>/meta.json of the shared-data layout; undefined when the layout
 * does not apply, the file is absent or lies outside the allowed roots. DataCorruption naming the
 * file when it exists but does not parse.
 */
export async function sharedLayoutVoxelSize(folderUrl: string, ctx: Pick<FormatContext, "roots" | "s3Endpoint">, signal?: AbortSignal): Promise<Vec3 | undefined> {
  const dataset = datasetUrlOf(folderUrl);
  if (dataset === undefined) return undefined;
  const metaFile = `${dataset}/meta.json`;
  let bytes: Uint8Array | undefined;
  try {
    const store = await openStore(dataset, { roots: ctx.roots, ...(ctx.s3Endpoint === undefined ? {} : { s3Endpoint: ctx.s3Endpoint }) });
    bytes = await store.get("meta.json", signal === undefined ? {} : { signal });
  } catch (e) {
    if (isSpatialSamError(e) && e._tag === "PermissionDenied") return undefined;
    throw e;
  }
  if (bytes === undefined) return undefined;
  let meta: unknown;
  try {
    meta = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw dataCorruption(metaFile, "not valid JSON", e);
  }
  const v = (meta as { voxel_size_nm_zyx?: unknown } | null)?.voxel_size_nm_zyx;
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isFinite(x) && x > 0)) {
    throw dataCorruption(`${metaFile}: voxel_size_nm_zyx`, `expected three positive numbers, got ${JSON.stringify(v)}`);
  }
  return v as Vec3;
}

export interface PngStackOptions {
  voxelSizeNm?: Vec3 | undefined;
  kind?: "image" | "segmentation";
  signal?: AbortSignal;
}

/** Opens the PNG slices directly under `prefix` of `store`; `folder` names it in errors and cache keys. */
export async function openPngFolder(store: Store, prefix: string, folder: string, options: PngStackOptions = {}): Promise<ChunkSource> {
  const { signal } = options;
  const keys = await listSliceKeys(store, prefix, /\.png$/i, "PNG", folder, signal);
  const fileOf = (key: string) => `${folder.replace(/\/+$/, "")}/${baseName(key)}`;
  const firstFile = fileOf(keys[0]!);
  const head = await store.get(keys[0]!, { range: [0, HEADER_BYTES], ...(signal === undefined ? {} : { signal }) });
  if (head === undefined) throw notFound(firstFile, "file not found");
  const first = parsePngHeader(head, firstFile);
  const dtype = dtypeOf(first, firstFile);
  const grid: Vec3 = [keys.length, 1, 1];
  return {
    metadata: {
      format: "png-stack",
      dtype,
      scales: [
        {
          index: 0,
          key: "",
          shapeZyx: [keys.length, first.height, first.width],
          voxelSizeNm: options.voxelSizeNm ?? DEFAULT_VOXEL_SIZE_NM,
          chunkShapeZyx: [1, first.height, first.width],
          offsetZyx: [0, 0, 0],
        },
      ],
      fillValue: 0,
      kind: options.kind ?? "image",
    },
    cacheKey: `png-stack:${folder}`,
    async readChunk(scale: number, idx: Vec3, opts: ReadOptions = {}): Promise<DecodedChunk> {
      if (scale !== 0) throw invalidArgument("scale", `PNG stacks have one scale, got ${scale}`);
      if (!idx.every((v, d) => Number.isInteger(v) && v >= 0 && v < grid[d]!)) {
        throw invalidArgument("chunk", `chunk index [${idx.join(", ")}] is outside the grid [${grid.join(", ")}]`);
      }
      const key = keys[idx[0]]!;
      const file = fileOf(key);
      const bytes = await store.get(key, opts.signal === undefined ? {} : { signal: opts.signal });
      if (bytes === undefined) throw notFound(file, "slice file disappeared after the folder was listed");
      throwIfAborted(opts.signal);
      const h = parsePngHeader(bytes, file);
      if (h.width !== first.width || h.height !== first.height || h.bitDepth !== first.bitDepth || h.colorType !== first.colorType) {
        throw dataCorruption(
          file,
          `slice is ${h.width} x ${h.height} ${h.bitDepth}-bit (colour type ${h.colorType}) but ${baseName(keys[0]!)} is ${first.width} x ${first.height} ${first.bitDepth}-bit (colour type ${first.colorType})`,
        );
      }
      return { data: await decodeGray(bytes, h, file), shapeZyx: [1, h.height, h.width] };
    },
  };
}

/** The `png://` driver: the store root is the slice folder. */
export async function openPngStack(store: Store, ctx: Pick<FormatContext, "storeUrl" | "roots" | "s3Endpoint">, options: { signal?: AbortSignal } = {}): Promise<ChunkSource> {
  const folder = withoutQuery(ctx.storeUrl);
  const fromUrl = voxelSizeFromQuery(ctx.storeUrl);
  const name = folder.replace(/\/+$/, "").split("/").pop();
  return openPngFolder(store, "", folder, {
    ...options,
    voxelSizeNm: fromUrl ?? (await sharedLayoutVoxelSize(folder, ctx, options.signal)),
    kind: name === "label" || name === "labels" ? "segmentation" : "image",
  });
}

registerFormat("png", (store, ctx) => openPngStack(store, ctx));
