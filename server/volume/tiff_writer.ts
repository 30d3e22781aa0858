// Writes a (z, y, x) volume as a multi-page TIFF (one page per slice), uncompressed or deflate,
// with the voxel size as ImageJ calibration so tifffile, Fiji and our own reader see the spacing.
//
// - Atomic: the file is written as a temp file in the target's folder, fsynced, then renamed.
// - Classic TIFF only: a file that would pass 4 GiB is refused (BigTIFF is not written yet; no
//   caller needs it now). Uncompressed volumes are checked before anything is written.
// - uint64/int64 are refused: neither ImageJ/Fiji nor geotiff read 64-bit integer TIFFs; write
//   labels as uint32 or to Zarr/precomputed.
// - Calibration: for uint8, uint16 and float32 (ImageJ's types) an ImageJ description (unit=nm,
//   spacing) plus X/YResolution in pixels per nm; for the other types X/YResolution in pixels per
//   centimetre (the z size is then not stored; readers assume it equals x).
//
// The caller resolves and checks the path (e.g. FileStore.resolve), as for every local write.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import { deflate } from "node:zlib";
import { asBytes, DATA_TYPES } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { invalidArgument, throwIfAborted } from "#src/errors.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";

const deflateAsync = promisify(deflate);

export interface TiffWriteOptions {
  /** Voxel size (z, y, x) in nm, written as calibration; omitted: none is written. */
  voxelSizeNm?: Vec3;
  compression?: "none" | "deflate";
  signal?: AbortSignal;
}

const SAMPLE_FORMAT: Partial<Record<DataType, number>> = { uint8: 1, uint16: 1, uint32: 1, int8: 2, int16: 2, int32: 2, float32: 3, float64: 3 };
const IMAGEJ_TYPES: ReadonlySet<DataType> = new Set(["uint8", "uint16", "float32"]);
const MAX_OFFSET = 2 ** 32 - 1;
/** Rows per strip are chosen so that a strip holds about this many bytes (readers fetch strips). */
const STRIP_BYTES = 2 ** 20;

/** A positive real as a TIFF RATIONAL (two uint32), by continued fractions. */
export function toRational(x: number): [number, number] {
  if (!(x > 0) || !Number.isFinite(x)) throw new RangeError(`cannot store ${x} as a rational`);
  let [h0, h1, k0, k1] = [0, 1, 1, 0];
  let v = x;
  for (let i = 0; i < 32; i++) {
    const a = Math.floor(v);
    const h2 = a * h1 + h0;
    const k2 = a * k1 + k0;
    if (h2 > MAX_OFFSET || k2 > MAX_OFFSET) break;
    [h0, h1, k0, k1] = [h1, h2, k1, k2];
    if (Math.abs(h1 / k1 - x) <= 1e-12 * x || v - a < 1e-12) break;
    v = 1 / (v - a);
  }
  return k1 === 0 ? [MAX_OFFSET, 1] : [h1, k1];
}

type Entry = { tag: number; type: 2 | 3 | 4 | 5; values: number[] | string };

/** Encodes one IFD at file offset `at`: entries, next-IFD pointer (0), then out-of-line values. */
function encodeIfd(entries: Entry[], at: number): { bytes: Uint8Array; nextPointerAt: number } {
  entries.sort((a, b) => a.tag - b.tag);
  const size = { 2: 1, 3: 2, 4: 4, 5: 8 } as const;
  const head = 2 + entries.length * 12 + 4;
  const extras: Uint8Array[] = [];
  let extraLen = 0;
  const buf = new Uint8Array(head);
  const dv = new DataView(buf.buffer);
  dv.setUint16(0, entries.length, true);
  entries.forEach((e, i) => {
    const count = typeof e.values === "string" ? e.values.length + 1 : e.type === 5 ? e.values.length / 2 : e.values.length;
    const payload = new Uint8Array(count * size[e.type]);
    const pv = new DataView(payload.buffer);
    if (typeof e.values === "string") payload.set(new TextEncoder().encode(e.values));
    else e.values.forEach((v, j) => (e.type === 3 ? pv.setUint16(2 * j, v, true) : pv.setUint32(4 * j, v, true)));
    const o = 2 + i * 12;
    dv.setUint16(o, e.tag, true);
    dv.setUint16(o + 2, e.type, true);
    dv.setUint32(o + 4, count, true);
    if (payload.length <= 4) {
      buf.set(payload, o + 8);
    } else {
      dv.setUint32(o + 8, at + head + extraLen, true);
      extras.push(payload);
      extraLen += payload.length + (payload.length % 2);
      if (payload.length % 2 === 1) extras.push(new Uint8Array(1));
    }
  });
  const out = new Uint8Array(head + extraLen);
  out.set(buf, 0);
  let p = head;
  for (const x of extras) {
    out.set(x, p);
    p += x.length;
  }
  return { bytes: out, nextPointerAt: at + 2 + entries.length * 12 };
}

function imagejDescription(depth: number, voxelSizeNm: Vec3): string {
  return `ImageJ=1.11a\nimages=${depth}\nslices=${depth}\nunit=nm\nspacing=${voxelSizeNm[0]}\nloop=false\n`;
}

function checkVoxelSize(v: Vec3 | undefined): void {
  if (v === undefined) return;
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isFinite(x) && x > 0)) {
    throw invalidArgument("voxelSizeNm", "expected three positive numbers (z, y, x) in nm");
  }
}

/**
 * Writes slices 0..z-1, each produced by `sliceAt(z)` as a C-order (y, x) array of `dtype`, to
 * `filePath` as a multi-page TIFF. Nothing is left at `filePath` (or beside it) when this fails.
 */
export async function writeTiffStack(
  filePath: string,
  dtype: DataType,
  shapeZyx: Vec3,
  sliceAt: (z: number) => TypedArray | Promise<TypedArray>,
  options: TiffWriteOptions = {},
): Promise<void> {
  const format = SAMPLE_FORMAT[dtype];
  if (format === undefined) {
    throw invalidArgument("dtype", `${dtype} cannot be written as TIFF (ImageJ/Fiji and geotiff read no 64-bit integers); write labels as uint32, or use Zarr/precomputed`);
  }
  if (!Array.isArray(shapeZyx) || shapeZyx.length !== 3 || !shapeZyx.every((s) => Number.isSafeInteger(s) && s > 0)) {
    throw invalidArgument("shape", "expected three positive integers (z, y, x)");
  }
  checkVoxelSize(options.voxelSizeNm);
  const compression = options.compression ?? "none";
  if (compression !== "none" && compression !== "deflate") throw invalidArgument("compression", `expected "none" or "deflate", got ${String(compression)}`);
  const [depth, height, width] = shapeZyx;
  const bytesPer = DATA_TYPES[dtype].bytes;
  const rowBytes = width * bytesPer;
  if (compression === "none" && depth * height * rowBytes + depth * 4096 > MAX_OFFSET) {
    throw invalidArgument("shape", `[${shapeZyx.join(", ")}] ${dtype} is over 4 GiB, the classic TIFF limit (BigTIFF is not written); use Zarr or split the volume`);
  }
  const rowsPerStrip = Math.max(1, Math.min(height, Math.floor(STRIP_BYTES / rowBytes)));
  const imagej = options.voxelSizeNm !== undefined && IMAGEJ_TYPES.has(dtype);

  const target = path.resolve(filePath);
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const fh = await fs.open(tmp, "wx");
  let ok = false;
  try {
    let pos = 0;
    const write = async (bytes: Uint8Array) => {
      if (pos + bytes.length > MAX_OFFSET) {
        throw invalidArgument("shape", `the TIFF passes 4 GiB at slice data of this volume (BigTIFF is not written); use Zarr or split the volume`);
      }
      await fh.write(bytes, 0, bytes.length, pos);
      pos += bytes.length + (bytes.length % 2);
    };
    const header = new Uint8Array(8);
    header.set([0x49, 0x49, 42, 0]);
    await write(header);
    let pointerAt = 4; // where the offset of the next IFD goes
    for (let z = 0; z < depth; z++) {
      throwIfAborted(options.signal);
      const slice = await sliceAt(z);
      if (!(slice instanceof DATA_TYPES[dtype].array) || slice.length !== height * width) {
        throw invalidArgument(`slice[${z}]`, `expected ${height * width} ${dtype} values (${height} x ${width})`);
      }
      const bytes = asBytes(slice);
      const offsets: number[] = [];
      const counts: number[] = [];
      const raws: Uint8Array[] = [];
      for (let y = 0; y < height; y += rowsPerStrip) raws.push(bytes.subarray(y * rowBytes, Math.min(height, y + rowsPerStrip) * rowBytes));
      // A slice's strips deflate in parallel on the libuv pool.
      const strips = compression === "deflate" ? (await Promise.all(raws.map((r) => deflateAsync(r)))).map((b) => new Uint8Array(b)) : raws;
      for (const strip of strips) {
        offsets.push(pos);
        counts.push(strip.length);
        await write(strip);
      }
      const entries: Entry[] = [
        { tag: 254, type: 4, values: [0] },
        { tag: 256, type: 4, values: [width] },
        { tag: 257, type: 4, values: [height] },
        { tag: 258, type: 3, values: [bytesPer * 8] },
        { tag: 259, type: 3, values: [compression === "deflate" ? 8 : 1] },
        { tag: 262, type: 3, values: [1] },
        { tag: 273, type: 4, values: offsets },
        { tag: 277, type: 3, values: [1] },
        { tag: 278, type: 4, values: [rowsPerStrip] },
        { tag: 279, type: 4, values: counts },
        { tag: 284, type: 3, values: [1] },
        { tag: 339, type: 3, values: [format] },
      ];
      if (options.voxelSizeNm !== undefined) {
        // ImageJ: pixels per unit (nm) with ResolutionUnit none; otherwise pixels per centimetre.
        const perNm = imagej ? 1 : 1e7;
        entries.push(
          { tag: 282, type: 5, values: toRational(perNm / options.voxelSizeNm[2]) },
          { tag: 283, type: 5, values: toRational(perNm / options.voxelSizeNm[1]) },
          { tag: 296, type: 3, values: [imagej ? 1 : 3] },
        );
        if (imagej && z === 0) entries.push({ tag: 270, type: 2, values: imagejDescription(depth, options.voxelSizeNm) });
      }
      const ifdAt = pos;
      const ifd = encodeIfd(entries, ifdAt);
      await write(ifd.bytes);
      const ptr = new Uint8Array(4);
      new DataView(ptr.buffer).setUint32(0, ifdAt, true);
      await fh.write(ptr, 0, 4, pointerAt);
      pointerAt = ifd.nextPointerAt;
    }
    await fh.sync();
    ok = true;
  } finally {
    await fh.close();
    if (!ok) await fs.rm(tmp, { force: true });
  }
  try {
    await fs.rename(tmp, target);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/** Writes a dense C-order (z, y, x) array as a multi-page TIFF (see writeTiffStack). */
export async function writeTiff(filePath: string, data: TypedArray, dtype: DataType, shapeZyx: Vec3, options: TiffWriteOptions = {}): Promise<void> {
  if (!Array.isArray(shapeZyx) || shapeZyx.length !== 3) throw invalidArgument("shape", "expected three positive integers (z, y, x)");
  const plane = shapeZyx[1] * shapeZyx[2];
  if (data.length !== shapeZyx[0] * plane) {
    throw invalidArgument("data", `has ${data.length} values, shape [${shapeZyx.join(", ")}] needs ${shapeZyx[0] * plane}`);
  }
  await writeTiffStack(filePath, dtype, shapeZyx, (z) => data.subarray(z * plane, (z + 1) * plane), options);
}

/**
 * Exports level `scale` of a volume as a multi-page TIFF, reading one slice at a time (memory: one
 * slice), with the level's voxel size as calibration unless `options.voxelSizeNm` overrides it.
 */
export async function writeVolumeTiff(volume: VolumeSource, scale: number, filePath: string, options: TiffWriteOptions = {}): Promise<void> {
  const level = volume.metadata.scales[scale];
  if (level === undefined) throw invalidArgument("scale", `expected an integer in [0, ${volume.metadata.scales.length - 1}], got ${scale}`);
  const [depth, height, width] = level.shapeZyx;
  const [oz, oy, ox] = level.offsetZyx;
  await writeTiffStack(
    filePath,
    volume.metadata.dtype,
    [depth, height, width],
    (z) => volume.read({ offsetZyx: [oz + z, oy, ox], shapeZyx: [1, height, width] }, scale, options.signal === undefined ? {} : { signal: options.signal }),
    { ...options, voxelSizeNm: options.voxelSizeNm ?? level.voxelSizeNm },
  );
}
