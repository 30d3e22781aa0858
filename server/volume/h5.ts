// HDF5 datasets as volumes (`h5://file:///data/a.h5#/volumes/raw`), read with h5wasm's Node
// build, which opens the real file through Emscripten's NODERAWFS: libhdf5 reads only the bytes it
// needs (superblock, B-trees, the chunks of each hyperslab), so memory stays bounded by the chunk
// being read plus libhdf5's own chunk cache, whatever the file's size.
//
// Chunks follow the dataset's HDF5 chunking; contiguous datasets are read in z slabs of about
// SLAB_BYTES. Voxel size: `?voxel_size_nm=z,y,x`, else the dataset attribute `resolution` (nm, zyx:
// the CREMI convention) or `element_size_um` (µm, zyx: ilastik and Fiji's HDF5 plugin), else
// DEFAULT_VOXEL_SIZE_NM. Integer datasets of 32 or 64 bits open as segmentations (label ids).
// Local files only: libhdf5 needs random access that a Store's range reads cannot give it synchronously.

import * as fs from "node:fs/promises";
import type { Dataset } from "h5wasm/node";
import type H5WasmModule from "h5wasm/node";
import { DATA_TYPES } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, notFound, permissionDenied, SpatialSamError, throwIfAborted } from "#src/errors.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, Store, Vec3 } from "#src/volume/types.ts";
import { registerFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";
import { DEFAULT_VOXEL_SIZE_NM, voxelSizeFromQuery, withoutQuery } from "./stack_common.ts";
import { FileStore } from "./stores.ts";

/** Target size of the z slabs a contiguous dataset is read in. */
const SLAB_BYTES = 4 * 2 ** 20;

type H5Wasm = typeof H5WasmModule;
// Assigned by h5Ready(), which every entry point awaits first. The module is imported on first use
// only: instantiating h5wasm reserves about 600 MiB of address space that shows up as RSS, which a
// server that never opens an HDF5 file should not pay.
let h5wasm: H5Wasm;
let ready: Promise<void> | undefined;

/** Loads the wasm module once and makes libhdf5 errors throw (instead of printing to stderr). */
function h5Ready(): Promise<void> {
  ready ??= import("h5wasm/node").then(async ({ default: h5 }) => {
    const module = await h5.ready;
    module.activate_throwing_error_handler();
    h5wasm = h5;
  });
  return ready;
}

/** The innermost libhdf5 message of an error stack ("unable to read superblock", ...). */
function h5Message(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  const lines = [...text.matchAll(/\(\): (.+)$/gm)].map((m) => m[1]!.trim());
  return lines.at(-1) ?? text.split("\n")[0]!.slice(0, 200);
}

function dtypeOf(ds: Dataset, where: string): DataType {
  const m = ds.metadata;
  const table: Record<string, DataType> = {
    "0:u:1": "uint8",
    "0:u:2": "uint16",
    "0:u:4": "uint32",
    "0:u:8": "uint64",
    "0:s:1": "int8",
    "0:s:2": "int16",
    "0:s:4": "int32",
    "0:s:8": "int64",
    "1:s:4": "float32",
    "1:s:8": "float64",
    "1:u:4": "float32",
    "1:u:8": "float64",
  };
  const dtype = m.vlen ? undefined : table[`${m.type}:${m.signed ? "s" : "u"}:${m.size}`];
  if (dtype === undefined) {
    const classes: Record<number, string> = { 2: "time", 3: "string", 4: "bitfield", 5: "opaque", 6: "compound", 7: "reference", 8: "enum", 9: "variable-length", 10: "array" };
    const what = m.type === 0 || m.type === 1 ? `${m.size}-byte ${m.type === 0 ? "integer" : "float"}` : (classes[m.type] ?? `type class ${m.type}`);
    throw new SpatialSamError("Unimplemented", `${what} datasets are not supported (readable: u/int 8-64 bits, float32/64)`, { field: where });
  }
  return dtype;
}

/**
 * Maps the dataset's dims to zyx: 3-D as is, 2-D as one slice, leading singleton dims dropped.
 * Returns how many leading dims were dropped or added.
 */
function zyxOf(dims: number[], where: string, what: string): { zyx: Vec3; lead: number } {
  let lead = 0;
  while (dims.length - lead > 3 && dims[lead] === 1) lead++;
  const rest = dims.slice(lead);
  if (rest.length === 3) return { zyx: rest as Vec3, lead };
  if (rest.length === 2) return { zyx: [1, rest[0]!, rest[1]!], lead: lead - 1 };
  throw invalidArgument(where, `${what} has ${dims.length} dimensions [${dims.join(", ")}]; expected 2 or 3 (plus leading 1s)`);
}

function attrVec3(ds: Dataset, name: string, where: string): Vec3 | undefined {
  const attr = ds.attrs[name];
  if (attr === undefined) return undefined;
  const raw = attr.value;
  const v = ArrayBuffer.isView(raw) || Array.isArray(raw) ? Array.from(raw as ArrayLike<number | bigint>, Number) : [];
  if (v.length !== 3 || !v.every((x) => Number.isFinite(x) && x > 0)) {
    throw dataCorruption(`${where}: ${name}`, `expected three positive numbers (z, y, x), got ${JSON.stringify(v.length > 0 ? v : raw)}`);
  }
  return v as Vec3;
}

function voxelSizeOf(ds: Dataset, where: string): Vec3 | undefined {
  const nm = attrVec3(ds, "resolution", where);
  if (nm !== undefined) return nm;
  const um = attrVec3(ds, "element_size_um", where);
  return um === undefined ? undefined : (um.map((x) => x * 1000) as Vec3);
}

function chunkShapeOf(ds: Dataset, shape: Vec3, lead: number, bytes: number): Vec3 {
  const chunks = ds.metadata.chunks;
  if (chunks !== null && chunks !== undefined) {
    const dims = lead >= 0 ? chunks.slice(lead) : [1, ...chunks];
    return [Math.min(shape[0], dims[0]!), Math.min(shape[1], dims[1]!), Math.min(shape[2], dims[2]!)];
  }
  const slice = shape[1] * shape[2] * bytes;
  if (slice > 4 * SLAB_BYTES) return [1, Math.max(1, Math.floor(SLAB_BYTES / (shape[2] * bytes))), shape[2]];
  return [Math.max(1, Math.min(shape[0], Math.floor(SLAB_BYTES / slice))), shape[1], shape[2]];
}

export interface H5OpenOptions {
  voxelSizeNm?: Vec3 | undefined;
  signal?: AbortSignal;
}

/**
 * Opens dataset `datasetPath` of the HDF5 file at local path `filePath` (already checked against
 * the allowed roots); `file` names it in errors and cache keys.
 */
export async function openH5File(filePath: string, datasetPath: string, file: string, options: H5OpenOptions = {}): Promise<ChunkSource> {
  await h5Ready();
  throwIfAborted(options.signal);
  const dsName = `/${datasetPath.replace(/^\/+/, "")}`;
  const where = `${file}#${dsName}`;
  try {
    const st = await fs.stat(filePath);
    if (!st.isFile()) throw invalidArgument(file, "not a file");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw notFound(file, "file not found");
    if (code === "EACCES" || code === "EPERM") throw permissionDenied(file, "the file cannot be read (file system permissions)");
    throw e;
  }
  let h5file: InstanceType<typeof h5wasm.File>;
  try {
    h5file = new h5wasm.File(filePath, "r");
  } catch (e) {
    throw dataCorruption(file, `not a readable HDF5 file (${h5Message(e)})`, e);
  }
  try {
    let entity: ReturnType<typeof h5file.get>;
    try {
      entity = dsName === "/" ? h5file : h5file.get(dsName);
    } catch (e) {
      throw dataCorruption(where, `cannot open (${h5Message(e)})`, e);
    }
    if (entity === null) throw notFound(where, "no such dataset in the file");
    if (!(entity instanceof h5wasm.Dataset)) {
      const keys = entity instanceof h5wasm.Group ? entity.keys() : [];
      throw invalidArgument(where, `is a ${entity instanceof h5wasm.Group ? "group" : "non-dataset object"}, not a dataset${keys.length > 0 ? ` (it holds: ${keys.slice(0, 20).join(", ")})` : ""}`);
    }
    const ds = entity;
    const dtype = dtypeOf(ds, where);
    const { zyx: shape, lead } = zyxOf(ds.shape ?? [], where, "dataset");
    const chunkShape = chunkShapeOf(ds, shape, lead, DATA_TYPES[dtype].bytes);
    const voxelSizeNm = options.voxelSizeNm ?? voxelSizeOf(ds, where) ?? DEFAULT_VOXEL_SIZE_NM;
    const grid = shape.map((s, d) => Math.ceil(s / chunkShape[d]!)) as Vec3;
    const Ctor = DATA_TYPES[dtype].array;
    let closed = false;
    return {
      metadata: {
        format: "hdf5",
        dtype,
        scales: [{ index: 0, key: dsName, shapeZyx: shape, voxelSizeNm, chunkShapeZyx: chunkShape, offsetZyx: [0, 0, 0] }],
        fillValue: DATA_TYPES[dtype].isBigInt ? 0n : 0,
        kind: dtype === "uint32" || dtype === "uint64" || dtype === "int64" ? "segmentation" : "image",
      },
      cacheKey: `hdf5:${where}`,
      async readChunk(scale: number, idx: Vec3, opts: ReadOptions = {}): Promise<DecodedChunk> {
        if (scale !== 0) throw invalidArgument("scale", `HDF5 datasets have one scale, got ${scale}`);
        if (!idx.every((v, d) => Number.isInteger(v) && v >= 0 && v < grid[d]!)) {
          throw invalidArgument("chunk", `chunk index [${idx.join(", ")}] is outside the grid [${grid.join(", ")}]`);
        }
        throwIfAborted(opts.signal);
        if (closed) throw new SpatialSamError("FailedPrecondition", "the volume was closed", { field: where });
        const lo = idx.map((i, d) => i * chunkShape[d]!) as Vec3;
        const hi = lo.map((l, d) => Math.min(shape[d]!, l + chunkShape[d]!)) as Vec3;
        const ranges: [number, number][] = [];
        for (let d = 0; d < lead; d++) ranges.push([0, 1]);
        // A 2-D dataset (lead = -1) has no z dim to slice.
        for (let d = lead < 0 ? 1 : 0; d < 3; d++) ranges.push([lo[d]!, hi[d]!]);
        let data: unknown;
        try {
          data = ds.slice(ranges);
        } catch (e) {
          throw dataCorruption(`${where} [${lo.join(",")}]..[${hi.join(",")}]`, `cannot read (${h5Message(e)})`, e);
        }
        const shapeZyx = hi.map((h, d) => h - lo[d]!) as Vec3;
        const n = shapeZyx[0] * shapeZyx[1] * shapeZyx[2];
        if (!(data instanceof Ctor) || (data as TypedArray).length !== n) {
          throw dataCorruption(where, `hyperslab [${lo.join(",")}]..[${hi.join(",")}] did not decode to ${n} ${dtype} values`);
        }
        return { data: data as TypedArray, shapeZyx };
      },
      async close(): Promise<void> {
        if (closed) return;
        closed = true;
        h5file.close();
      },
    };
  } catch (e) {
    h5file.close();
    throw e;
  }
}

/** The `h5://` driver: the store root is the .h5 file, the URL fragment the dataset path. */
export async function openH5(store: Store, ctx: Pick<FormatContext, "storeUrl" | "fragment">, options: { signal?: AbortSignal } = {}): Promise<ChunkSource> {
  const file = withoutQuery(ctx.storeUrl);
  if (ctx.fragment === undefined || ctx.fragment.replace(/^\/+/, "") === "") {
    throw invalidArgument("url", `an h5:// URL names the dataset after "#", e.g. h5://${file}#/volumes/raw`);
  }
  if (!(store instanceof FileStore)) {
    throw new SpatialSamError("Unimplemented", "HDF5 volumes are read from local files (file://) only", { field: file });
  }
  let dataset: string;
  try {
    dataset = decodeURIComponent(ctx.fragment);
  } catch (e) {
    throw invalidArgument("url", `the dataset path after "#" is not valid percent-encoding: ${ctx.fragment}`, e);
  }
  const filePath = await store.resolve("");
  return openH5File(filePath, dataset, file, { ...options, voxelSizeNm: voxelSizeFromQuery(ctx.storeUrl) });
}

registerFormat("h5", (store, ctx) => openH5(store, ctx));
