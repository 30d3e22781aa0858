// The one entry point for reading volumes: `openVolume("zarr://s3://bucket/x.zarr", {roots})`.
// Picks the driver by scheme, opens the store under it, and wraps the driver in the shared assembler.

import { invalidArgument } from "#src/errors.ts";
import type { VolumeSource } from "#src/volume/types.ts";
import { AssembledVolumeSource } from "./assembled_source.ts";
import type { ChunkCache } from "./chunk_cache.ts";
import { getFormat } from "./format_registry.ts";
import type { FormatContext } from "./format_registry.ts";
import "./formats.ts";
import { openStore } from "./stores.ts";

export interface OpenVolumeOptions {
  /** Folders local file access is confined to. */
  roots: readonly string[];
  /** Chunk cache to share (default: the process-wide one). */
  cache?: ChunkCache;
  /** S3 endpoint override (else SPATIAL_SAM_S3_ENDPOINT, else AWS). */
  s3Endpoint?: string;
  /** Largest box one read may request (default 2^30 voxels). */
  maxVoxels?: number;
}

/** Splits "scheme://store-url#fragment" into its parts; InvalidArgument naming `url` when malformed. */
export function parseVolumeUrl(url: string): { scheme: string; storeUrl: string; fragment: string | undefined } {
  if (typeof url !== "string") throw invalidArgument("url", "expected a string");
  const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/s.exec(url);
  if (m === null) throw invalidArgument("url", `expected <format>://<location>, got ${JSON.stringify(url)}`);
  const rest = m[2]!;
  const hash = rest.indexOf("#");
  const storeUrl = hash < 0 ? rest : rest.slice(0, hash);
  if (storeUrl === "") throw invalidArgument("url", `no location after ${m[1]}://`);
  return { scheme: m[1]!, storeUrl, fragment: hash < 0 ? undefined : rest.slice(hash + 1) };
}

export async function openVolume(url: string, options: OpenVolumeOptions): Promise<VolumeSource> {
  const { scheme, storeUrl, fragment } = parseVolumeUrl(url);
  const opener = getFormat(scheme);
  const store = await openStore(storeUrl, options);
  const ctx: FormatContext = { url, scheme, storeUrl, fragment, roots: options.roots, s3Endpoint: options.s3Endpoint };
  const source = await opener(store, ctx);
  try {
    return new AssembledVolumeSource(source, {
      ...(options.cache === undefined ? {} : { cache: options.cache }),
      ...(options.maxVoxels === undefined ? {} : { maxVoxels: options.maxVoxels }),
    });
  } catch (e) {
    await source.close?.();
    throw e;
  }
}
