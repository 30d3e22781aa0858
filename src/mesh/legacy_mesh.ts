// Neuroglancer's precomputed LEGACY mesh format: a per-segment manifest `<segment>:0` listing
// fragment names, and fragments as little-endian binaries (uint32 vertex count, float32 xyz vertex
// positions in nm, uint32 triangle vertex indices). Shared by the bridge (writes) and tests (reads).

import { invalidArgument } from "#src/errors.ts";

/** The `@type` of the mesh folder's `info` that tells Neuroglancer the meshes are legacy ones. */
export const LEGACY_MESH_TYPE = "neuroglancer_legacy_mesh";

/** A triangle mesh: `positionsXyz` is [x0, y0, z0, x1, ...] in nm, `indices` three per triangle. */
export interface TriangleMesh {
  positionsXyz: Float32Array;
  indices: Uint32Array;
}

const MAX_UINT64 = 2n ** 64n - 1n;

/** A segment id as it appears in a URL: a decimal uint64. InvalidArgument naming `field` otherwise. */
export function parseSegmentId(text: string, field = "segment"): bigint {
  if (!/^\d{1,20}$/.test(text)) throw invalidArgument(field, `expected a decimal uint64 segment id, got ${JSON.stringify(text.slice(0, 100))}`);
  const id = BigInt(text);
  if (id > MAX_UINT64) throw invalidArgument(field, `segment id ${text} is beyond the uint64 range`);
  return id;
}

export function encodeLegacyFragment(mesh: TriangleMesh): Uint8Array {
  const n = mesh.positionsXyz.length / 3;
  const out = new Uint8Array(4 + mesh.positionsXyz.byteLength + mesh.indices.byteLength);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, n, true);
  let at = 4;
  for (const v of mesh.positionsXyz) {
    dv.setFloat32(at, v, true);
    at += 4;
  }
  for (const i of mesh.indices) {
    dv.setUint32(at, i, true);
    at += 4;
  }
  return out;
}

/** Decodes a fragment; InvalidArgument naming `fragment` when its length or indices are inconsistent. */
export function decodeLegacyFragment(bytes: Uint8Array): TriangleMesh {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4) throw invalidArgument("fragment", `expected at least 4 bytes, got ${bytes.byteLength}`);
  const n = dv.getUint32(0, true);
  const rest = bytes.byteLength - 4 - 12 * n;
  if (rest < 0 || rest % 12 !== 0) throw invalidArgument("fragment", `${bytes.byteLength} bytes do not hold ${n} vertices and whole triangles`);
  const positionsXyz = new Float32Array(3 * n);
  for (let i = 0; i < 3 * n; i++) positionsXyz[i] = dv.getFloat32(4 + 4 * i, true);
  const indices = new Uint32Array(rest / 4);
  for (let i = 0; i < indices.length; i++) {
    indices[i] = dv.getUint32(4 + 12 * n + 4 * i, true);
    if (indices[i]! >= n) throw invalidArgument("fragment", `triangle index ${indices[i]} is not below the vertex count ${n}`);
  }
  return { positionsXyz, indices };
}
