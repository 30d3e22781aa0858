// The one exhaustive table of element types, shared by volumes, tensors, ONNX and the wire.
// uint64/int64 are bigint arrays end to end (segment ids must never pass through a double).

export type DataType = "uint8" | "uint16" | "uint32" | "uint64" | "int8" | "int16" | "int32" | "int64" | "float32" | "float64";

export type TypedArray =
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Float32Array
  | Float64Array;

interface DataTypeInfo {
  bytes: number;
  array: { new (length: number): TypedArray; new (buffer: ArrayBuffer, byteOffset: number, length: number): TypedArray };
  /** Name of the matching onnxruntime tensor type. */
  onnx: "uint8" | "uint16" | "uint32" | "uint64" | "int8" | "int16" | "int32" | "int64" | "float32" | "float64";
  /** numpy dtype string, little-endian (used by Zarr v2 and fixture files). */
  numpy: string;
  isFloat: boolean;
  isBigInt: boolean;
}

export const DATA_TYPES: Record<DataType, DataTypeInfo> = {
  uint8: { bytes: 1, array: Uint8Array, onnx: "uint8", numpy: "|u1", isFloat: false, isBigInt: false },
  uint16: { bytes: 2, array: Uint16Array, onnx: "uint16", numpy: "<u2", isFloat: false, isBigInt: false },
  uint32: { bytes: 4, array: Uint32Array, onnx: "uint32", numpy: "<u4", isFloat: false, isBigInt: false },
  uint64: { bytes: 8, array: BigUint64Array, onnx: "uint64", numpy: "<u8", isFloat: false, isBigInt: true },
  int8: { bytes: 1, array: Int8Array, onnx: "int8", numpy: "|i1", isFloat: false, isBigInt: false },
  int16: { bytes: 2, array: Int16Array, onnx: "int16", numpy: "<i2", isFloat: false, isBigInt: false },
  int32: { bytes: 4, array: Int32Array, onnx: "int32", numpy: "<i4", isFloat: false, isBigInt: false },
  int64: { bytes: 8, array: BigInt64Array, onnx: "int64", numpy: "<i8", isFloat: false, isBigInt: true },
  float32: { bytes: 4, array: Float32Array, onnx: "float32", numpy: "<f4", isFloat: true, isBigInt: false },
  float64: { bytes: 8, array: Float64Array, onnx: "float64", numpy: "<f8", isFloat: true, isBigInt: false },
};

export function isDataType(s: unknown): s is DataType {
  return typeof s === "string" && Object.prototype.hasOwnProperty.call(DATA_TYPES, s);
}

/** Allocates a zero-filled array of `length` elements of `dtype`. */
export function allocate(dtype: DataType, length: number): TypedArray {
  return new DATA_TYPES[dtype].array(length);
}

/**
 * Views little-endian bytes as a typed array of `dtype`, copying only when the bytes are not
 * aligned for that type (this platform is little-endian, as are all formats we read).
 */
export function viewBytes(dtype: DataType, bytes: Uint8Array): TypedArray {
  const info = DATA_TYPES[dtype];
  if (bytes.byteLength % info.bytes !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  const n = bytes.byteLength / info.bytes;
  if (bytes.byteOffset % info.bytes === 0) return new info.array(bytes.buffer as ArrayBuffer, bytes.byteOffset, n);
  const copy = new Uint8Array(bytes);
  return new info.array(copy.buffer, 0, n);
}

/** The bytes of a typed array (a view, no copy). */
export function asBytes(a: TypedArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
