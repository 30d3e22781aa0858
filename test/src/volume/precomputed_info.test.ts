// The precomputed info parser: accepted shapes of the spec, the xyz -> zyx mapping, chunk naming,
// and one InvalidArgument case per kind of bad input, each naming its member.

import { describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import {
  chunkName,
  parsePrecomputedInfo,
  parsePrecomputedInfoText,
  precomputedInfoToJson,
  toVolumeMetadata,
} from "#src/volume/precomputed_info.ts";

const scale = () => ({
  key: "4_4_40",
  size: [100, 60, 7],
  resolution: [4, 4, 40],
  voxel_offset: [10, -3, 2],
  chunk_sizes: [[64, 32, 4]],
  encoding: "raw",
});
const info = (over: Record<string, unknown> = {}, scaleOver: Record<string, unknown> = {}) => ({
  "@type": "neuroglancer_multiscale_volume",
  type: "image",
  data_type: "uint8",
  num_channels: 1,
  scales: [{ ...scale(), ...scaleOver }],
  ...over,
});

function expectInvalid(fn: () => unknown, field: string, message?: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SpatialSamError);
    expect((e as SpatialSamError)._tag).toBe("InvalidArgument");
    expect((e as SpatialSamError).field).toBe(field);
    if (message) expect((e as SpatialSamError).message).toMatch(message);
    return;
  }
  throw new Error(`expected InvalidArgument naming ${field}`);
}

describe("parsePrecomputedInfo", () => {
  it("maps [x, y, z] members to zyx metadata", () => {
    const meta = toVolumeMetadata(parsePrecomputedInfo(info()));
    expect(meta).toEqual({
      format: "precomputed",
      dtype: "uint8",
      kind: "image",
      fillValue: 0,
      scales: [{ index: 0, key: "4_4_40", shapeZyx: [7, 60, 100], voxelSizeNm: [40, 4, 4], chunkShapeZyx: [4, 32, 64], offsetZyx: [2, -3, 10] }],
    });
    expect(toVolumeMetadata(parsePrecomputedInfo(info({ data_type: "UINT64", type: "segmentation" }))).fillValue).toBe(0n);
  });

  it("names truncated edge chunks begin-end per axis, offset included", () => {
    const s = parsePrecomputedInfo(info()).scales[0]!;
    expect(chunkName(s, [0, 0, 0])).toBe("10-74_-3-29_2-6");
    expect(chunkName(s, [1, 1, 1])).toBe("74-110_29-57_6-9");
    expectInvalid(() => chunkName(s, [2, 0, 0]), "chunkIndex");
  });

  it("reads compressed_segmentation block sizes and sharding specs, and serializes back", () => {
    const parsed = parsePrecomputedInfo(
      info(
        { data_type: "uint64", type: "segmentation" },
        {
          encoding: "compressed_segmentation",
          compressed_segmentation_block_size: [8, 8, 8],
          sharding: { "@type": "neuroglancer_uint64_sharded_v1", preshift_bits: 3, hash: "murmurhash3_x86_128", minishard_bits: 6, shard_bits: 2 },
        },
      ),
    );
    expect(parsed.scales[0]!.blockSizeXyz).toEqual([8, 8, 8]);
    expect(parsed.scales[0]!.sharding).toEqual({
      preshiftBits: 3,
      hash: "murmurhash3_x86_128",
      minishardBits: 6,
      shardBits: 2,
      minishardIndexEncoding: "raw",
      dataEncoding: "raw",
    });
    expect(parsePrecomputedInfo(precomputedInfoToJson(parsed))).toEqual(parsed);
  });

  it("rejects unknown encodings", () => {
    expectInvalid(() => parsePrecomputedInfo(info({}, { encoding: "png" })), "scales[0].encoding", /"png"/);
  });
  it("rejects unknown data types", () => {
    expectInvalid(() => parsePrecomputedInfo(info({ data_type: "complex64" })), "data_type", /complex64/);
  });
  it("rejects negative sizes", () => {
    expectInvalid(() => parsePrecomputedInfo(info({}, { size: [100, -1, 7] })), "scales[0].size");
  });
  it("rejects absurd sizes (2^40 voxels)", () => {
    expectInvalid(() => parsePrecomputedInfo(info({}, { size: [2 ** 20, 2 ** 20, 1] })), "scales[0].size", /1099511627776 voxels/);
  });
  it("rejects more than one channel with a clear message", () => {
    expectInvalid(() => parsePrecomputedInfo(info({ num_channels: 3 })), "num_channels", /only single-channel volumes are supported, got 3/);
  });
  it("rejects compressed_segmentation on non-label types and without a block size", () => {
    expectInvalid(() => parsePrecomputedInfo(info({}, { encoding: "compressed_segmentation", compressed_segmentation_block_size: [8, 8, 8] })), "scales[0].encoding");
    expectInvalid(
      () => parsePrecomputedInfo(info({ data_type: "uint32" }, { encoding: "compressed_segmentation" })),
      "scales[0].compressed_segmentation_block_size",
    );
  });
  it("rejects jpeg on non-uint8 data", () => {
    expectInvalid(() => parsePrecomputedInfo(info({ data_type: "uint16" }, { encoding: "jpeg" })), "scales[0].encoding");
  });
  it("rejects bad chunk sizes, resolutions, offsets, keys and types", () => {
    expectInvalid(() => parsePrecomputedInfo(info({}, { chunk_sizes: [[64, 0, 4]] })), "scales[0].chunk_sizes[0]");
    expectInvalid(() => parsePrecomputedInfo(info({}, { chunk_sizes: [[65536, 65536, 1]] })), "scales[0].chunk_sizes[0]");
    expectInvalid(() => parsePrecomputedInfo(info({}, { chunk_sizes: [] })), "scales[0].chunk_sizes");
    expectInvalid(() => parsePrecomputedInfo(info({}, { resolution: [4, 0, 40] })), "scales[0].resolution");
    expectInvalid(() => parsePrecomputedInfo(info({}, { voxel_offset: [0.5, 0, 0] })), "scales[0].voxel_offset");
    expectInvalid(() => parsePrecomputedInfo(info({}, { key: "../../etc" })), "scales[0].key");
    expectInvalid(() => parsePrecomputedInfo(info({}, { key: "/abs" })), "scales[0].key");
    expectInvalid(() => parsePrecomputedInfo(info({ type: "mesh" })), "type");
    expectInvalid(() => parsePrecomputedInfo(info({ scales: [] })), "scales");
    expectInvalid(() => parsePrecomputedInfo(info({ scales: [scale(), 5] })), "scales[1]");
    expectInvalid(() => parsePrecomputedInfo([]), "info");
  });
  it("rejects bad sharding specs, naming the member", () => {
    const sharding = { "@type": "neuroglancer_uint64_sharded_v1", preshift_bits: 0, hash: "identity", minishard_bits: 2, shard_bits: 2 };
    expectInvalid(() => parsePrecomputedInfo(info({}, { sharding: { ...sharding, hash: "md5" } })), "scales[0].sharding.hash");
    expectInvalid(() => parsePrecomputedInfo(info({}, { sharding: { ...sharding, minishard_bits: -1 } })), "scales[0].sharding.minishard_bits");
    expectInvalid(() => parsePrecomputedInfo(info({}, { sharding: { ...sharding, data_encoding: "zstd" } })), "scales[0].sharding.data_encoding");
    expectInvalid(() => parsePrecomputedInfo(info({}, { sharding: { ...sharding, "@type": "v2" } })), "scales[0].sharding.@type");
    expectInvalid(() => parsePrecomputedInfo(info({}, { sharding, chunk_sizes: [[8, 8, 8], [16, 16, 16]] })), "scales[0].chunk_sizes");
  });
});

describe("parsePrecomputedInfoText", () => {
  it("names the info file for invalid JSON", () => {
    expectInvalid(() => parsePrecomputedInfoText('{"type": "image",', "file:///d/vol/info"), "file:///d/vol/info", /not valid JSON/);
  });
  it("prefixes member errors with the file", () => {
    expectInvalid(() => parsePrecomputedInfoText(JSON.stringify(info({}, { size: [1, 2] })), "file:///d/vol/info"), "file:///d/vol/info: scales[0].size");
  });
});
