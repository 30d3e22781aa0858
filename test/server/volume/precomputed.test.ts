// Reading precomputed volumes written by tensorstore (the golden fixtures of
// models/spatialsam/fixtures/volumes_precomputed.py): every encoding, sharding with both hashes and
// gzip, voxel offsets, edge chunks and two scales; plus bad input on disk.

import { cpSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { asBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import type { SpatialSamError } from "#src/errors.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PrecomputedChunkSource } from "#server/volume/precomputed.ts";
import { FileStore } from "#server/volume/stores.ts";
import { startObjectServer } from "#test/helpers/object_server.ts";
import { readArray, readJson, runGenerator, tempDir } from "./precomputed_helpers.ts";
import { expectError } from "#test/helpers/expect_error.ts";

interface FixtureCase {
  name: string;
  dtype: DataType;
  scales: { shapeZyx: Vec3; expected: string }[];
}

let root: string;
let cases: FixtureCase[];

beforeAll(() => {
  root = tempDir("precomputed-read");
  runGenerator("volumes", root);
  cases = readJson<FixtureCase[]>(path.join(root, "manifest.json"));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function open(dir: string): Promise<VolumeSource> {
  const store = await FileStore.open(dir, [root]);
  return new AssembledVolumeSource(await PrecomputedChunkSource.open(store), { cache: new ChunkCache({ maxBytes: 1 << 24 }) });
}

async function readLevel(vol: VolumeSource, scale: number): Promise<TypedArray> {
  const level = vol.metadata.scales[scale]!;
  return vol.read({ offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx }, scale);
}

const sameBytes = (a: TypedArray, b: TypedArray) => Buffer.from(asBytes(a)).equals(Buffer.from(asBytes(b)));

describe("tensorstore-written volumes", () => {
  const exact = [
    "image_u8_raw",
    "image_u16_raw",
    "image_f32_raw",
    "seg_u32_cseg_b8",
    "seg_u64_cseg_b453",
    "seg_u64_cseg_b16",
    "seg_u64_sharded_identity_raw",
    "seg_u64_sharded_murmur_gzip",
    "seg_u32_multiscale",
  ];

  it.each(exact)("%s reads exactly what tensorstore reads, at every scale", async (name) => {
    const c = cases.find((x) => x.name === name)!;
    const vol = await open(path.join(root, name));
    expect(vol.metadata.dtype).toBe(c.dtype);
    expect(vol.metadata.scales.length).toBe(c.scales.length);
    for (const [i, s] of c.scales.entries()) {
      expect(vol.metadata.scales[i]!.shapeZyx).toEqual(s.shapeZyx);
      const got = await readLevel(vol, i);
      expect(sameBytes(got, readArray(path.join(root, s.expected), c.dtype)), `${name} scale ${i}`).toBe(true);
    }
  });

  it("maps voxel_offset to offsetZyx and reads a box straddling edge chunks", async () => {
    const vol = await open(path.join(root, "seg_u64_cseg_b453"));
    // Written with voxel_offset [1, 2, 3] (xyz), shape 17x22x29 (zyx), chunks 16^3.
    expect(vol.metadata.scales[0]!.offsetZyx).toEqual([3, 2, 1]);
    const all = readArray(path.join(root, "seg_u64_cseg_b453.s0.bin"), "uint64") as BigUint64Array;
    const box = { offsetZyx: [3 + 14, 2 + 15, 1 + 13] as Vec3, shapeZyx: [3, 7, 16] as Vec3 };
    const got = (await vol.read(box, 0)) as BigUint64Array;
    for (let z = 0; z < 3; z++) {
      for (let y = 0; y < 7; y++) {
        for (let x = 0; x < 16; x++) {
          expect(got[(z * 7 + y) * 16 + x]).toBe(all[((14 + z) * 22 + (15 + y)) * 29 + (13 + x)]);
        }
      }
    }
  });

  it("decodes jpeg chunks (x wide, y*z tall) to what tensorstore decodes, within 1 grey level", async () => {
    const c = cases.find((x) => x.name === "image_u8_jpeg")!;
    const files = readdirSync(path.join(root, "image_u8_jpeg", "4_4_40"));
    expect(files).toContain("0-16_0-16_0-4");
    const vol = await open(path.join(root, "image_u8_jpeg"));
    const got = (await readLevel(vol, 0)) as Uint8Array;
    const want = readArray(path.join(root, c.scales[0]!.expected), "uint8") as Uint8Array;
    let maxDiff = 0;
    let exactCount = 0;
    for (let i = 0; i < want.length; i++) {
      const d = Math.abs(got[i]! - want[i]!);
      maxDiff = Math.max(maxDiff, d);
      if (d === 0) exactCount++;
    }
    // libjpeg-turbo (tensorstore) and jpeg-js use different IDCT rounding.
    expect(maxDiff).toBeLessThanOrEqual(1);
    expect(exactCount / want.length).toBeGreaterThan(0.9);
  });

  it("opens through openVolume('precomputed://...')", async () => {
    const vol = await openVolume(`precomputed://file://${path.join(root, "seg_u32_cseg_b8")}`, { roots: [root], cache: new ChunkCache({ maxBytes: 1 << 24 }) });
    expect(vol.metadata.format).toBe("precomputed");
    expect(vol.metadata.kind).toBe("segmentation");
    expect(sameBytes(await readLevel(vol, 0), readArray(path.join(root, "seg_u32_cseg_b8.s0.bin"), "uint32"))).toBe(true);
  });

  it("reads sharded volumes over HTTP and S3 with range requests only", async () => {
    const server = await startObjectServer(root, { bucket: "vols" });
    try {
      const want = readArray(path.join(root, "seg_u64_sharded_murmur_gzip.s0.bin"), "uint64");
      for (const url of [`precomputed://${server.httpBase}/seg_u64_sharded_murmur_gzip`, "precomputed://s3://vols/seg_u64_sharded_murmur_gzip"]) {
        server.requests.length = 0;
        const vol = await openVolume(url, { roots: [], s3Endpoint: server.s3Endpoint, cache: new ChunkCache({ maxBytes: 1 << 24 }) });
        expect(sameBytes(await readLevel(vol, 0), want), url).toBe(true);
        const shardReads = server.requests.filter((r) => r.path.endsWith(".shard"));
        // Indices are read once each: at most 90 chunks + 2 shard indices + 2 * 8 minishard indices.
        expect(shardReads.length).toBeGreaterThan(2);
        expect(shardReads.length).toBeLessThanOrEqual(90 + 2 + 16);
        expect(shardReads.every((r) => r.range !== undefined), url).toBe(true);
      }
    } finally {
      await server.close();
    }
  });

  it("stops at an aborted signal with Cancelled", async () => {
    const store = await FileStore.open(path.join(root, "image_u8_raw"), [root]);
    const source = await PrecomputedChunkSource.open(store);
    const e = await source.readChunk(0, [0, 0, 0], { signal: AbortSignal.abort() }).catch((err: unknown) => err);
    expect((e as SpatialSamError)._tag).toBe("Cancelled");
  });

  it("reads a missing chunk as fill value 0", async () => {
    const dir = path.join(root, "missing_chunk");
    cpSync(path.join(root, "image_u16_raw"), dir, { recursive: true });
    rmSync(path.join(dir, "4_4_40", "0-8_0-8_0-7"));
    const got = (await readLevel(await open(dir), 0)) as Uint16Array;
    const want = readArray(path.join(root, "image_u16_raw.s0.bin"), "uint16") as Uint16Array;
    // Shape 7x13x21 zyx; the removed chunk is x 0-8, y 0-8, z 0-7.
    for (let z = 0; z < 7; z++) {
      for (let y = 0; y < 13; y++) {
        for (let x = 0; x < 21; x++) {
          const i = (z * 13 + y) * 21 + x;
          expect(got[i]).toBe(x < 8 && y < 8 ? 0 : want[i]);
        }
      }
    }
  });
});

describe("bad input", () => {
  it("a truncated raw chunk is DataCorruption naming the chunk key", async () => {
    const dir = path.join(root, "truncated");
    cpSync(path.join(root, "image_u8_raw"), dir, { recursive: true });
    // voxel_offset [3, -2, 5], chunks [16, 8, 8]: the first chunk is x 3-19, y -2-6, z 5-13.
    truncateSync(path.join(dir, "4_4_40", "3-19_-2-6_5-13"), 100);
    const e = await expectError(readLevel(await open(dir), 0), "DataCorruption", "4_4_40/3-19_-2-6_5-13");
    expect(e.message).toMatch(/raw chunk is 100 bytes, expected 1024/);
  });

  it("compressed_segmentation offsets out of range are DataCorruption naming the chunk key", async () => {
    const dir = path.join(root, "bad_cseg");
    cpSync(path.join(root, "seg_u32_cseg_b8"), dir, { recursive: true });
    const file = path.join(dir, "4_4_40", "0-16_0-16_0-8");
    const bytes = new Uint8Array(readFileSync(file));
    new DataView(bytes.buffer).setUint32(4 * 2, 0x7fffffff, true); // block 0's encodedValuesOffset
    writeFileSync(file, bytes);
    const e = await expectError(readLevel(await open(dir), 0), "DataCorruption", "4_4_40/0-16_0-16_0-8");
    expect(e.message).toMatch(/out of range/);
  });

  it("a shard file cut short is DataCorruption naming the shard", async () => {
    const dir = path.join(root, "bad_shard");
    cpSync(path.join(root, "seg_u64_sharded_murmur_gzip"), dir, { recursive: true });
    truncateSync(path.join(dir, "4_4_40", "1.shard"), 200);
    await expectError(readLevel(await open(dir), 0), "DataCorruption", /4_4_40\/1\.shard/);
  });

  it("an info file that is not JSON is InvalidArgument naming the file", async () => {
    const dir = path.join(root, "bad_json");
    cpSync(path.join(root, "image_u8_raw"), dir, { recursive: true });
    writeFileSync(path.join(dir, "info"), '{"type": "image", ');
    await expectError(open(dir), "InvalidArgument", /bad_json\/info$/);
  });

  it("an info with more than one channel is InvalidArgument naming num_channels", async () => {
    const dir = path.join(root, "three_channels");
    cpSync(path.join(root, "image_u8_raw"), dir, { recursive: true });
    const info = JSON.parse(readFileSync(path.join(dir, "info"), "utf8")) as Record<string, unknown>;
    writeFileSync(path.join(dir, "info"), JSON.stringify({ ...info, num_channels: 3 }));
    const e = await expectError(open(dir), "InvalidArgument", /three_channels\/info: num_channels$/);
    expect(e.message).toMatch(/only single-channel volumes are supported, got 3/);
  });

  it("a folder without an info file is NotFound", async () => {
    await expectError(open(path.join(root, "image_u8_raw", "4_4_40")), "NotFound", /4_4_40\/info$/);
  });
});
