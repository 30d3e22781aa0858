// Opens where an automatic segmentation is written, from its URL: precomputed://<store> (uint64
// compressed_segmentation), zarr:// or zarr3:// (OME-Zarr v3), zarr2:// (OME-Zarr v2). The result
// URL is one openVolume reads (zarr:// for either Zarr version).
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { invalidArgument, isSpatialSamError } from "#src/errors.ts";
import type { Store } from "#src/volume/types.ts";
import { parseVolumeUrl } from "#server/volume/open_volume.ts";
import { localPathOf, openStore } from "#server/volume/stores.ts";
import type { OutputFormat } from "./segment.ts";

const FORMATS: Record<string, OutputFormat> = { precomputed: "precomputed", zarr: "zarr3", zarr3: "zarr3", zarr2: "zarr2" };

/**
 * The writable store, format and readable result URL of `url`, and for a local folder the path of
 * its run lock (`segment_work.lock` inside it); errors name `field`. Local folders are created.
 */
export async function openOutput(url: string, roots: readonly string[], field: string): Promise<{ store: Store; format: OutputFormat; url: string; lockPath?: string }> {
  let parsed: ReturnType<typeof parseVolumeUrl>;
  try {
    parsed = parseVolumeUrl(url);
  } catch (e) {
    throw invalidArgument(field, isSpatialSamError(e) ? e.message : String(e));
  }
  const format = FORMATS[parsed.scheme];
  if (format === undefined) throw invalidArgument(field, `cannot write ${parsed.scheme}:// (use precomputed://, zarr://, zarr2:// or zarr3://)`);
  const local = parsed.storeUrl.startsWith("file://") || !/^[a-z][a-z0-9+.-]*:\/\//i.test(parsed.storeUrl);
  let store: Store;
  try {
    // Refuse before creating anything outside the roots: open (checks the roots), then create.
    store = await openStore(parsed.storeUrl, { roots });
    if (local) await mkdir(localPathOf(parsed.storeUrl), { recursive: true });
  } catch (e) {
    if (isSpatialSamError(e) && e._tag !== "PermissionDenied") throw invalidArgument(field, e.message, e);
    throw e;
  }
  if (store.put === undefined) throw invalidArgument(field, `${parsed.storeUrl} is read-only`);
  return {
    store,
    format,
    url: format === "precomputed" ? url : `zarr://${parsed.storeUrl}`,
    ...(local ? { lockPath: join(localPathOf(parsed.storeUrl), "segment_work.lock") } : {}),
  };
}
