// Codec overrides for zarrita's process-wide registry (also used by the N5 driver):
// - Blosc checks the frame header first: numcodecs' wasm decoder happily "decodes" a truncated
//   frame by reading past its input, returning garbage instead of failing.
// - gzip/zlib run on Node's zlib thread pool: zarrita's default goes through DecompressionStream,
//   which measured about 4x slower here and holds more memory (test/bench/volume_read.bench.ts).

import { promisify } from "node:util";
import { gunzip, gzip, inflate, deflate } from "node:zlib";
import * as zarr from "zarrita";

const gunzipAsync = promisify(gunzip);
const gzipAsync = promisify(gzip);
const inflateAsync = promisify(inflate);
const deflateAsync = promisify(deflate);

const HEADER_BYTES = 16;

/** Throws when `bytes` is not one whole Blosc frame; returns its uncompressed size. */
export function checkBloscFrame(bytes: Uint8Array): number {
  if (bytes.length < HEADER_BYTES) throw new Error(`blosc frame of ${bytes.length} bytes is shorter than its ${HEADER_BYTES}-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint8(0);
  const nbytes = view.getUint32(4, true);
  const cbytes = view.getUint32(12, true);
  if (version === 0 || version > 4) throw new Error(`not a blosc frame (format version ${version})`);
  if (cbytes !== bytes.length) throw new Error(`blosc frame says ${cbytes} compressed bytes, got ${bytes.length} (truncated or padded)`);
  return nbytes;
}

type Inner = { encode(b: Uint8Array): Uint8Array | Promise<Uint8Array>; decode(b: Uint8Array): Uint8Array | Promise<Uint8Array> };

/** A Blosc decoder (config as numcodecs takes it) that validates frames and output length. */
export async function checkedBlosc(config: Record<string, unknown> = {}): Promise<Inner> {
  const Blosc = (await import("numcodecs/blosc")).default;
  const inner = Blosc.fromConfig({ ...config, id: "blosc" });
  return {
    encode: (b) => inner.encode(b),
    async decode(b) {
      const n = checkBloscFrame(b);
      const out = await inner.decode(b);
      if (out.length !== n) throw new Error(`blosc decoded ${out.length} bytes, header says ${n}`);
      return out;
    },
  };
}

const CheckedBloscCodec = {
  fromConfig(config: Record<string, unknown>) {
    const pending = checkedBlosc(config);
    return {
      kind: "bytes_to_bytes" as const,
      encode: async (b: Uint8Array) => (await pending).encode(b),
      decode: async (b: Uint8Array) => (await pending).decode(b),
    };
  },
};

const asBytes = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

/** gzip (RFC 1952) decode on the zlib thread pool. */
export const gunzipBytes = async (b: Uint8Array): Promise<Uint8Array> => asBytes(await gunzipAsync(b));
/** zlib (RFC 1950) decode on the zlib thread pool. */
export const inflateBytes = async (b: Uint8Array): Promise<Uint8Array> => asBytes(await inflateAsync(b));

const zlibCodec = (decode: (b: Uint8Array) => Promise<Uint8Array>, encode: (b: Uint8Array, level: number) => Promise<Uint8Array>) => ({
  fromConfig(config: { level?: number } = {}) {
    const level = config.level ?? 5;
    return { kind: "bytes_to_bytes" as const, encode: (b: Uint8Array) => encode(b, level), decode };
  },
});
const NodeGzipCodec = zlibCodec(gunzipBytes, async (b, level) => asBytes(await gzipAsync(b, { level })));
const NodeZlibCodec = zlibCodec(inflateBytes, async (b, level) => asBytes(await deflateAsync(b, { level })));

// zarrita resolves codecs by name through this process-wide registry.
for (const name of ["blosc", "numcodecs.blosc"]) zarr.registry.set(name, () => Promise.resolve(CheckedBloscCodec as never));
for (const name of ["gzip", "numcodecs.gzip"]) zarr.registry.set(name, () => Promise.resolve(NodeGzipCodec as never));
for (const name of ["zlib", "numcodecs.zlib"]) zarr.registry.set(name, () => Promise.resolve(NodeZlibCodec as never));
