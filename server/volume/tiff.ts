// TIFF volumes: a multi-page TIFF (page z = slice z) or a folder of single-page TIFF slices (in
// natural name order), decoded by `geotiff` (uncompressed, deflate, LZW, PackBits, ...) from range
// reads of the Store, so only the IFDs and the strips of the slices asked for are ever read.
//
// Chunks are one slice, or bands of whole strips/tile rows when a slice is larger than
// `maxChunkBytes`. Voxel size: `?voxel_size_nm=z,y,x` in the URL, else the file's calibration
// (tiff_calibration.ts), else DEFAULT_VOXEL_SIZE_NM (1 nm).

import { inflate } from "node:zlib";
import { promisify } from "node:util";
import { addDecoder, BaseDecoder, GeoTIFF, getDecoder } from "geotiff";
import type { GeoTIFFImage } from "geotiff";
import { DATA_TYPES } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, notFound, SpatialSamError, throwIfAborted } from "#src/errors.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, Store, Vec3, VolumeMetadata } from "#src/volume/types.ts";
import { registerFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";
import { baseName, decodeFailure, DEFAULT_VOXEL_SIZE_NM, listSliceKeys, voxelSizeFromQuery, withoutQuery } from "./stack_common.ts";
import { parseImageJDescription, tiffVoxelSizeNm } from "./tiff_calibration.ts";

/** Largest chunk before a slice is split into bands of rows (16 MiB). */
export const DEFAULT_MAX_CHUNK_BYTES = 16 * 2 ** 20;

export interface TiffOpenOptions {
  /** Overrides the file's calibration (z, y, x in nm). */
  voxelSizeNm?: Vec3 | undefined;
  maxChunkBytes?: number;
  signal?: AbortSignal;
}

const inflateAsync = promisify(inflate);

/**
 * Deflate strips through Node's zlib (native, on the libuv pool so strips inflate in parallel)
 * instead of geotiff's JavaScript inflate (pako): 1.2-3x faster on one thread here, and strips of
 * a band inflate at once. geotiff's decoder table is
 * process-wide, so this applies to every geotiff user in the process, which is only this driver.
 */
class NodeDeflateDecoder extends BaseDecoder {
  override async decodeBlock(buffer: ArrayBufferLike): Promise<ArrayBuffer> {
    const out = await inflateAsync(new Uint8Array(buffer));
    return out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength) as ArrayBuffer;
  }
}
addDecoder([8, 32946], async () => NodeDeflateDecoder);

/** The file names a TIFF folder is made of. */
const TIFF_NAME = /\.tiff?$/i;

/**
 * geotiff's byte-source interface over a Store key. Small reads (IFDs, strip-offset arrays) go
 * through a little LRU of 8 KiB blocks (directories written together share blocks; scattered ones
 * cost one block each);
 * strip reads go straight to the store.
 */
class StoreByteSource {
  static readonly BLOCK = 8 * 1024;
  static readonly MAX_BLOCKS = 64;
  readonly #blocks = new Map<number, Promise<Uint8Array>>();

  constructor(
    readonly store: Store,
    readonly key: string,
    readonly file: string,
  ) {}

  get fileSize(): null {
    return null;
  }

  async close(): Promise<void> {
    this.#blocks.clear();
  }

  async fetch(slices: { offset: number; length: number }[], signal?: AbortSignal): Promise<ArrayBuffer[]> {
    return Promise.all(slices.map((s) => this.read(s.offset, s.length, signal)));
  }

  async #get(range: [number, number], signal?: AbortSignal): Promise<Uint8Array> {
    const bytes = await this.store.get(this.key, signal === undefined ? { range } : { range, signal });
    if (bytes === undefined) throw notFound(this.file, "file not found");
    return bytes;
  }

  #block(index: number): Promise<Uint8Array> {
    const hit = this.#blocks.get(index);
    if (hit !== undefined) {
      this.#blocks.delete(index);
      this.#blocks.set(index, hit);
      return hit;
    }
    // Blocks are shared between callers, so they are read without any one caller's signal.
    const p = this.#get([index * StoreByteSource.BLOCK, (index + 1) * StoreByteSource.BLOCK]);
    p.catch(() => this.#blocks.delete(index));
    this.#blocks.set(index, p);
    if (this.#blocks.size > StoreByteSource.MAX_BLOCKS) this.#blocks.delete(this.#blocks.keys().next().value!);
    return p;
  }

  /** Bytes [offset, offset + length), fewer at the end of the file; as a fresh ArrayBuffer (geotiff views it from 0). */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<ArrayBuffer> {
    throwIfAborted(signal);
    if (length >= StoreByteSource.BLOCK) {
      const bytes = await this.#get([offset, offset + length], signal);
      return bytes.slice().buffer;
    }
    const B = StoreByteSource.BLOCK;
    const first = Math.floor(offset / B);
    const last = Math.floor((offset + length - 1) / B);
    const out = new Uint8Array(length);
    let filled = 0;
    for (let b = first; b <= last; b++) {
      const block = await this.#block(b);
      const from = b === first ? offset - b * B : 0;
      const part = block.subarray(from, Math.min(block.length, from + length - filled));
      out.set(part, filled);
      filled += part.length;
      if (block.length < B) break; // end of file
    }
    throwIfAborted(signal);
    return out.slice(0, filled).buffer;
  }
}

async function openGeoTiff(store: Store, key: string, file: string, signal?: AbortSignal): Promise<GeoTIFF> {
  const source = new StoreByteSource(store, key, file);
  try {
    return await GeoTIFF.fromSource(source as unknown as Parameters<typeof GeoTIFF.fromSource>[0], {}, signal);
  } catch (e) {
    throw decodeFailure(e, file, "the TIFF header");
  }
}

interface PageLayout {
  width: number;
  height: number;
  dtype: DataType;
  /** Rows per strip, or tile height for tiled pages: the granularity of row bands. */
  rowBlock: number;
}

/** The element type of a page; Unimplemented naming the file for what we do not read. */
function pageLayout(image: GeoTIFFImage, file: string, page: number): PageLayout {
  const where = `${file} (page ${page})`;
  const spp = image.getSamplesPerPixel();
  if (spp !== 1) {
    throw new SpatialSamError("Unimplemented", `SamplesPerPixel is ${spp}; only single-channel (grayscale or label) TIFFs are read`, { field: where });
  }
  const format = image.getSampleFormat(0) as number;
  const bits = image.getBitsPerSample(0);
  const table: Record<number, Record<number, DataType>> = {
    1: { 8: "uint8", 16: "uint16", 32: "uint32" },
    2: { 8: "int8", 16: "int16", 32: "int32" },
    3: { 32: "float32", 64: "float64" },
  };
  const dtype = table[format]?.[bits];
  if (dtype === undefined) {
    const kinds: Record<number, string> = { 1: "unsigned", 2: "signed", 3: "float", 4: "void", 5: "complex int", 6: "complex float" };
    throw new SpatialSamError(
      "Unimplemented",
      `SampleFormat ${format} (${kinds[format] ?? "unknown"}) with ${bits} bits per sample is not supported (readable: uint8/16/32, int8/16/32, float32/64)`,
      { field: where },
    );
  }
  const width = image.getWidth();
  const height = image.getHeight();
  if (!(width > 0 && height > 0)) throw dataCorruption(where, `invalid page size ${width} x ${height}`);
  const rowBlock = image.isTiled ? image.getTileHeight() : Math.min(height, Number(image.getFileDirectory().getValue("RowsPerStrip") ?? height) || height);
  return { width, height, dtype, rowBlock };
}

/** Rows per chunk: the whole slice, or whole row blocks adding up to at most maxChunkBytes. */
function chunkRows(layout: PageLayout, maxChunkBytes: number): number {
  const rowBytes = layout.width * DATA_TYPES[layout.dtype].bytes;
  if (layout.height * rowBytes <= maxChunkBytes) return layout.height;
  const blocks = Math.max(1, Math.floor(maxChunkBytes / (rowBytes * layout.rowBlock)));
  return Math.min(layout.height, blocks * layout.rowBlock);
}

async function calibrationOf(image: GeoTIFFImage): Promise<Vec3 | undefined> {
  const fd = image.getFileDirectory();
  const description = await fd.loadValue("ImageDescription");
  return tiffVoxelSizeNm({
    description: typeof description === "string" ? description : undefined,
    xResolution: (await fd.loadValue("XResolution")) as ArrayLike<number> | undefined,
    yResolution: (await fd.loadValue("YResolution")) as ArrayLike<number> | undefined,
    resolutionUnit: (await fd.loadValue("ResolutionUnit")) as number | undefined,
  });
}

/** The decoder geotiff uses for a page (compression, predictor), created once per page read. */
async function decoderFor(image: GeoTIFFImage): Promise<BaseDecoder> {
  const fd = image.getFileDirectory();
  const compression = Number(fd.getValue("Compression") ?? 1);
  return getDecoder(compression, {
    tileWidth: image.getWidth(),
    tileHeight: Number(await fd.loadValue("RowsPerStrip")) || image.getHeight(),
    planarConfiguration: image.planarConfiguration,
    bitsPerSample: image.getBitsPerSample(0),
    predictor: Number(await fd.loadValue("Predictor")) || 1,
  });
}

/**
 * Rows [y0, y1) of a page. Little-endian striped pages (what microscopes and tifffile write) are
 * decoded strip by strip and copied as bytes; tiled and big-endian pages go through geotiff's
 * general (per-pixel) readRasters.
 */
async function readBand(image: GeoTIFFImage, layout: PageLayout, y0: number, y1: number, file: string, signal?: AbortSignal): Promise<DecodedChunk> {
  const Ctor = DATA_TYPES[layout.dtype].array;
  const n = (y1 - y0) * layout.width;
  const shapeZyx: Vec3 = [1, y1 - y0, layout.width];
  try {
    if (!image.isTiled && image.littleEndian) {
      const decoder = await decoderFor(image);
      // This page's own strip height: pages of one file (or slices of a folder) may differ in it.
      const rps = Math.min(layout.height, Number(image.getFileDirectory().getValue("RowsPerStrip") ?? layout.height) || layout.height);
      const rowBytes = layout.width * DATA_TYPES[layout.dtype].bytes;
      const out = new Uint8Array(n * DATA_TYPES[layout.dtype].bytes);
      const strips: Promise<void>[] = [];
      for (let s = Math.floor(y0 / rps); s * rps < y1; s++) {
        strips.push(
          image.getTileOrStrip(0, s, 0, decoder, signal).then(({ data }) => {
            const from = Math.max(y0, s * rps);
            const to = Math.min(y1, (s + 1) * rps, layout.height);
            const bytes = new Uint8Array(data, (from - s * rps) * rowBytes);
            if (bytes.length < (to - from) * rowBytes) throw dataCorruption(file, `strip ${s} decodes to ${data.byteLength} bytes, too few for its rows`);
            out.set(bytes.subarray(0, (to - from) * rowBytes), (from - y0) * rowBytes);
          }),
        );
      }
      await Promise.all(strips);
      throwIfAborted(signal);
      return { data: new Ctor(out.buffer, 0, n), shapeZyx };
    }
    const raster: unknown = await image.readRasters({ window: [0, y0, layout.width, y1], samples: [0], interleave: true, ...(signal === undefined ? {} : { signal }) });
    throwIfAborted(signal);
    if (!(raster instanceof Ctor) || (raster as TypedArray).length !== n) {
      throw dataCorruption(file, `decoded rows ${y0}..${y1} are not ${n} ${layout.dtype} values`);
    }
    return { data: raster as TypedArray, shapeZyx };
  } catch (e) {
    throw decodeFailure(e, file, `rows ${y0}..${y1}`);
  }
}

function checkChunkIndex(scale: number, idx: Vec3, grid: Vec3): void {
  if (scale !== 0) throw invalidArgument("scale", `TIFF volumes have one scale, got ${scale}`);
  for (let d = 0; d < 3; d++) {
    if (!Number.isInteger(idx[d]) || idx[d]! < 0 || idx[d]! >= grid[d]!) {
      throw invalidArgument("chunk", `chunk index [${idx.join(", ")}] is outside the grid [${grid.join(", ")}]`);
    }
  }
}

function metadataOf(layout: PageLayout, depth: number, rows: number, voxelSizeNm: Vec3): VolumeMetadata {
  return {
    format: "tiff",
    dtype: layout.dtype,
    scales: [{ index: 0, key: "", shapeZyx: [depth, layout.height, layout.width], voxelSizeNm, chunkShapeZyx: [1, rows, layout.width], offsetZyx: [0, 0, 0] }],
    fillValue: 0,
    kind: "image",
  };
}

/** Opens the multi-page TIFF at `key`; `file` names it in errors and cache keys. */
export async function openTiffFile(store: Store, key: string, file: string, options: TiffOpenOptions = {}): Promise<ChunkSource> {
  const { signal } = options;
  const tiff = await openGeoTiff(store, key, file, signal);
  const pages: number[] = [];
  let first: GeoTIFFImage | undefined;
  let layout: PageLayout | undefined;
  try {
    const count = await tiff.getImageCount();
    for (let i = 0; i < count; i++) {
      throwIfAborted(signal);
      const image = await tiff.getImage(i);
      // Reduced-resolution pages (NewSubfileType bit 0) are previews, not slices.
      if ((Number(image.getFileDirectory().getValue("NewSubfileType") ?? 0) & 1) === 1) continue;
      const l = pageLayout(image, file, i);
      if (layout === undefined || first === undefined) {
        layout = l;
        first = image;
      } else if (l.width !== layout.width || l.height !== layout.height || l.dtype !== layout.dtype) {
        throw dataCorruption(
          `${file} (page ${i})`,
          `page is ${l.width} x ${l.height} ${l.dtype} but page ${pages[0]} is ${layout.width} x ${layout.height} ${layout.dtype}`,
        );
      }
      pages.push(i);
    }
  } catch (e) {
    throw decodeFailure(e, file, "the TIFF directories");
  }
  if (layout === undefined || first === undefined) throw dataCorruption(file, "the TIFF has no pages");
  let description: unknown;
  let calibration: Vec3 | undefined;
  try {
    description = await first.getFileDirectory().loadValue("ImageDescription");
    calibration = await calibrationOf(first);
  } catch (e) {
    throw decodeFailure(e, file, "the TIFF tags");
  }
  const images = Number(parseImageJDescription(typeof description === "string" ? description : undefined)?.get("images") ?? pages.length);
  if (images > pages.length) {
    // ImageJ writes stacks over 4 GiB as one directory followed by all slices back to back.
    throw new SpatialSamError("Unimplemented", `ImageJ says ${images} images but the file has ${pages.length} directories (an ImageJ stack over 4 GiB); convert it with tifffile or Fiji`, { field: file });
  }
  const maxChunkBytes = options.maxChunkBytes ?? DEFAULT_MAX_CHUNK_BYTES;
  const rows = chunkRows(layout, maxChunkBytes);
  const metadata = metadataOf(layout, pages.length, rows, options.voxelSizeNm ?? calibration ?? DEFAULT_VOXEL_SIZE_NM);
  const grid: Vec3 = [pages.length, Math.ceil(layout.height / rows), 1];
  const l = layout;
  return {
    metadata,
    cacheKey: `tiff:${file}`,
    async readChunk(scale: number, idx: Vec3, opts: ReadOptions = {}): Promise<DecodedChunk> {
      checkChunkIndex(scale, idx, grid);
      throwIfAborted(opts.signal);
      const y0 = idx[1] * rows;
      const where = `${file} (page ${pages[idx[0]]!})`;
      let image: GeoTIFFImage;
      try {
        image = await tiff.getImage(pages[idx[0]]!);
      } catch (e) {
        throw decodeFailure(e, where, "the page directory");
      }
      return readBand(image, l, y0, Math.min(l.height, y0 + rows), where, opts.signal);
    },
    async close(): Promise<void> {
      await tiff.close();
    },
  };
}

/**
 * Opens a folder of TIFF slices under `prefix` (one page per file; a file's further pages are
 * ignored). Large slices are split into row bands like pages of a multi-page file; the row block is
 * the first slice's.
 */
export async function openTiffFolder(store: Store, prefix: string, folder: string, options: TiffOpenOptions = {}): Promise<ChunkSource> {
  const { signal } = options;
  const keys = await listSliceKeys(store, prefix, TIFF_NAME, "TIFF", folder, signal);
  const fileOf = (key: string) => `${folder.replace(/\/+$/, "")}/${baseName(key)}`;
  const openPage = async (z: number, signal?: AbortSignal): Promise<{ image: GeoTIFFImage; layout: PageLayout; tiff: GeoTIFF }> => {
    const file = fileOf(keys[z]!);
    const tiff = await openGeoTiff(store, keys[z]!, file, signal);
    try {
      const image = await tiff.getImage(0);
      return { image, layout: pageLayout(image, file, 0), tiff };
    } catch (e) {
      await tiff.close();
      throw decodeFailure(e, file, "the TIFF directory");
    }
  };
  const first = await openPage(0, signal);
  let calibration: Vec3 | undefined;
  try {
    calibration = await calibrationOf(first.image);
  } catch (e) {
    throw decodeFailure(e, fileOf(keys[0]!), "the TIFF tags");
  } finally {
    await first.tiff.close();
  }
  const layout = first.layout;
  const rows = chunkRows(layout, options.maxChunkBytes ?? DEFAULT_MAX_CHUNK_BYTES);
  const metadata = metadataOf(layout, keys.length, rows, options.voxelSizeNm ?? calibration ?? DEFAULT_VOXEL_SIZE_NM);
  const grid: Vec3 = [keys.length, Math.ceil(layout.height / rows), 1];
  return {
    metadata,
    cacheKey: `tiff-folder:${folder}`,
    async readChunk(scale: number, idx: Vec3, opts: ReadOptions = {}): Promise<DecodedChunk> {
      checkChunkIndex(scale, idx, grid);
      const file = fileOf(keys[idx[0]]!);
      const page = await openPage(idx[0], opts.signal);
      try {
        const l = page.layout;
        if (l.width !== layout.width || l.height !== layout.height || l.dtype !== layout.dtype) {
          throw dataCorruption(
            file,
            `slice is ${l.width} x ${l.height} ${l.dtype} but ${baseName(keys[0]!)} is ${layout.width} x ${layout.height} ${layout.dtype}`,
          );
        }
        const y0 = idx[1] * rows;
        return await readBand(page.image, layout, y0, Math.min(layout.height, y0 + rows), file, opts.signal);
      } finally {
        await page.tiff.close();
      }
    },
  };
}

/**
 * The `tiff://` driver. The store root is a .tif/.tiff file (multi-page) or a folder of slice files;
 * `?voxel_size_nm=z,y,x` overrides the calibration.
 */
export async function openTiff(store: Store, ctx: Pick<FormatContext, "storeUrl">, options: Omit<TiffOpenOptions, "voxelSizeNm"> = {}): Promise<ChunkSource> {
  const name = withoutQuery(ctx.storeUrl);
  const opts: TiffOpenOptions = { ...options, voxelSizeNm: voxelSizeFromQuery(ctx.storeUrl) };
  // A file answers a read of its root key; a folder (or a missing path) does not.
  const probe = await store.get("", { range: [0, 8], ...(options.signal === undefined ? {} : { signal: options.signal }) });
  if (probe !== undefined) return openTiffFile(store, "", name, opts);
  if (TIFF_NAME.test(name)) throw notFound(name, "file not found");
  return openTiffFolder(store, "", name, opts);
}

registerFormat("tiff", (store, ctx) => openTiff(store, ctx));
