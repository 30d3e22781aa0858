// Reads NumPy .npy files (format 1.0-3.0, C order, little-endian) written by the Python fixture
// generators, as the project's typed arrays.

import { readFileSync } from "node:fs";
import { DATA_TYPES, viewBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";

export interface NpyArray {
  dtype: DataType;
  shape: number[];
  data: TypedArray;
}

export function parseNpy(bytes: Uint8Array, name = "npy"): NpyArray {
  const magic = String.fromCharCode(...bytes.subarray(0, 6));
  if (magic !== "\x93NUMPY") throw new Error(`${name}: not a .npy file`);
  const major = bytes[6]!;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw new Error(`${name}: bad header ${header}`);
  if (fortran === "True") throw new Error(`${name}: Fortran order is not supported`);
  const dtype = (Object.keys(DATA_TYPES) as DataType[]).find((d) => DATA_TYPES[d].numpy === descr || DATA_TYPES[d].numpy === descr.replace("|", "<"));
  if (dtype === undefined) throw new Error(`${name}: unsupported dtype ${descr}`);
  const shape = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map(Number);
  const body = bytes.subarray(start + headerLen);
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype, shape, data: viewBytes(dtype, body.subarray(0, n * DATA_TYPES[dtype].bytes)) };
}

export function readNpy(path: string): NpyArray {
  return parseNpy(new Uint8Array(readFileSync(path)), path);
}
