// Conversions between wire messages and domain types, validating as they go: every error names
// the request field it is about.
import { DataType as WireDataType, type Box3 as WireBox3, type Tensor as WireTensor } from "#proto/spatial_sam/v1/common.ts";
import { asBytes, DATA_TYPES, viewBytes, type DataType } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";
import type { TensorData } from "#server/onnx/model_registry.ts";

export type { TensorData };

const WIRE_OF: Record<DataType, WireDataType> = {
  uint8: WireDataType.DATA_TYPE_UINT8,
  uint16: WireDataType.DATA_TYPE_UINT16,
  uint32: WireDataType.DATA_TYPE_UINT32,
  uint64: WireDataType.DATA_TYPE_UINT64,
  int8: WireDataType.DATA_TYPE_INT8,
  int16: WireDataType.DATA_TYPE_INT16,
  int32: WireDataType.DATA_TYPE_INT32,
  int64: WireDataType.DATA_TYPE_INT64,
  float32: WireDataType.DATA_TYPE_FLOAT32,
  float64: WireDataType.DATA_TYPE_FLOAT64,
};
const DOMAIN_OF = new Map<WireDataType, DataType>(
  (Object.entries(WIRE_OF) as [DataType, WireDataType][]).map(([d, w]) => [w, d]),
);

export function toWireDataType(dtype: DataType): WireDataType {
  return WIRE_OF[dtype];
}

export function fromWireDataType(w: WireDataType, field: string): DataType {
  const d = DOMAIN_OF.get(w);
  if (d === undefined) throw invalidArgument(field, `unknown or unspecified data type ${String(w)}`);
  return d;
}

/** Largest element count accepted in one wire tensor (the message size limit bounds it further). */
const MAX_TENSOR_ELEMENTS = 2 ** 31;

export function fromWireTensor(t: WireTensor | undefined, field: string): TensorData {
  if (t === undefined) throw invalidArgument(field, "is required");
  const dtype = fromWireDataType(t.dtype, `${field}.dtype`);
  const dims = t.shape.map((d, i) => {
    if (d < 0n || d > BigInt(MAX_TENSOR_ELEMENTS)) throw invalidArgument(`${field}.shape[${i}]`, `dimension ${d} is out of range`);
    return Number(d);
  });
  const count = dims.reduce((a, b) => a * b, 1);
  if (count > MAX_TENSOR_ELEMENTS) throw invalidArgument(`${field}.shape`, `${count} elements is more than ${MAX_TENSOR_ELEMENTS}`);
  const expected = count * DATA_TYPES[dtype].bytes;
  if (t.data.byteLength !== expected) {
    throw invalidArgument(`${field}.data`, `has ${t.data.byteLength} bytes; shape [${dims.join(", ")}] of ${dtype} needs ${expected}`);
  }
  return { dtype, dims, data: viewBytes(dtype, t.data) };
}

export function toWireTensor(t: TensorData): WireTensor {
  return { dtype: WIRE_OF[t.dtype], shape: t.dims.map((d) => BigInt(d)), data: Buffer.from(asBytes(t.data)) };
}

function vec3(v: { z: number; y: number; x: number } | undefined, field: string): Vec3 {
  if (v === undefined) throw invalidArgument(field, "is required");
  return [v.z, v.y, v.x];
}

export function fromWireBox(b: WireBox3 | undefined, field: string): Box3 {
  if (b === undefined) throw invalidArgument(field, "is required");
  const box = { offsetZyx: vec3(b.offset, `${field}.offset`), shapeZyx: vec3(b.shape, `${field}.shape`) };
  box.shapeZyx.forEach((s, i) => {
    if (s <= 0) throw invalidArgument(`${field}.shape.${"zyx"[i]}`, `must be positive, got ${s}`);
  });
  return box;
}

export function toWireBox(b: Box3): WireBox3 {
  const [oz, oy, ox] = b.offsetZyx;
  const [sz, sy, sx] = b.shapeZyx;
  return { offset: { z: oz, y: oy, x: ox }, shape: { z: sz, y: sy, x: sx } };
}
