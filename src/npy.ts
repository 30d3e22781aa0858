// Encodes arrays as NumPy .npy (format 1.0, C order, little-endian): how TypeScript hands volumes
// to the Python side (training data for the demo models).

import { DATA_TYPES, asBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";

/** The bytes of a .npy file holding `data` (C order) with shape `shape`. */
export function encodeNpy(dtype: DataType, shape: readonly number[], data: TypedArray): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (shape.some((s) => !Number.isInteger(s) || s < 0)) throw invalidArgument("shape", `expected non-negative integers, got [${shape.join(", ")}]`);
  if (data.length !== n) throw invalidArgument("data", `${data.length} elements do not fill shape [${shape.join(", ")}] (${n})`);
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '${DATA_TYPES[dtype].numpy}', 'fortran_order': False, 'shape': (${dims}), }`;
  // Magic (6) + version (2) + header length (2) + header + "\n" is padded to a multiple of 64.
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const body = asBytes(data);
  const out = new Uint8Array(10 + header.length + body.byteLength);
  out.set([0x93, ...new TextEncoder().encode("NUMPY"), 1, 0], 0);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(body, 10 + header.length);
  return out;
}
