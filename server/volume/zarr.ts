// Zarr v2/v3 driver (zarr://) on zarrita: a single 3D array, or an OME-NGFF 0.4/0.5 multiscale
// group whose datasets become scale levels. Singleton non-spatial axes (c, t) are dropped; a
// channel axis with more than one channel is refused (we read single-channel EM volumes).

import * as zarr from "zarrita";
import type { AbsolutePath, AsyncReadable, RangeQuery } from "zarrita";
import { DATA_TYPES, isDataType } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, isSpatialSamError, notFound } from "#src/errors.ts";
import type { ChunkSource, DecodedChunk, ReadOptions, ScaleLevel, Store, Vec3, VolumeMetadata } from "#src/volume/types.ts";
import "./codecs.ts";
import { registerFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";

/** Nanometres per unit, for OME-NGFF axis units (UDUNITS names) and common abbreviations. */
export const UNIT_TO_NM: Record<string, number> = {
  angstrom: 0.1,
  nanometer: 1,
  nm: 1,
  micrometer: 1000,
  um: 1000,
  µm: 1000,
  millimeter: 1e6,
  mm: 1e6,
  centimeter: 1e7,
  meter: 1e9,
  m: 1e9,
};

interface Probe {
  signal?: AbortSignal;
  /** Set by the store adapter when the chunk's key (or its shard) is not stored. */
  missing?: boolean;
}

/** Presents a Store as a zarrita store. Keys arrive as "/a/b"; store keys are relative. */
function zarritaStore(store: Store): AsyncReadable {
  const mark = (bytes: Uint8Array | undefined, opts: unknown) => {
    if (bytes === undefined && typeof opts === "object" && opts !== null) (opts as Probe).missing = true;
    return bytes;
  };
  return {
    async get(key: AbsolutePath, opts?: { signal?: AbortSignal }) {
      return mark(await store.get(key.slice(1), opts?.signal === undefined ? {} : { signal: opts.signal }), opts);
    },
    async getRange(key: AbsolutePath, range: RangeQuery, opts?: { signal?: AbortSignal }) {
      const signal = opts?.signal === undefined ? {} : { signal: opts.signal };
      // Ranges come from shard indexes: a corrupt index yields nonsense ranges, and a truncated
      // shard yields short reads. Plain Errors here become DataCorruption naming the chunk.
      const want = "suffixLength" in range ? range.suffixLength : range.length;
      if ("offset" in range && (!Number.isSafeInteger(range.offset) || range.offset < 0)) throw new Error(`invalid byte range offset ${range.offset} in ${key}`);
      if (!Number.isSafeInteger(want) || want < 0) throw new Error(`invalid byte range length ${want} in ${key}`);
      const bytes =
        "suffixLength" in range
          ? await store.get(key.slice(1), { ...signal, suffixLength: range.suffixLength })
          : await store.get(key.slice(1), { ...signal, range: [range.offset, range.offset + range.length] });
      if (bytes !== undefined && bytes.length !== want) throw new Error(`${key} is truncated: read ${bytes.length} of ${want} bytes`);
      return mark(bytes, opts);
    },
  };
}

const joinKey = (...parts: string[]) => parts.filter((p) => p !== "" && p !== ".").join("/");

async function readJson(store: Store, key: string, file: string, signal?: AbortSignal): Promise<Record<string, unknown> | undefined> {
  const bytes = await store.get(key, signal === undefined ? {} : { signal });
  if (bytes === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw invalidArgument(file, `invalid JSON: ${(e as Error).message}`, e);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw invalidArgument(file, "expected a JSON object");
  return value as Record<string, unknown>;
}

type NodeMeta = { version: 2 | 3; kind: "array" | "group"; file: string; json: Record<string, unknown>; attrs: Record<string, unknown> };

/** Reads the metadata documents of the node at `path` ourselves, so bad JSON names its file. */
async function readNodeMeta(store: Store, path: string): Promise<NodeMeta | undefined> {
  const file = (name: string) => `${store.url.replace(/\/+$/, "")}/${joinKey(path, name)}`;
  const v3 = await readJson(store, joinKey(path, "zarr.json"), file("zarr.json"));
  if (v3 !== undefined) {
    if (v3.zarr_format !== 3) throw invalidArgument(`${file("zarr.json")}: zarr_format`, `expected 3, got ${JSON.stringify(v3.zarr_format)}`);
    const kind = v3.node_type;
    if (kind !== "array" && kind !== "group") throw invalidArgument(`${file("zarr.json")}: node_type`, `expected "array" or "group", got ${JSON.stringify(kind)}`);
    const attrs = (v3.attributes ?? {}) as Record<string, unknown>;
    return { version: 3, kind, file: file("zarr.json"), json: v3, attrs };
  }
  const zarray = await readJson(store, joinKey(path, ".zarray"), file(".zarray"));
  const zattrs = (await readJson(store, joinKey(path, ".zattrs"), file(".zattrs"))) ?? {};
  if (zarray !== undefined) return { version: 2, kind: "array", file: file(".zarray"), json: zarray, attrs: zattrs };
  const zgroup = await readJson(store, joinKey(path, ".zgroup"), file(".zgroup"));
  if (zgroup !== undefined) return { version: 2, kind: "group", file: file(".zgroup"), json: zgroup, attrs: zattrs };
  return undefined;
}

function codecKnown(name: string): boolean {
  return name === "sharding_indexed" || zarr.registry.has(name);
}

/** Refuses unknown codecs and dtypes when opening, not at the first chunk read. */
function checkArrayMeta(meta: NodeMeta): void {
  const j = meta.json;
  if (meta.version === 2) {
    const dtype = j.dtype;
    const m = typeof dtype === "string" ? /^([<>|])([uif])([1248])$/.exec(dtype) : null;
    if (m === null) throw invalidArgument(`${meta.file}: dtype`, `unsupported or malformed numpy dtype ${JSON.stringify(dtype)} (expected e.g. "<u2", ">f4", "|u1")`);
    if (m[1] === "|" && m[3] !== "1") throw invalidArgument(`${meta.file}: dtype`, `byte order "|" is only valid for 1-byte types, got ${dtype}`);
    if (m[2] === "f" && (m[3] === "1" || m[3] === "2")) throw invalidArgument(`${meta.file}: dtype`, `unsupported float type ${dtype}`);
    const codecs = [...((j.filters as { id?: unknown }[] | null) ?? []), ...(j.compressor === null || j.compressor === undefined ? [] : [j.compressor as { id?: unknown }])];
    for (const c of codecs) {
      const id = typeof c === "object" && c !== null ? c.id : undefined;
      if (typeof id !== "string" || !zarr.registry.has(`numcodecs.${id}`)) {
        throw invalidArgument(`${meta.file}: compressor`, `unknown codec ${JSON.stringify(id)}`);
      }
    }
    if (j.order !== "C" && j.order !== "F") throw invalidArgument(`${meta.file}: order`, `expected "C" or "F", got ${JSON.stringify(j.order)}`);
    return;
  }
  const walk = (codecs: unknown, field: string) => {
    if (!Array.isArray(codecs)) throw invalidArgument(`${meta.file}: ${field}`, "expected a list of codecs");
    codecs.forEach((c: { name?: unknown; configuration?: Record<string, unknown> }, i) => {
      if (typeof c?.name !== "string" || !codecKnown(c.name)) throw invalidArgument(`${meta.file}: ${field}[${i}].name`, `unknown codec ${JSON.stringify(c?.name)}`);
      if (c.name === "bytes") {
        const endian = c.configuration?.endian;
        if (endian !== undefined && endian !== "little" && endian !== "big") {
          throw invalidArgument(`${meta.file}: ${field}[${i}].configuration.endian`, `expected "little" or "big", got ${JSON.stringify(endian)}`);
        }
      }
      if (c.name === "sharding_indexed") {
        walk(c.configuration?.codecs, `${field}[${i}].configuration.codecs`);
        walk(c.configuration?.index_codecs, `${field}[${i}].configuration.index_codecs`);
      }
    });
  };
  if (!isDataType(j.data_type)) throw invalidArgument(`${meta.file}: data_type`, `unsupported data type ${JSON.stringify(j.data_type)}`);
  walk(j.codecs, "codecs");
}

interface Level {
  array: zarr.Array<zarr.DataType, AsyncReadable>;
  key: string;
  /** Index of the z, y, x axes in the array's dimensions; other axes have size 1. */
  spatial: Vec3;
  scale: ScaleLevel;
}

interface Axis {
  name: string;
  type?: string;
  unit?: string;
}

function parseAxes(raw: unknown, ndim: number, field: string): Axis[] {
  if (raw === undefined) {
    if (ndim < 3) throw invalidArgument(field, `a ${ndim}-dimensional array has no z, y, x axes`);
    return Array.from({ length: ndim }, (_, i) => ({ name: ["z", "y", "x"][i - (ndim - 3)] ?? `dim_${i}`, type: i >= ndim - 3 ? "space" : "unknown" }));
  }
  if (!Array.isArray(raw) || raw.length !== ndim) throw invalidArgument(field, `expected ${ndim} axes, got ${JSON.stringify(raw)}`);
  return raw.map((a: unknown, i) => {
    if (typeof a === "string") return { name: a };
    if (typeof a === "object" && a !== null && typeof (a as Axis).name === "string") return a as Axis;
    throw invalidArgument(`${field}[${i}]`, "expected an axis name or {name, type, unit}");
  });
}

/** Finds the z, y, x axes (in that storage order) and checks that all other axes have size 1. */
function spatialAxes(axes: Axis[], shape: number[], field: string): Vec3 {
  const find = (n: string) => axes.findIndex((a) => a.name.toLowerCase() === n);
  const idx = [find("z"), find("y"), find("x")] as Vec3;
  if (idx.some((i) => i < 0)) throw invalidArgument(field, `expected axes named z, y and x, got [${axes.map((a) => a.name).join(", ")}]`);
  if (!(idx[0] < idx[1] && idx[1] < idx[2])) {
    throw invalidArgument(field, `spatial axes must be stored in z, y, x order, got [${axes.map((a) => a.name).join(", ")}]`);
  }
  axes.forEach((a, i) => {
    if (!idx.includes(i) && shape[i] !== 1) {
      throw invalidArgument(field, `axis ${a.name} has size ${shape[i]}; only single-channel volumes are read (open one channel as its own array)`);
    }
  });
  return idx;
}

function unitToNm(unit: string | undefined, field: string): number {
  if (unit === undefined) return 1;
  const f = UNIT_TO_NM[unit.toLowerCase()];
  if (f === undefined) throw invalidArgument(field, `unknown spatial unit ${JSON.stringify(unit)}`);
  return f;
}

function numbers(v: unknown, n: number, field: string): number[] {
  if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === "number" && Number.isFinite(x))) {
    throw invalidArgument(field, `expected ${n} numbers, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

/** Scale and translation (physical units) from OME-NGFF coordinateTransformations (dataset then global). */
function transforms(list: unknown, ndim: number, field: string): { scale: number[]; translation: number[] } {
  let scale = new Array<number>(ndim).fill(1);
  let translation = new Array<number>(ndim).fill(0);
  if (list === undefined) return { scale, translation };
  if (!Array.isArray(list)) throw invalidArgument(field, "expected a list of transformations");
  list.forEach((t: { type?: unknown; scale?: unknown; translation?: unknown }, i) => {
    if (t?.type === "scale") scale = numbers(t.scale, ndim, `${field}[${i}].scale`);
    else if (t?.type === "translation") translation = numbers(t.translation, ndim, `${field}[${i}].translation`);
    else if (t?.type !== "identity") throw invalidArgument(`${field}[${i}].type`, `unsupported transformation ${JSON.stringify(t?.type)}`);
  });
  return { scale, translation };
}

async function openArray(store: Store, root: zarr.Location<AsyncReadable>, path: string, meta: NodeMeta): Promise<zarr.Array<zarr.DataType, AsyncReadable>> {
  checkArrayMeta(meta);
  try {
    const loc = path === "" ? root : root.resolve(path);
    return meta.version === 2 ? await zarr.open.v2(loc, { kind: "array", attrs: false }) : await zarr.open.v3(loc, { kind: "array" });
  } catch (e) {
    if (isSpatialSamError(e)) throw e;
    throw invalidArgument(meta.file, `cannot open the array: ${(e as Error).message}`, e);
  }
}

function fillValueOf(array: zarr.Array<zarr.DataType, AsyncReadable>, dtype: DataType, file: string): number | bigint {
  const fv: unknown = array.fillValue;
  try {
    if (DATA_TYPES[dtype].isBigInt) return BigInt((fv as bigint | number | null) ?? 0);
    return fv === null || fv === undefined ? 0 : Number(fv);
  } catch (e) {
    throw invalidArgument(`${file}: fill_value`, `${String(fv)} is not a valid ${dtype}`, e);
  }
}

/** Converts a decoded chunk with arbitrary strides (Zarr v2 order "F") to C order over the spatial axes. */
function toCOrder(data: TypedArray, shape: Vec3, stride: Vec3): TypedArray {
  const [nz, ny, nx] = shape;
  if (stride[2] === 1 && stride[1] === nx && stride[0] === ny * nx) return data;
  const out = new (data.constructor as new (n: number) => TypedArray)(nz * ny * nx) as Uint8Array;
  const src = data as Uint8Array;
  let o = 0;
  for (let z = 0; z < nz; z++) for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) out[o++] = src[z * stride[0] + y * stride[1] + x * stride[2]]!;
  return out as TypedArray;
}

class ZarrChunkSource implements ChunkSource {
  readonly metadata: VolumeMetadata;
  readonly cacheKey: string;
  readonly #levels: Level[];

  constructor(metadata: VolumeMetadata, cacheKey: string, levels: Level[]) {
    this.metadata = metadata;
    this.cacheKey = cacheKey;
    this.#levels = levels;
  }

  async readChunk(scale: number, chunkIndexZyx: Vec3, options: ReadOptions = {}): Promise<DecodedChunk | undefined> {
    const level = this.#levels[scale]!;
    const coords = new Array<number>(level.array.shape.length).fill(0);
    level.spatial.forEach((axis, d) => (coords[axis] = chunkIndexZyx[d]!));
    const probe: Probe = options.signal === undefined ? {} : { signal: options.signal };
    const where = `${this.cacheKey}/${level.key}: chunk [${coords.join(", ")}]`;
    let chunk: zarr.Chunk<zarr.DataType>;
    try {
      chunk = await level.array.getChunk(coords, probe);
    } catch (e) {
      if (isSpatialSamError(e)) throw e;
      if (options.signal?.aborted) throw e;
      throw dataCorruption(where, `cannot decode: ${(e as Error).message}`, e);
    }
    if (probe.missing === true) return undefined;
    const shape = level.spatial.map((a) => chunk.shape[a]!) as Vec3;
    const stride = level.spatial.map((a) => chunk.stride[a]!) as Vec3;
    const data = chunk.data as TypedArray;
    const expected = chunk.shape.reduce((a, b) => a * b, 1);
    if (data.length !== expected) throw dataCorruption(where, `decoded ${data.length} elements, expected ${expected}`);
    return { data: toCOrder(data, shape, stride), shapeZyx: shape };
  }
}

function levelFromArray(array: zarr.Array<zarr.DataType, AsyncReadable>, key: string, axes: Axis[], field: string, tf: { scale: number[]; translation: number[] }, index: number): Level {
  const spatial = spatialAxes(axes, array.shape, field);
  const unitNm = spatial.map((a) => unitToNm(axes[a]!.unit, `${field}[${a}].unit`));
  const voxelSizeNm = spatial.map((a, d) => tf.scale[a]! * unitNm[d]!) as Vec3;
  const offsetZyx = spatial.map((a) => Math.round(tf.translation[a]! / tf.scale[a]!)) as Vec3;
  return {
    array,
    key,
    spatial,
    scale: {
      index,
      key,
      shapeZyx: spatial.map((a) => array.shape[a]!) as Vec3,
      chunkShapeZyx: spatial.map((a) => array.chunks[a]!) as Vec3,
      voxelSizeNm,
      offsetZyx,
    },
  };
}

/** Opens `zarr://<store>`: an array, or an OME-NGFF multiscale group. */
export async function openZarr(store: Store, ctx: FormatContext): Promise<ChunkSource> {
  const root = zarr.root(zarritaStore(store));
  const top = await readNodeMeta(store, "");
  if (top === undefined) throw notFound(ctx.storeUrl, "no Zarr array or group here (no zarr.json, .zarray or .zgroup)");
  const levels: Level[] = [];
  let kind: VolumeMetadata["kind"] = "image";
  if (top.kind === "array") {
    const array = await openArray(store, root, "", top);
    const ndim = array.shape.length;
    // Dimension names are used when they name z, y and x; otherwise the last three axes are z, y, x.
    const names = array.dimensionNames;
    const named = names !== undefined && ["z", "y", "x"].every((a) => names.some((n) => typeof n === "string" && n.toLowerCase() === a));
    const axes = parseAxes(named ? names : undefined, ndim, `${top.file}: dimension_names`);
    levels.push(levelFromArray(array, "", axes, `${top.file}: dimension_names`, { scale: new Array<number>(ndim).fill(1), translation: new Array<number>(ndim).fill(0) }, 0));
  } else {
    const ome = (top.attrs.ome ?? top.attrs) as Record<string, unknown>;
    const ms = ome.multiscales;
    const field = `${top.file}: multiscales`;
    if (!Array.isArray(ms) || ms.length === 0) throw invalidArgument(field, "a group must carry OME-NGFF multiscales metadata (or open one of its arrays directly)");
    const m = ms[0] as { axes?: unknown; datasets?: unknown; coordinateTransformations?: unknown };
    if (!Array.isArray(m.datasets) || m.datasets.length === 0) throw invalidArgument(`${field}[0].datasets`, "expected a non-empty list");
    if (top.attrs["image-label"] !== undefined) kind = "segmentation";
    for (const [i, d] of (m.datasets as { path?: unknown; coordinateTransformations?: unknown }[]).entries()) {
      const dField = `${field}[0].datasets[${i}]`;
      if (typeof d?.path !== "string" || d.path === "" || d.path.split("/").includes("..")) throw invalidArgument(`${dField}.path`, `expected a relative path, got ${JSON.stringify(d?.path)}`);
      const meta = await readNodeMeta(store, d.path);
      if (meta === undefined || meta.kind !== "array") throw notFound(`${dField}.path`, `no Zarr array at ${d.path}`);
      const array = await openArray(store, root, d.path, meta);
      const ndim = array.shape.length;
      const axes = parseAxes(m.axes, ndim, `${field}[0].axes`);
      const own = transforms(d.coordinateTransformations, ndim, `${dField}.coordinateTransformations`);
      const global = transforms(m.coordinateTransformations, ndim, `${field}[0].coordinateTransformations`);
      const tf = { scale: own.scale.map((s, a) => s * global.scale[a]!), translation: own.translation.map((t, a) => t * global.scale[a]! + global.translation[a]!) };
      levels.push(levelFromArray(array, d.path, axes, `${field}[0].axes`, tf, i));
    }
  }
  const dtypes = new Set(levels.map((l) => l.array.dtype));
  const dtype = levels[0]!.array.dtype;
  if (!isDataType(dtype)) throw invalidArgument(`${top.file}: dtype`, `unsupported data type ${dtype}`);
  if (dtypes.size !== 1) throw invalidArgument(`${top.file}: multiscales`, `levels have different data types: ${[...dtypes].join(", ")}`);
  const metadata: VolumeMetadata = {
    format: top.version === 2 ? "zarr-v2" : "zarr-v3",
    dtype,
    scales: levels.map((l) => l.scale),
    fillValue: fillValueOf(levels[0]!.array, dtype, top.file),
    kind,
  };
  return new ZarrChunkSource(metadata, `zarr://${store.url}`, levels);
}

registerFormat("zarr", openZarr);
