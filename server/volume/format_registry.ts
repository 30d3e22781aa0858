// The table of volume formats by URL scheme. Each driver module registers itself on import
// (see formats.ts), so adding a format never edits the dispatcher in open_volume.ts.

import { invalidArgument } from "#src/errors.ts";
import type { ChunkSource, Store } from "#src/volume/types.ts";

export interface FormatContext {
  /** The full URL given to openVolume, e.g. "h5://file:///data/a.h5#/volumes/raw". */
  url: string;
  /** The scheme without "://", e.g. "zarr". */
  scheme: string;
  /**
   * The store URL after the scheme, without the fragment, e.g. "file:///data/a.h5". It keeps any
   * `?query` (volume options for the driver); the store itself was opened without it.
   */
  storeUrl: string;
  /** The part after "#", if any (an HDF5 dataset path, say); undefined when absent. */
  fragment: string | undefined;
  /** Folders local file access is confined to (drivers opening further stores must pass them on). */
  roots: readonly string[];
  s3Endpoint: string | undefined;
}

/** Opens a format driver over `store` (rooted at ctx.storeUrl). Throws typed SpatialSamErrors. */
export type FormatOpener = (store: Store, ctx: FormatContext) => Promise<ChunkSource>;

const formats = new Map<string, FormatOpener>();

/** Registers the driver for `scheme` (lower-case, no "://"). Registering a scheme twice is a bug. */
export function registerFormat(scheme: string, opener: FormatOpener): void {
  if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) throw new Error(`invalid format scheme ${JSON.stringify(scheme)}`);
  if (formats.has(scheme)) throw new Error(`format ${scheme}:// is registered twice`);
  formats.set(scheme, opener);
}

export function getFormat(scheme: string): FormatOpener {
  const f = formats.get(scheme);
  if (f === undefined) {
    throw invalidArgument("url", `unknown volume format ${scheme}:// (known: ${[...formats.keys()].map((k) => `${k}://`).join(", ")})`);
  }
  return f;
}

export function registeredFormats(): string[] {
  return [...formats.keys()].sort();
}
