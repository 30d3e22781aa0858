// Pieces shared by the slice-per-file and single-file drivers (TIFF, PNG folders, HDF5): the
// voxel-size query parameter, slice listing in name order, and mapping decoder failures to typed errors.

import { cancelled, dataCorruption, invalidArgument, isSpatialSamError, notFound, SpatialSamError } from "#src/errors.ts";
import type { Store, Vec3 } from "#src/volume/types.ts";

/**
 * Voxel size used when a file carries no calibration and the URL gives none. 1 nm per voxel keeps
 * physical and voxel coordinates equal, which is what viewers show for uncalibrated data.
 */
export const DEFAULT_VOXEL_SIZE_NM: Vec3 = [1, 1, 1];

/**
 * `voxel_size_nm=z,y,x` from the query of a store URL (e.g. `file:///x.tif?voxel_size_nm=40,4,4`),
 * or undefined when absent. InvalidArgument naming `url.voxel_size_nm` when malformed.
 */
export function voxelSizeFromQuery(storeUrl: string): Vec3 | undefined {
  const q = storeUrl.indexOf("?");
  if (q < 0) return undefined;
  const raw = new URLSearchParams(storeUrl.slice(q + 1).split("#")[0]).get("voxel_size_nm");
  if (raw === null) return undefined;
  const parts = raw.split(",").map((s) => Number(s.trim()));
  if (parts.length !== 3 || parts.some((v) => !Number.isFinite(v) || v <= 0)) {
    throw invalidArgument("url.voxel_size_nm", `expected three positive numbers z,y,x in nm, got ${JSON.stringify(raw)}`);
  }
  return parts as Vec3;
}

/** The store URL without its query (what names the file or folder in messages and cache keys). */
export function withoutQuery(storeUrl: string): string {
  const q = storeUrl.indexOf("?");
  return q < 0 ? storeUrl : storeUrl.slice(0, q);
}

const collator = new Intl.Collator("en", { numeric: true });

/** Name order with numbers compared by value, so unpadded `2.png` comes before `10.png`. */
export function naturalCompare(a: string, b: string): number {
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}

/** The last path segment of a store key. */
export function baseName(key: string): string {
  const i = key.lastIndexOf("/");
  return i < 0 ? key : key.slice(i + 1);
}

/**
 * Keys of the slice files directly under `prefix` whose names match `pattern`, in natural name
 * order; hidden files (".x") are skipped. NotFound naming `folder` when there is none.
 */
export async function listSliceKeys(store: Store, prefix: string, pattern: RegExp, what: string, folder: string, signal?: AbortSignal): Promise<string[]> {
  if (store.list === undefined) {
    throw new SpatialSamError("Unimplemented", `a folder of ${what} slices needs a store that can list (this one cannot)`, { field: folder });
  }
  const keys = (await store.list(prefix, signal === undefined ? {} : { signal })).filter((k) => {
    const name = baseName(k);
    return !name.startsWith(".") && pattern.test(name);
  });
  if (keys.length === 0) throw notFound(folder, `no ${what} slices in this folder`);
  return keys.sort((a, b) => naturalCompare(baseName(a), baseName(b)));
}

function isAbortError(e: unknown): boolean {
  return e instanceof Error && (e.name === "AbortError" || (e as { code?: unknown }).code === "ABORT_ERR");
}

/** Rethrows typed errors as they are, aborts as Cancelled, and anything a decoder threw as DataCorruption naming `file`. */
export function decodeFailure(e: unknown, file: string, what: string): SpatialSamError {
  if (isSpatialSamError(e)) return e;
  if (isAbortError(e)) return cancelled();
  const msg = e instanceof Error ? e.message : String(e);
  return dataCorruption(file, `cannot decode ${what}: ${msg}`, e);
}
