// The precomputed writer, checked by tensorstore (spawned Python) reading back what we wrote:
// unsharded raw and compressed_segmentation chunk by chunk (rewriting one chunk touches no other
// file), sharded exports with both hashes and gzip, and bad write requests.

import * as fs from "node:fs";
import { readdirSync, readFileSync, statSync } from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { allocate, asBytes } from "#src/dtype.ts";
import type { DataType, TypedArray } from "#src/dtype.ts";
import { SpatialSamError } from "#src/errors.ts";
import { copyBox } from "#src/geometry.ts";
import { gridShapeXyz } from "#src/volume/precomputed_info.ts";
import type { PrecomputedInfo, PrecomputedScale } from "#src/volume/precomputed_info.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { AssembledVolumeSource } from "#server/volume/assembled_source.ts";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { chunkShapeZyx, PrecomputedChunkSource } from "#server/volume/precomputed.ts";
import { PrecomputedWriter } from "#server/volume/precomputed_writer.ts";
import { FileStore } from "#server/volume/stores.ts";
import { blobLabels, randomU64, readJson, rng, runGenerator, tempDir } from "./precomputed_helpers.ts";

let root: string;
beforeAll(() => {
  root = tempDir("precomputed-write");
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const levelZyx = (s: PrecomputedScale): Vec3 => [s.sizeXyz[2], s.sizeXyz[1], s.sizeXyz[0]];
const sameBytes = (a: TypedArray, b: TypedArray) => Buffer.from(asBytes(a)).equals(Buffer.from(asBytes(b)));

/** Chunk `gridXyz` of a full level array, cut to the chunk's (edge-truncated) shape. */
function cutChunk(data: TypedArray, dtype: DataType, scale: PrecomputedScale, gridXyz: Vec3): TypedArray {
  const shape = chunkShapeZyx(scale, gridXyz);
  const out = allocate(dtype, shape[0] * shape[1] * shape[2]);
  const c = scale.chunkSizeXyz;
  copyBox(data, levelZyx(scale), [gridXyz[2] * c[2], gridXyz[1] * c[1], gridXyz[0] * c[0]], out, shape, [0, 0, 0], shape);
  return out;
}

async function writeAllChunks(writer: PrecomputedWriter, scaleIndex: number, data: TypedArray): Promise<void> {
  const scale = writer.info.scales[scaleIndex]!;
  const g = gridShapeXyz(scale);
  for (let z = 0; z < g[2]; z++) {
    for (let y = 0; y < g[1]; y++) {
      for (let x = 0; x < g[0]; x++) await writer.writeChunk(scaleIndex, [z, y, x], cutChunk(data, writer.info.dataType, scale, [x, y, z]));
    }
  }
}

/** What tensorstore reads at every scale of the volume in `dir`. */
function tensorstoreRead(dir: string): { shapeZyx: Vec3; dtype: string; data: Buffer }[] {
  const out = path.join(dir, "..", `${path.basename(dir)}.tsread`);
  fs.mkdirSync(out, { recursive: true });
  runGenerator("read", dir, out);
  return readJson<{ shapeZyx: Vec3; dtype: string; data: string }[]>(path.join(out, "manifest.json")).map((m) => ({
    ...m,
    data: readFileSync(path.join(out, m.data)),
  }));
}

async function readOurs(dir: string, scale: number): Promise<TypedArray> {
  const store = await FileStore.open(dir, [root]);
  const vol = new AssembledVolumeSource(await PrecomputedChunkSource.open(store), { cache: new ChunkCache({ maxBytes: 1 << 24 }) });
  const level = vol.metadata.scales[scale]!;
  return vol.read({ offsetZyx: level.offsetZyx, shapeZyx: level.shapeZyx }, scale);
}

function labelsU64(shapeZyx: Vec3, seed: number): BigUint64Array {
  const next = rng(seed);
  const ids = [0n, 2n ** 64n - 1n, 2n ** 53n + 1n, ...Array.from({ length: 30 }, () => randomU64(next))];
  return blobLabels(shapeZyx, 30, ids, seed);
}

describe("unsharded, chunk by chunk", () => {
  it("uint64 compressed_segmentation (odd block, offsets, edge chunks) reads back in tensorstore exactly", async () => {
    const dir = path.join(root, "seg_u64");
    const info: PrecomputedInfo = {
      type: "segmentation",
      dataType: "uint64",
      numChannels: 1,
      scales: [
        { key: "s0", sizeXyz: [29, 22, 17], resolutionXyz: [5, 5, 5], voxelOffsetXyz: [5, 0, -4], chunkSizeXyz: [16, 16, 8], encoding: "compressed_segmentation", blockSizeXyz: [4, 5, 3] },
        { key: "s1", sizeXyz: [15, 11, 9], resolutionXyz: [10, 10, 10], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [8, 8, 8], encoding: "raw" },
      ],
    };
    const writer = await PrecomputedWriter.create(await FileStore.open(dir, [root]), info);
    const s0 = labelsU64([17, 22, 29], 11);
    const s1 = labelsU64([9, 11, 15], 12);
    await writeAllChunks(writer, 0, s0);
    await writeAllChunks(writer, 1, s1);

    const ts = tensorstoreRead(dir);
    expect(ts.map((t) => [t.dtype, t.shapeZyx])).toEqual([["uint64", [17, 22, 29]], ["uint64", [9, 11, 15]]]);
    expect(ts[0]!.data.equals(Buffer.from(asBytes(s0)))).toBe(true);
    expect(ts[1]!.data.equals(Buffer.from(asBytes(s1)))).toBe(true);
    expect(sameBytes(await readOurs(dir, 0), s0)).toBe(true);
  });

  it("uint16 raw: rewriting one chunk replaces only that file, and tensorstore sees the new chunk", async () => {
    const dir = path.join(root, "img_u16");
    const scale: PrecomputedScale = { key: "8_8_8", sizeXyz: [21, 13, 7], resolutionXyz: [8, 8, 8], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [8, 8, 4], encoding: "raw" };
    const writer = await PrecomputedWriter.create(await FileStore.open(dir, [root]), { type: "image", dataType: "uint16", numChannels: 1, scales: [scale] });
    const next = rng(5);
    const data = new Uint16Array(7 * 13 * 21).map(() => Math.floor(next() * 65536));
    await writeAllChunks(writer, 0, data);
    expect(readFileSync(path.join(dir, "8_8_8", "16-21_8-13_4-7")).byteLength).toBe(5 * 5 * 3 * 2);

    const chunkDir = path.join(dir, "8_8_8");
    const before = new Map(readdirSync(chunkDir).map((f) => [f, { bytes: readFileSync(path.join(chunkDir, f)), st: statSync(path.join(chunkDir, f)) }]));
    // Rewrite grid cell x=1, y=0, z=1 (voxels x 8-16, y 0-8, z 4-7) with a constant.
    const replacement = new Uint16Array(3 * 8 * 8).fill(4242);
    const reopened = await PrecomputedWriter.open(await FileStore.open(dir, [root]));
    await reopened.writeChunk(0, [1, 0, 1], replacement);
    const after = readdirSync(chunkDir);
    expect(after.sort()).toEqual([...before.keys()].sort()); // no temp files left behind
    for (const [f, { bytes, st }] of before) {
      const now = statSync(path.join(chunkDir, f));
      if (f === "8-16_0-8_4-7") {
        expect(readFileSync(path.join(chunkDir, f)).equals(Buffer.from(asBytes(replacement)))).toBe(true);
      } else {
        expect(readFileSync(path.join(chunkDir, f)).equals(bytes), f).toBe(true);
        expect([now.ino, now.mtimeMs], f).toEqual([st.ino, st.mtimeMs]);
      }
    }

    for (let z = 4; z < 7; z++) for (let y = 0; y < 8; y++) for (let x = 8; x < 16; x++) data[(z * 13 + y) * 21 + x] = 4242;
    expect(tensorstoreRead(dir)[0]!.data.equals(Buffer.from(asBytes(data)))).toBe(true);
  });

  it("uint32 compressed_segmentation with 8^3 blocks reads back in tensorstore", async () => {
    const dir = path.join(root, "seg_u32");
    const scale: PrecomputedScale = { key: "s0", sizeXyz: [40, 33, 12], resolutionXyz: [4, 4, 40], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [32, 32, 8], encoding: "compressed_segmentation", blockSizeXyz: [8, 8, 8] };
    const writer = await PrecomputedWriter.create(await FileStore.open(dir, [root]), { type: "segmentation", dataType: "uint32", numChannels: 1, scales: [scale] });
    const data = Uint32Array.from(labelsU64([12, 33, 40], 21), (v) => Number(v & 0xffffffffn));
    await writeAllChunks(writer, 0, data);
    expect(tensorstoreRead(dir)[0]!.data.equals(Buffer.from(asBytes(data)))).toBe(true);
  });
});

describe("sharded exports", () => {
  const cases: { name: string; encoding: "raw" | "compressed_segmentation"; sharding: NonNullable<PrecomputedScale["sharding"]> }[] = [
    {
      name: "identity_raw",
      encoding: "raw",
      sharding: { preshiftBits: 1, hash: "identity", minishardBits: 2, shardBits: 2, minishardIndexEncoding: "raw", dataEncoding: "raw" },
    },
    {
      name: "murmur_gzip",
      encoding: "compressed_segmentation",
      sharding: { preshiftBits: 0, hash: "murmurhash3_x86_128", minishardBits: 3, shardBits: 1, minishardIndexEncoding: "gzip", dataEncoding: "gzip" },
    },
  ];

  it.each(cases)("uint64 $name reads back in tensorstore and in our reader", async ({ name, encoding, sharding }) => {
    const dir = path.join(root, `sharded_${name}`);
    const scale: PrecomputedScale = {
      key: "s0",
      sizeXyz: [45, 40, 20],
      resolutionXyz: [4, 4, 40],
      voxelOffsetXyz: [0, 0, 0],
      chunkSizeXyz: [8, 8, 8],
      encoding,
      ...(encoding === "compressed_segmentation" ? { blockSizeXyz: [8, 8, 8] as Vec3 } : {}),
      sharding,
    };
    const writer = await PrecomputedWriter.create(await FileStore.open(dir, [root]), { type: "segmentation", dataType: "uint64", numChannels: 1, scales: [scale] });
    const data = labelsU64([20, 40, 45], 31);
    // Leave a corner of all-zero chunks, which the writer omits.
    for (let z = 0; z < 8; z++) for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) data[(z * 40 + y) * 45 + x] = 0n;
    await writer.writeShardedScale(0, data);
    expect(readdirSync(path.join(dir, "s0")).length).toBe(2 ** sharding.shardBits);
    expect(tensorstoreRead(dir)[0]!.data.equals(Buffer.from(asBytes(data)))).toBe(true);
    expect(sameBytes(await readOurs(dir, 0), data)).toBe(true);

    // A second export over the first replaces every shard: nothing stale survives.
    await writer.writeShardedScale(0, new BigUint64Array(data.length));
    expect(tensorstoreRead(dir)[0]!.data.equals(Buffer.alloc(data.byteLength))).toBe(true);
  });
});

describe("bad write requests", () => {
  let writer: PrecomputedWriter;
  beforeAll(async () => {
    writer = await PrecomputedWriter.create(await FileStore.open(path.join(root, "bad"), [root]), {
      type: "image",
      dataType: "uint8",
      numChannels: 1,
      scales: [
        { key: "raw", sizeXyz: [10, 10, 10], resolutionXyz: [1, 1, 1], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [8, 8, 8], encoding: "raw" },
        { key: "jpeg", sizeXyz: [10, 10, 10], resolutionXyz: [1, 1, 1], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [8, 8, 8], encoding: "jpeg" },
        {
          key: "sharded",
          sizeXyz: [10, 10, 10],
          resolutionXyz: [1, 1, 1],
          voxelOffsetXyz: [0, 0, 0],
          chunkSizeXyz: [8, 8, 8],
          encoding: "raw",
          sharding: { preshiftBits: 0, hash: "identity", minishardBits: 0, shardBits: 0, minishardIndexEncoding: "raw", dataEncoding: "raw" },
        },
      ],
    });
  });
  const tagOf = (p: Promise<unknown>) => p.then(() => "ok", (e: unknown) => (e instanceof SpatialSamError ? `${e._tag} ${e.field ?? ""}` : String(e)));

  it("names what is wrong", async () => {
    expect(await tagOf(writer.writeChunk(0, [0, 0, 0], new Uint8Array(10)))).toBe("InvalidArgument data");
    expect(await tagOf(writer.writeChunk(0, [0, 0, 0], new Uint16Array(512)))).toBe("InvalidArgument data");
    expect(await tagOf(writer.writeChunk(0, [0, 0, 2], new Uint8Array(512)))).toBe("InvalidArgument chunkIndex");
    expect(await tagOf(writer.writeChunk(3, [0, 0, 0], new Uint8Array(512)))).toBe("InvalidArgument scale");
    expect(await tagOf(writer.writeChunk(1, [0, 0, 0], new Uint8Array(512)))).toBe("Unimplemented ");
    expect(await tagOf(writer.writeChunk(2, [0, 0, 0], new Uint8Array(512)))).toBe("FailedPrecondition scale");
    expect(await tagOf(writer.writeShardedScale(0, new Uint8Array(1000)))).toBe("FailedPrecondition scale");
    expect(await tagOf(writer.writeShardedScale(2, new Uint8Array(999)))).toBe("InvalidArgument data");
    // Nothing was written by the failed requests.
    expect(readdirSync(path.join(root, "bad")).sort()).toEqual(["info"]);
  });

  it("refuses an invalid info before writing anything", async () => {
    const dir = path.join(root, "bad_info");
    const p = PrecomputedWriter.create(await FileStore.open(dir, [root]), {
      type: "image",
      dataType: "uint8",
      numChannels: 1,
      scales: [{ key: "s0", sizeXyz: [10, -1, 10], resolutionXyz: [1, 1, 1], voxelOffsetXyz: [0, 0, 0], chunkSizeXyz: [8, 8, 8], encoding: "raw" }],
    });
    expect(await tagOf(p)).toBe("InvalidArgument scales[0].size");
    expect(fs.existsSync(path.join(dir, "info"))).toBe(false);
  });
});
