// Blosc decoding that checks the frame header first: numcodecs' wasm decoder happily "decodes" a
// truncated frame by reading past its input, returning garbage instead of failing.

import * as zarr from "zarrita";

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

// zarrita resolves codecs through this process-wide registry; replace its Blosc loaders.
for (const name of ["blosc", "numcodecs.blosc"]) zarr.registry.set(name, () => Promise.resolve(CheckedBloscCodec as never));
